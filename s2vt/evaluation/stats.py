"""Results over several seeds: mean ± standard deviation, and whether a difference between two
rows holds beyond seed noise (the difference of the means exceeds the sum of the standard
deviations). Given each run's per-video metric statistics, a finding also carries the paired
difference over test videos and seeds, its 95% CI and p (:mod:`s2vt.evaluation.compare`'s paired bootstrap),
and is called significant at p < 0.05. Used by ``s2vt benchmark``, ``s2vt demo`` and its studies,
so that every table of seeds is computed and worded the same way.
"""
from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Sequence

PerSeed = Dict[str, List[dict]]  # row -> one metrics dict per seed
PerVideo = Dict[str, List[Dict[str, dict]]]  # row -> one {video: metric statistics} per seed
RESAMPLES = 10_000


def mean_std(values: Sequence[float]) -> tuple:
    """(mean, sample standard deviation; 0 for one value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_spread(values: Sequence[float]) -> str:
    """``"m ± s"`` x100 over several seeds, ``"m"`` x100 for one."""
    m, s = mean_std(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}" if len(values) > 1 else f"{100 * m:.1f}"


def compare(per_seed: PerSeed, better: str, worse: str, metric: str = "METEOR",
            per_video: Optional[PerVideo] = None) -> dict:
    """Does ``better`` beat ``worse`` on mean ``metric``, and by more than the sum of their standard
    deviations? With one run on both sides there is no noise estimate: ``beyond_noise`` is False (a
    row without seeds, such as a constant caption, may stand against a row of several). With both
    rows' ``per_video`` statistics, also :func:`paired`'s difference, CI and p."""
    a, b = [m[metric] for m in per_seed[better]], [m[metric] for m in per_seed[worse]]
    (m1, s1), (m2, s2) = mean_std(a), mean_std(b)
    f = {"rows": [better, worse], "metric": metric, "means": [m1, m2], "stds": [s1, s2],
         "seeds": [len(a), len(b)], "holds": m1 > m2,
         "beyond_noise": m1 - m2 > s1 + s2 and max(len(a), len(b)) > 1}
    if per_video and per_video.get(better) and per_video.get(worse):
        f.update(paired(per_video, better, worse, metric))
    return f


def paired(per_video: PerVideo, better: str, worse: str, metric: str = "METEOR", resamples: int = RESAMPLES,
           seed: int = 0) -> dict:
    """``better - worse`` on ``metric`` by the paired bootstrap over test videos and seeds (seeds paired
    when both rows have as many): ``diff``, its 95% ``ci``, ``p`` and ``significant`` (p < 0.05)."""
    from s2vt.evaluation.compare import ALPHA, System, stack_runs
    from s2vt.evaluation.compare import compare as paired_compare

    systems = [System(worse, stack_runs(per_video[worse])), System(better, stack_runs(per_video[better]))]
    r = paired_compare(systems, "bootstrap", resamples, seed)["systems"][better][metric]
    return {"diff": r["diff"], "ci": r["ci"], "p": r["p"], "significant": r["p"] < ALPHA, "resamples": resamples}


def paired_words(f: dict) -> str:
    """The paired part of a finding's line ("" when it has none)."""
    if "p" not in f:
        return ""
    lo, hi = f["ci"]
    word = "significant at p < 0.05" if f["significant"] else "not significant at p < 0.05"
    return (f"; paired over videos and seeds {100 * f['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], "
            f"p = {f['p']:.4f}: {word}")


def verdict(f: dict) -> str:
    """One line for a :func:`compare` result."""
    if f["beyond_noise"]:
        word = "holds beyond seed noise"
    elif f["holds"]:
        word = "holds on the means only" if max(f["seeds"]) > 1 else "holds on one seed (no noise estimate)"
    else:
        word = "does NOT hold"
    (m1, m2), (s1, s2) = f["means"], f["stds"]
    return (f"{word}: {f['rows'][0]} {100 * m1:.1f} ± {100 * s1:.1f} vs {f['rows'][1]} {100 * m2:.1f} ± "
            f"{100 * s2:.1f} ({f['metric']}, x100, seeds {f['seeds'][0]} and {f['seeds'][1]})" + paired_words(f))


def print_findings(found: Dict[str, dict]) -> None:
    for name, f in found.items():
        print(f"  {name}: {verdict(f)}")


def findings_markdown(found: Dict[str, dict]) -> str:
    """Markdown: each finding with its means, the paired difference, its 95% CI and p (x100)."""
    lines = ["| finding | metric | means (x100) | paired diff | 95% CI | p | significant at p < 0.05 |",
             "|---|---|---|---|---|---|---|"]
    for name, f in found.items():
        means = (" vs ".join(f"{100 * m:.1f}" for m in f["means"]) if "means" in f
                 else f"gain {100 * f['mean_gain']:.1f} ± {100 * f['sd_gain']:.1f}")
        if "p" in f:
            lo, hi = f["ci"]
            rest = f"{100 * f['diff']:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | {f['p']:.4f} | " \
                   f"{'yes' if f['significant'] else 'no'}"
        else:
            rest = "- | - | - | -"
        lines.append(f"| {name} | {f['metric']} | {means} | {rest} |")
    return "\n".join(lines)
