"""Evaluation: caption a split with one model or an RGB+flow fusion, score it, tune the
fusion weight on validation, and lay results out as the paper's table.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .captioner import Captioner, Member
from .datasets import load_corpus
from .errors import S2VTError
from .fileio import write_json
from .metrics import Meteor, score

# MSVD METEOR (%) reported by the paper, and M-VAD
PAPER = {
    ("msvd", "Flow"): 24.3, ("msvd", "RGB"): 29.2, ("msvd", "RGB random order"): 28.2,
    ("msvd", "RGB+Flow"): 29.8, ("mvad", "RGB"): 6.7,
}  # no S2VT figures on MSR-VTT or VATEX in the paper: their columns show "-"


def evaluate(captioner: Captioner, refs: Dict[str, List[str]], weights=None, beam: int = 1,
             meteor: Optional[Meteor] = None) -> dict:
    """Caption the videos of ``refs`` and score them. Returns corpus/per-video metrics and captions."""
    vids, missing = captioner.available(list(refs))
    if not vids:
        raise S2VTError("no video of this split has features in every store")
    caps = captioner.caption(vids, weights, beam)
    corpus, per = score({v: refs[v] for v in vids}, caps, meteor=meteor)
    return {"metrics": corpus, "videos": {v: {"caption": caps[v], "references": refs[v], **per[v]} for v in vids},
            "missing": missing, "beam": beam, "weights": list(weights) if weights is not None else None}


def tune_alpha(captioner: Captioner, refs, beam: int = 1, grid=None, meteor: Optional[Meteor] = None):
    """Best RGB weight alpha (score = a*log p_rgb + (1-a)*log p_flow) by METEOR on ``refs``."""
    grid = list(grid) if grid is not None else [round(float(a), 2) for a in np.linspace(0, 1, 11)]
    results = {}
    for a in grid:
        results[a] = evaluate(captioner, refs, [a, 1 - a], beam, meteor)["metrics"]["METEOR"]
    best = max(results, key=lambda a: (results[a], -abs(a - 0.5)))
    return best, results


def split_refs(dataset: str, root, split: str) -> Dict[str, List[str]]:
    return dict(load_corpus(dataset, root).split_items(split))


def markdown_table(results: Dict[str, Dict[str, dict]], columns: Sequence[str], metrics=("METEOR",),
                   paper_dataset: Optional[Dict[str, str]] = None) -> str:
    """Rows x columns of metric values (x100). ``results[row][column] = corpus metrics``.

    ``paper_dataset`` maps a column to the dataset whose paper figure is shown beside it.
    """
    head = ["model"]
    for c in columns:
        for m in metrics:
            head.append(f"{c} {m}")
        if paper_dataset and paper_dataset.get(c):
            head.append(f"{c} paper METEOR")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, by_col in results.items():
        cells = [row]
        for c in columns:
            for m in metrics:
                v = by_col.get(c, {}).get(m)
                cells.append("-" if v is None else f"{100 * v:.1f}")
            if paper_dataset and paper_dataset.get(c):
                p = PAPER.get((paper_dataset[c], row))
                cells.append("-" if p is None else f"{p:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_spec(spec) -> List[dict]:
    """Validate a benchmark spec (a JSON list of entries); names become file names, so they obey the id rule."""
    from .ids import id_problem

    if not isinstance(spec, list) or not spec:
        raise S2VTError("a benchmark spec is a non-empty JSON list of {name, dataset, annotations, splits, rgb, flow, random}")
    names = set()
    for i, e in enumerate(spec):
        if not isinstance(e, dict):
            raise S2VTError(f"spec[{i}] must be an object, got {type(e).__name__}")
        unknown = sorted(set(e) - SPEC_KEYS)
        if unknown:
            raise S2VTError(f"spec[{i}]: unknown keys {unknown} (known: {', '.join(sorted(SPEC_KEYS))})")
        if e.get("name") in names:
            raise S2VTError(f"spec[{i}]: a second entry named {e['name']!r}; names must differ (they name the files)")
        names.add(e.get("name"))
        for key in ("name", "dataset", "annotations"):
            if not isinstance(e.get(key), str) or not e.get(key):
                raise S2VTError(f"spec[{i}].{key} must be a non-empty string")
        problem = id_problem(e["name"])
        if problem:
            raise S2VTError(f"spec[{i}].name: {problem.replace('video id', 'name')}")
        models = [k for k in MODELS if e.get(k)]
        if not models:
            raise S2VTError(f"spec[{i}] ({e['name']}) names no model: give rgb, flow and/or random "
                            "as {checkpoint, features}")
        for k in models:
            if not isinstance(e[k], dict) or set(e[k]) != {"checkpoint", "features"}:
                raise S2VTError(f"spec[{i}].{k} must be {{\"checkpoint\": PATH, \"features\": PATH}}")
        splits = e.get("splits", ["test"])
        if not isinstance(splits, list) or not splits or not all(isinstance(x, str) for x in splits):
            raise S2VTError(f"spec[{i}].splits must be a non-empty list of split names")
        alpha = e.get("alpha")
        if alpha is not None and not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
            raise S2VTError(f"spec[{i}].alpha must be a number in [0, 1], got {alpha!r}")
    return spec


MODELS = ("rgb", "flow", "random")
SPEC_KEYS = {"name", "dataset", "annotations", "splits", "alpha", *MODELS}
# table row -> (members it fuses)
ROW_MEMBERS = {"Flow": ("flow",), "RGB": ("rgb",), "RGB random order": ("random",), "RGB+Flow": ("rgb", "flow")}
ROWS = tuple(ROW_MEMBERS)


def file_stem(name: str, split: str, row: str) -> str:
    return f"{name}_{split}_{row.replace(' ', '_').replace('+', '_')}"


def benchmark_entry(entry: dict, out_dir: Path, beam: int, device: str, meteor: Meteor) -> Tuple[dict, Optional[float]]:
    """Every row the entry's models allow, on each of its splits: {(row, column): metrics}, alpha."""
    models = {k: Member(**entry[k]) for k in MODELS if entry.get(k)}
    alpha = entry.get("alpha")
    if "rgb" in models and "flow" in models and alpha is None:
        fused = Captioner.from_members([models["rgb"], models["flow"]], device, streams=["rgb", "flow"])
        alpha, _ = tune_alpha(fused, split_refs(entry["dataset"], entry["annotations"], "val"), 1, meteor=meteor)
    results = {}
    for split in entry.get("splits", ["test"]):
        refs = split_refs(entry["dataset"], entry["annotations"], split)
        for row, members in ROW_MEMBERS.items():
            if not all(m in models for m in members):
                continue
            weights = [alpha, 1 - alpha] if len(members) == 2 else None
            streams = ["flow" if m == "flow" else "rgb" for m in members]
            r = evaluate(Captioner.from_members([models[m] for m in members], device, streams=streams), refs, weights,
                         beam, meteor)
            results[(row, f"{entry['name']} {split}")] = r["metrics"]
            write_json(r, out_dir / f"{file_stem(entry['name'], split, row)}.json")
    return results, alpha


