"""The paper's table over datasets, splits and seeds: ``s2vt benchmark``.

A spec is a list of :class:`Entry` (one dataset each) naming up to three models (``rgb``,
``flow``, ``random``: RGB with frames in random order), each one or more checkpoints (one per
seed) with the feature store they read. Every row the models allow (``ROW_MEMBERS``) is
decoded on every split; RGB+Flow fuses seed i's RGB and flow models with the alpha tuned on
the dataset's val split with the same decoding as the reported numbers. With several seeds a
cell shows mean ± standard deviation, and the paper's comparisons say whether they hold
beyond seed noise (:mod:`s2vt.evaluation.stats`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from s2vt.captioning.captioner import Captioner, Member
from s2vt.decoding.search import DecodeConfig, fusion_weights
from s2vt.runtime.errors import S2VTError
from s2vt.evaluation.evaluate import evaluate, split_refs, tune_alpha
from s2vt.runtime.fileio import write_json
from s2vt.evaluation.metrics import Meteor, shared_meteor
from s2vt.evaluation.stats import PerSeed, PerVideo, compare, findings_markdown, mean_spread, verdict
from s2vt.runtime.devices import configure

# MSVD METEOR (%) reported by the paper, and M-VAD
PAPER = {
    ("msvd", "Flow"): 24.3, ("msvd", "RGB"): 29.2, ("msvd", "RGB random order"): 28.2,
    ("msvd", "RGB+Flow"): 29.8, ("mvad", "RGB"): 6.7,
}  # no S2VT figures on MSR-VTT or VATEX in the paper: their columns show "-"

MODELS = ("rgb", "flow", "random")
# table row -> (models it fuses)
ROW_MEMBERS = {"Flow": ("flow",), "RGB": ("rgb",), "RGB random order": ("random",), "RGB+Flow": ("rgb", "flow")}
ROWS = tuple(ROW_MEMBERS)
# the paper's comparisons: (better, worse)
COMPARISONS = (("RGB+Flow", "RGB"), ("RGB+Flow", "Flow"), ("RGB", "RGB random order"))


@dataclass
class Model:
    """One model of a row: its checkpoints (one per seed) and the feature store they read."""

    checkpoint: List[str]
    features: str


@dataclass
class Entry:
    """One dataset of a benchmark spec (a JSON object with these keys)."""

    name: str
    dataset: str
    annotations: str
    splits: List[str] = field(default_factory=lambda: ["test"])
    alpha: Optional[float] = None  # fixed fusion weight (None: tuned on val)
    rgb: Optional[Model] = None
    flow: Optional[Model] = None
    random: Optional[Model] = None

    def models(self) -> Dict[str, Model]:
        return {k: getattr(self, k) for k in MODELS if getattr(self, k) is not None}

    @property
    def seeds(self) -> int:
        return max(len(m.checkpoint) for m in self.models().values())

    def members(self, models: Sequence[str], seed: int) -> List[Member]:
        """The checkpoints of seed ``seed`` (a model given once serves every seed)."""
        out = []
        for k in models:
            m = getattr(self, k)
            out.append(Member(m.checkpoint[seed if len(m.checkpoint) > 1 else 0], m.features))
        return out

    @classmethod
    def from_dict(cls, e, i: int) -> "Entry":
        """Checked: one line naming ``spec[i]`` and the key for anything wrong."""
        from s2vt.data.ids import id_problem

        if not isinstance(e, dict):
            raise S2VTError(f"spec[{i}] must be an object, got {type(e).__name__}")
        keys = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(e) - keys)
        if unknown:
            raise S2VTError(f"spec[{i}]: unknown keys {unknown} (known: {', '.join(sorted(keys))})")
        for key in ("name", "dataset", "annotations"):
            if not isinstance(e.get(key), str) or not e.get(key):
                raise S2VTError(f"spec[{i}].{key} must be a non-empty string")
        problem = id_problem(e["name"])
        if problem:
            raise S2VTError(f"spec[{i}].name: {problem.replace('video id', 'name')}")
        splits = e.get("splits", ["test"])
        if not isinstance(splits, list) or not splits or not all(isinstance(x, str) and x for x in splits):
            raise S2VTError(f"spec[{i}].splits must be a non-empty list of split names")
        alpha = e.get("alpha")
        if alpha is not None and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
                                      and 0 <= alpha <= 1):
            raise S2VTError(f"spec[{i}].alpha must be a number in [0, 1], got {alpha!r}")
        models = {k: _model(e[k], f"spec[{i}].{k}") for k in MODELS if e.get(k)}
        if not models:
            raise S2VTError(f"spec[{i}] ({e['name']}) names no model: give rgb, flow and/or random "
                            "as {checkpoint, features}")
        counts = {len(m.checkpoint) for m in models.values()} - {1}
        if len(counts) > 1:
            raise S2VTError(f"spec[{i}] ({e['name']}): the models give different numbers of checkpoints "
                            f"({', '.join(f'{k} {len(m.checkpoint)}' for k, m in models.items())}); give one per "
                            "seed for each model (or one for a model that serves every seed)")
        return cls(e["name"], e["dataset"], e["annotations"], list(splits), alpha, **models)


def _model(d, where: str) -> Model:
    if not isinstance(d, dict) or set(d) != {"checkpoint", "features"}:
        raise S2VTError(f"{where} must be {{\"checkpoint\": PATH or [PATH, ...] (one per seed), \"features\": PATH}}")
    cks = d["checkpoint"] if isinstance(d["checkpoint"], list) else [d["checkpoint"]]
    if not cks or not all(isinstance(c, str) and c for c in cks) or not (isinstance(d["features"], str)
                                                                           and d["features"]):
        raise S2VTError(f"{where}: checkpoint must be a path or a non-empty list of paths, features a path")
    return Model(cks, d["features"])


def check_spec(spec) -> List[Entry]:
    """A benchmark spec (a JSON list of entries), checked; names become file names, so they obey the id rule."""
    if not isinstance(spec, list) or not spec:
        raise S2VTError("a benchmark spec is a non-empty JSON list of {name, dataset, annotations, splits, rgb, flow, "
                        "random}")
    entries, names = [], set()
    for i, e in enumerate(spec):
        entry = Entry.from_dict(e, i)
        if entry.name in names:
            raise S2VTError(f"spec[{i}]: a second entry named {entry.name!r}; names must differ (they name the files)")
        names.add(entry.name)
        entries.append(entry)
    return entries


def file_stem(name: str, split: str, row: str, seed: Optional[int] = None) -> str:
    """The name of one row's result file (``seed``: its index when the entry has several seeds)."""
    stem = f"{name}_{split}_{row.replace(' ', '_').replace('+', '_')}"
    return stem if seed is None else f"{stem}_seed{seed}"


