"""Is a difference between two captioning systems real? Paired significance over test videos
(and seeds), from the per-video metric statistics ``s2vt evaluate`` keeps (format 2).

- Paired bootstrap (Koehn, EMNLP 2004): each resample draws the test videos with replacement,
  the same videos for every system, and scores each metric in its exact corpus form from the
  summed statistics (:mod:`s2vt.evaluation.metric_stats`). A system given by several runs (one per seed)
  also draws its seeds with replacement and averages the metric over them inside the resample,
  so the interval holds seed noise as well as the test set's; systems with as many seeds as
  the baseline draw the same seeds (runs pair by seed). The 95% CI is the 2.5 and 97.5
  percentiles of the resampled difference; p is sacrebleu's (and Moses'): the share of
  resamples whose absolute difference, less its mean, reaches the observed one.
- Approximate randomisation (Riezler and Maxwell, 2005): each trial swaps the two systems'
  outputs of a random half of the videos (every seed of a video together; both systems need
  as many seeds); p is the share of trials whose absolute difference reaches the observed
  one. Its CI is the paired bootstrap's.

Both p-values count the observed statistic as one more draw: ``(1 + hits) / (1 + resamples)``.
Resamples are drawn in chunks as a count matrix (resamples x videos) times the stacked
statistics, so 10,000 resamples cost a few matrix products, not a scorer call each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from s2vt.runtime.errors import S2VTError
from s2vt.evaluation.metric_stats import BLEU_WIDTH, METEOR_WIDTH, bleu_from_stats, meteor_from_stats

FORMAT = 2                  # the evaluation JSON that holds per-video statistics (s2vt.evaluation.evaluate.FORMAT)
RESAMPLES = 10_000
CHUNK = 1_000               # resamples per count matrix: 1,000 x 670 videos x 8 bytes = 5 MB
ALPHA = 0.05                # "significant at p < 0.05"
METHODS = ("bootstrap", "ar")
# metric -> (its key in a video's "stats", the width of that statistic)
METRICS = {"METEOR": ("meteor", METEOR_WIDTH), "Bleu_4": ("bleu", BLEU_WIDTH), "CIDEr": ("cider", 1),
           "ROUGE_L": ("rouge_l", 1)}


class CompareError(S2VTError):
    """Evaluations that cannot be compared (the message names the file)."""


@dataclass
class System:
    """One system: a name and its runs' per-video statistics, ``stats: (seeds, videos, width)``
    with the metrics of :data:`METRICS` side by side in that order."""

    name: str
    stats: np.ndarray
    files: List[str] = field(default_factory=list)

    @property
    def seeds(self) -> int:
        return self.stats.shape[0]


def _slices() -> Dict[str, slice]:
    out, at = {}, 0
    for name, (_, width) in METRICS.items():
        out[name] = slice(at, at + width)
        at += width
    return out


SLICES = _slices()
WIDTH = sum(w for _, w in METRICS.values())


def _score(name: str, summed: np.ndarray, videos: int) -> np.ndarray:
    """Corpus ``name`` from statistics summed over a resample of ``videos`` videos: ``(..., w) -> (...)``."""
    s = summed[..., SLICES[name]]
    if name == "METEOR":
        return meteor_from_stats(s)
    if name == "Bleu_4":
        return bleu_from_stats(s)
    return s[..., 0] / videos       # CIDEr-D and ROUGE-L: the mean of the per-video scores


def video_row(stats: dict) -> List[float]:
    """One video's ``stats`` (as s2vt evaluate writes them) as a row of :data:`WIDTH` numbers."""
    row: List[float] = []
    for key, width in METRICS.values():
        v = stats[key]
        v = [v] if width == 1 else list(v)
        if len(v) != width or not all(isinstance(x, (int, float)) and np.isfinite(x) for x in v):
            raise ValueError(f"stats.{key} must be {width} finite number{'s' if width > 1 else ''}")
        row.extend(float(x) for x in v)
    return row


def scores(system: System, counts: np.ndarray) -> Dict[str, np.ndarray]:
    """Each metric of each run on each resample: ``counts: (R, videos)`` -> ``{metric: (R, seeds)}``."""
    s, n, w = system.stats.shape
    summed = (counts @ system.stats.transpose(1, 0, 2).reshape(n, s * w)).reshape(-1, s, w)
    videos = counts[0].sum()
    return {m: _score(m, summed, videos) for m in METRICS}


def observed(system: System) -> Dict[str, float]:
    """Each metric on the full test set, averaged over the system's runs."""
    one = np.ones((1, system.stats.shape[1]))
    return {m: float(v[0].mean()) for m, v in scores(system, one).items()}


def _video_counts(rng: np.random.Generator, rows: int, videos: int) -> np.ndarray:
    """How often each video is drawn in each of ``rows`` bootstrap resamples: ``(rows, videos)``."""
    idx = rng.integers(0, videos, size=(rows, videos)) + (np.arange(rows) * videos)[:, None]
    return np.bincount(idx.ravel(), minlength=rows * videos).reshape(rows, videos).astype(np.float64)