def benchmark(spec: List[dict], out_dir, beam: int = 5, device: str = "cpu", progress: bool = True,
              meteor: Optional[Meteor] = None) -> Tuple[str, dict]:
    """Evaluate the paper's rows on every dataset/split of ``spec``.

    spec: [{"name": "msvd", "dataset": "msvd", "annotations": ROOT, "splits": ["test"],
            "rgb": {"checkpoint", "features"}, "flow": {...}, "random": {...}}]  (any model may be absent)
    RGB+Flow uses alpha tuned on the dataset's val split (or the entry's "alpha"). Returns (markdown, results).
    """
    spec, out_dir = check_spec(spec), Path(out_dir)
    results: Dict[str, Dict[str, dict]] = {r: {} for r in ROWS}
    columns, paper_of, alphas = [], {}, {}
    with (contextlib.nullcontext(meteor) if meteor is not None else Meteor()) as meteor:  # one JVM for all
        for entry in spec:
            found, alphas[entry["name"]] = benchmark_entry(entry, out_dir, beam, device, meteor)
            for split in entry.get("splits", ["test"]):
                col = f"{entry['name']} {split}"
                columns.append(col)
                paper_of[col] = entry["dataset"] if split == "test" else None
            for (row, col), metrics in found.items():
                results[row][col] = metrics
    table = markdown_table({r: v for r, v in results.items() if v}, columns, ("METEOR", "Bleu_4", "CIDEr"), paper_of)
    payload = {"table": table, "results": results, "alphas": alphas, "beam": beam, "spec": spec}
    write_json(payload, out_dir / "benchmark.json")
    (out_dir / "benchmark.md").write_text(table + "\n")
    return table, payload