def cell(values) -> str:
    """A table cell: x100, mean ± SD over seeds when there are several, "-" when there is none."""
    return "-" if not values else mean_spread(values)


def markdown_table(results: Dict[str, Dict[str, object]], columns: Sequence[str], metrics=("METEOR",),
                   paper_dataset: Optional[Dict[str, str]] = None) -> str:
    """Rows x columns of metric values (x100). ``results[row][column]``: the corpus metrics, or a list
    of them (one per seed: the cell shows mean ± SD). ``paper_dataset`` maps a column to the dataset
    whose paper figure is shown beside it."""
    head = ["model"]
    for c in columns:
        head += [f"{c} {m}" for m in metrics]
        if paper_dataset and paper_dataset.get(c):
            head.append(f"{c} paper METEOR")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, by_col in results.items():
        cells = [row]
        for c in columns:
            runs = by_col.get(c) or []
            runs = [runs] if isinstance(runs, dict) else runs
            cells += [cell([r[m] for r in runs if r.get(m) is not None]) for m in metrics]
            if paper_dataset and paper_dataset.get(c):
                p = PAPER.get((paper_dataset[c], row))
                cells.append("-" if p is None else f"{p:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _captioners(entry: Entry, seed: int, device: str) -> Dict[str, Captioner]:
    models = entry.models()
    return {row: Captioner.from_members(entry.members(members, seed), device,
                                        streams=["flow" if m == "flow" else "rgb" for m in members])
            for row, members in ROW_MEMBERS.items() if all(m in models for m in members)}


def benchmark_entry(entry: Entry, out_dir: Path, flags: dict, device: str, meteor: Meteor,
                    bar=None) -> Tuple[Dict[Tuple[str, str], List[dict]], List[Optional[float]]]:
    """Every row the entry's models allow, on each of its splits and seeds.

    ``flags``: DecodeConfig fields given on the command line (over each checkpoint's defaults).
    Returns ({(row, column): [metrics per seed]}, [alpha per seed], {(row, column): [{video: metric
    statistics} per seed]})."""
    results: Dict[Tuple[str, str], List[dict]] = {}
    videos: Dict[Tuple[str, str], List[dict]] = {}
    alphas: List[Optional[float]] = []
    several = entry.seeds > 1
    for seed in range(entry.seeds):
        caps = _captioners(entry, seed, device)
        alpha, tuning = flags.get("alpha", entry.alpha), None
        if "RGB+Flow" in caps and alpha is None:
            fused = caps["RGB+Flow"]
            alpha, tuning = tune_alpha(fused, split_refs(entry.dataset, entry.annotations, "val"),
                                       fused.decoding.given(**flags), meteor=meteor)
        alphas.append(alpha)
        for split in entry.splits:
            refs = split_refs(entry.dataset, entry.annotations, split)
            for row, cap in caps.items():
                fusion = row == "RGB+Flow"
                r = evaluate(cap, refs, fusion_weights(alpha, 2) if fusion else None, cap.decoding.given(**flags), meteor)
                members = entry.members(ROW_MEMBERS[row], seed)
                r.update(dataset=entry.dataset, split=split, row=row, seed=seed, alpha=alpha if fusion else None,
                         checkpoints=[m.checkpoint for m in members], features=[m.features for m in members],
                         alpha_tuning=tuning if fusion else None, date=time.strftime("%Y-%m-%d %H:%M"))
                results.setdefault((row, f"{entry.name} {split}"), []).append(r["metrics"])
                videos.setdefault((row, f"{entry.name} {split}"), []).append(
                    {v: x["stats"] for v, x in r["videos"].items()})
                write_json(r, out_dir / f"{file_stem(entry.name, split, row, seed if several else None)}.json")
                if bar is not None:
                    bar.update(1)
    return results, alphas, videos


def findings(results: Dict[str, Dict[str, List[dict]]], columns: Sequence[str],
             videos: Optional[Dict[str, Dict[str, List[dict]]]] = None) -> Dict[str, dict]:
    """The paper's comparisons on METEOR in every column that has both rows; with ``videos`` (as
    ``results``, each run's per-video metric statistics) also the paired difference, its CI and p."""
    out = {}
    for col in columns:
        for better, worse in COMPARISONS:
            if results.get(better, {}).get(col) and results.get(worse, {}).get(col):
                per_seed: PerSeed = {better: results[better][col], worse: results[worse][col]}
                per_video: Optional[PerVideo] = ({r: videos[r][col] for r in (better, worse)}
                                                 if videos and all(col in videos.get(r, {}) for r in (better, worse))
                                                 else None)
                out[f"{better} above {worse} ({col})"] = compare(per_seed, better, worse, per_video=per_video)
    return out


def benchmark(spec: list, out_dir, flags: Optional[dict] = None, device: str = "cpu", progress: bool = True,
              meteor: Optional[Meteor] = None) -> Tuple[str, dict]:
    """Evaluate the paper's rows on every dataset, split and seed of ``spec`` (see :class:`Entry`).

    ``flags``: decoding settings (DecodeConfig fields) over the checkpoints' own. Writes one JSON per
    row, split and seed, ``benchmark.json`` and ``benchmark.md`` into ``out_dir``; returns (markdown, payload)."""
    from tqdm import tqdm

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    DecodeConfig().given(**flags)  # checked before any work
    entries, out_dir = check_spec(spec), Path(out_dir)
    configure(device)  # IEEE fp32 on a GPU, whatever ran before in this process (the demo's training)
    results: Dict[str, Dict[str, List[dict]]] = {r: {} for r in ROWS}
    videos: Dict[str, Dict[str, List[dict]]] = {r: {} for r in ROWS}
    columns, paper_of, alphas = [], {}, {}
    total = sum(e.seeds * len(e.splits) * sum(all(m in e.models() for m in ms) for ms in ROW_MEMBERS.values())
                for e in entries)
    meteor = meteor if meteor is not None else shared_meteor()  # one JVM for all
    with tqdm(total=total, desc="benchmark", unit="row", disable=not progress) as bar:
        for entry in entries:
            found, alphas[entry.name], stats = benchmark_entry(entry, out_dir, flags, device, meteor, bar)
            for split in entry.splits:
                col = f"{entry.name} {split}"
                columns.append(col)
                paper_of[col] = entry.dataset if split == "test" else None
            for (row, col), metrics in found.items():
                results[row][col], videos[row][col] = metrics, stats[row, col]
    shown = {r: v for r, v in results.items() if v}
    table = markdown_table(shown, columns, ("METEOR", "Bleu_4", "CIDEr"), paper_of)
    found = findings(shown, columns, videos)
    payload = {"table": table, "results": results, "alphas": alphas, "decoding_flags": flags,
               "findings": found, "verdicts": {k: verdict(f) for k, f in found.items()},
               "metrics_scale": "fractions in [0, 1]; the table shows x100",
               "spec": [asdict(e) for e in entries]}
    write_json(payload, out_dir / "benchmark.json")
    (out_dir / "benchmark.md").write_text(table + "\n" + (f"\n{findings_markdown(found)}\n" if found else ""))
    return table, payload