def _seed_picks(rng: np.random.Generator, rows: int, systems: Sequence[System]) -> Dict[int, np.ndarray]:
    """Seed draws per seed count (systems with as many seeds draw the same ones): ``{S: (rows, S)}``."""
    picks = {}
    for s in sorted({x.seeds for x in systems}):
        picks[s] = rng.integers(0, s, size=(rows, s)) if s > 1 else np.zeros((rows, 1), dtype=np.int64)
    return picks


def bootstrap(systems: Sequence[System], resamples: int = RESAMPLES, seed: int = 0,
              chunk: int = CHUNK) -> Dict[str, Dict[str, np.ndarray]]:
    """Paired bootstrap: ``{system: {metric: (resamples,) values}}``, each value the metric of one
    resample of the videos, averaged over a resample of the system's runs."""
    rng = np.random.default_rng(seed)
    videos = systems[0].stats.shape[1]
    out: Dict[str, Dict[str, list]] = {x.name: {m: [] for m in METRICS} for x in systems}
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        counts = _video_counts(rng, rows, videos)
        picks = _seed_picks(rng, rows, systems)
        for x in systems:
            for m, v in scores(x, counts).items():
                out[x.name][m].append(np.take_along_axis(v, picks[x.seeds], axis=1).mean(axis=1))
    return {k: {m: np.concatenate(v) for m, v in d.items()} for k, d in out.items()}


def randomisation(base: System, other: System, resamples: int = RESAMPLES, seed: int = 0,
                  chunk: int = CHUNK) -> Dict[str, np.ndarray]:
    """Approximate randomisation: ``{metric: (resamples,)}`` differences ``other - base`` after
    swapping the two systems' outputs of a random half of the videos (all seeds of a video together)."""
    if base.seeds != other.seeds:
        raise CompareError(f"approximate randomisation swaps runs seed by seed: {other.name} has {other.seeds} "
                           f"runs and {base.name} {base.seeds}; give as many, or use --method bootstrap")
    rng = np.random.default_rng(seed)
    s, n, w = base.stats.shape
    a, b = (x.stats.transpose(1, 0, 2).reshape(n, s * w) for x in (base, other))
    sum_a, sum_b, delta = a.sum(0), b.sum(0), b - a
    out: Dict[str, list] = {m: [] for m in METRICS}
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        moved = rng.integers(0, 2, size=(rows, n)).astype(np.float64) @ delta   # (rows, s*w)
        new_a, new_b = (sum_a + moved).reshape(rows, s, w), (sum_b - moved).reshape(rows, s, w)
        for m in METRICS:
            out[m].append(_score(m, new_b, n).mean(1) - _score(m, new_a, n).mean(1))
    return {m: np.concatenate(v) for m, v in out.items()}


def p_bootstrap(diffs: np.ndarray, real: float) -> float:
    """sacrebleu's paired-bootstrap p: resampled absolute differences, less their mean, at least ``|real|``."""
    centred = np.abs(diffs) - np.abs(diffs).mean()
    return float((1 + np.count_nonzero(centred >= abs(real) - 1e-12)) / (1 + len(diffs)))


def p_randomisation(diffs: np.ndarray, real: float) -> float:
    """Approximate randomisation's p: shuffled absolute differences at least ``|real|``."""
    return float((1 + np.count_nonzero(np.abs(diffs) >= abs(real) - 1e-12)) / (1 + len(diffs)))


def compare(systems: Sequence[System], method: str = "bootstrap", resamples: int = RESAMPLES,
            seed: int = 0) -> dict:
    """Each system against the first (the baseline), per metric: ``{"diff", "ci": [lo, hi], "p"}``
    (fractions, like s2vt evaluate), as ``{"baseline", "systems", "resamples", "method"}``."""
    if method not in METHODS:
        raise CompareError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    base, others = systems[0], systems[1:]
    boot = bootstrap(systems, resamples, seed)
    real = {x.name: observed(x) for x in systems}
    out = {}
    for x in others:
        shuffled = randomisation(base, x, resamples, seed) if method == "ar" else None
        out[x.name] = {}
        for m in METRICS:
            d = boot[x.name][m] - boot[base.name][m]
            diff = real[x.name][m] - real[base.name][m]
            p = p_randomisation(shuffled[m], diff) if shuffled is not None else p_bootstrap(d, diff)
            lo, hi = np.quantile(d, [0.025, 0.975])
            out[x.name][m] = {"diff": diff, "ci": [float(lo), float(hi)], "p": p}
    return {"baseline": base.name, "systems": out, "resamples": resamples, "method": method}


def read_evaluation(path: str) -> dict:
    """An evaluation JSON of :data:`FORMAT`, checked enough to be compared (one-line errors naming it)."""
    from s2vt.runtime.inputs import read_json

    ev = read_json(path, "evaluation")
    if not isinstance(ev, dict) or not isinstance(ev.get("videos"), dict) or not ev["videos"]:
        raise CompareError(f"evaluation {path} is not an evaluation written by `s2vt evaluate` (no 'videos' object)")
    if ev.get("format") != FORMAT:
        raise CompareError(f"evaluation {path} is of an older format without per-video metric statistics: "
                           f"re-run s2vt evaluate to write it again (format {FORMAT})")
    for vid, r in ev["videos"].items():
        try:
            r["row"] = video_row(r["stats"])
        except (KeyError, TypeError, ValueError) as e:
            why = f"no {e}" if isinstance(e, KeyError) else str(e)
            raise CompareError(f"evaluation {path}: videos[{vid!r}] has malformed statistics ({why}): "
                               "re-run s2vt evaluate") from None
    return ev


def _same_test_set(ev: dict, path: str, first: dict, first_path: str) -> None:
    for key in ("dataset", "split"):
        if ev.get(key) != first.get(key):
            raise CompareError(f"evaluation {path}: {key} {ev.get(key)!r} differs from {first.get(key)!r} in "
                               f"{first_path}; compare evaluations of the same split")
    if ev["videos"].keys() != first["videos"].keys():
        odd = sorted(ev["videos"].keys() ^ first["videos"].keys())
        raise CompareError(f"evaluation {path} scores other videos than {first_path} ({len(odd)} differ, e.g. "
                           f"{odd[0]!r}); compare evaluations of the same videos")
    for vid, r in ev["videos"].items():
        if r.get("references") != first["videos"][vid].get("references"):
            raise CompareError(f"evaluation {path}: the references of {vid!r} differ from those in {first_path}; "
                               "compare evaluations scored against the same references")


def load_systems(groups: Sequence[tuple]) -> List[System]:
    """``[(name, [evaluation JSON per seed]), ...]`` -> systems on one video order; the first is the baseline."""
    names = [name for name, _ in groups]
    if len(groups) < 2:
        raise CompareError("give at least two systems: the baseline first, then the systems compared with it")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise CompareError(f"system {dup!r} is named twice; give each system once")
    first, first_path, out = None, None, []
    for name, paths in groups:
        rows = []
        for path in paths:
            ev = read_evaluation(str(path))
            if first is None:
                first, first_path, order = ev, str(path), sorted(ev["videos"])
            _same_test_set(ev, str(path), first, first_path)
            rows.append([ev["videos"][v]["row"] for v in order])
        out.append(System(name, np.asarray(rows, dtype=np.float64), [str(p) for p in paths]))
    return out


def groups_of(files: Sequence[str], named: Optional[Sequence[Sequence[str]]]) -> List[tuple]:
    """Systems as the command line gives them: each file a system (named by its path), or
    ``--system NAME FILE...`` groups (one file per seed); not both."""
    if files and named:
        raise CompareError("give the systems either as evaluation files or as --system NAME FILE..., not both")
    if not named:
        return [(str(f), [str(f)]) for f in files]
    for g in named:
        if len(g) < 2:
            raise CompareError(f"--system {g[0]}: give the system's name, then its evaluation JSON (one per seed)")
    return [(g[0], [str(p) for p in g[1:]]) for g in named]


def verdict(p: float) -> str:
    return f"significant at p < {ALPHA:g}" if p < ALPHA else "not significant"


def table(result: dict, systems: Sequence[System]) -> str:
    """The comparison as text: per system and metric, the difference, its 95% CI and p (x100)."""
    base = systems[0]
    how = ("paired bootstrap over videos" if result["method"] == "bootstrap"
           else "approximate randomisation over videos (CI: paired bootstrap)")
    lines = [f"baseline: {base.name} ({base.seeds} run{'s' if base.seeds > 1 else ''}, {base.stats.shape[1]} "
             f"videos); {how}, {result['resamples']:,} resamples; differences x100",
             f"{'system':<24} {'metric':<8} {'diff':>7}  {'95% CI':<17} {'p':>7}"]
    for x in systems[1:]:
        for m, r in result["systems"][x.name].items():
            lo, hi = r["ci"]
            ci = f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"
            lines.append(f"{x.name[:24]:<24} {m:<8} {100 * r['diff']:+7.2f}  {ci:<17} {r['p']:7.4f}  {verdict(r['p'])}")
    return "\n".join(lines)


def stack_runs(runs: Sequence[Dict[str, dict]]) -> np.ndarray:
    """One system's runs, each ``{video: stats}`` (as s2vt evaluate keeps them), as ``(seeds, videos, width)``
    in sorted video order; every run must cover the same videos."""
    order = sorted(runs[0])
    for r in runs[1:]:
        if sorted(r) != order:
            raise CompareError("runs of one system cover different videos; paired comparison needs the same test set")
    return np.asarray([[video_row(r[v]) for v in order] for r in runs], dtype=np.float64)
