"""Evaluation: caption a split with one model or an RGB+flow fusion, score it, tune the
fusion weight on validation, and lay results out as the paper's table.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import checkpoint
from .data import FeatureSource, VideoDataset, collate_videos
from .datasets import load_corpus
from .decoding import Fusion, decode
from .errors import S2VTError
from .metrics import Meteor, score
from .store import FeatureStore, check_signature

# MSVD METEOR (%) reported by the paper, and M-VAD
PAPER = {
    ("msvd", "Flow"): 24.3, ("msvd", "RGB"): 29.2, ("msvd", "RGB random order"): 28.2,
    ("msvd", "RGB+Flow"): 29.8, ("mvad", "RGB"): 6.7,
}
ROWS = ("Flow", "RGB", "RGB random order", "RGB+Flow")


@dataclass
class Member:
    """One model of an evaluation: its checkpoint and the feature store it reads."""

    checkpoint: str
    features: str


@torch.inference_mode()
def caption_features(decoder, sources: Sequence[FeatureSource], max_frames: Sequence[int], vids: Sequence[str],
                     vocab, device, beam: int = 1, max_len: int = 30, batch_size: int = 128) -> Dict[str, str]:
    """Captions of ``vids`` by ``decoder`` (a model or a Fusion) reading one source per member."""
    loader = DataLoader(VideoDataset(sources, vids, max_frames), batch_size=batch_size, collate_fn=collate_videos)
    out = {}
    for ids, inputs in loader:
        toks = decode(decoder, [(x.to(device), lens) for x, lens in inputs], beam=beam, max_len=max_len)
        out.update({v: vocab.decode(t) for v, t in zip(ids, toks)})
    return out


class Captioner:
    """Models (one, or RGB + flow to fuse) with their stores, ready to caption videos."""

    def __init__(self, members: Sequence[Member], device="cpu"):
        self.device = torch.device(device)
        self.models, self.vocab, self.stores, self.max_frames = [], None, [], []
        for m in members:
            ck = checkpoint.load(m.checkpoint)
            model, vocab = checkpoint.build_model(ck)
            if self.vocab is not None and vocab != self.vocab:
                raise S2VTError(f"{m.checkpoint}: fused models must share one vocabulary; train them on the same "
                                "captions with the same --min-count")
            store = FeatureStore(m.features)
            check_signature(store.signature, ck["feature_signature"], str(store.path))
            self.models.append(model.to(self.device))
            self.vocab = vocab
            self.max_frames.append(ck["config"]["model"]["max_frames"])
            self.stores.append(store)
        self.sources = [FeatureSource(s, [], preload=False) for s in self.stores]

    def available(self, vids: Sequence[str]) -> Tuple[List[str], List[str]]:
        have = [v for v in vids if all(v in s for s in self.stores)]
        return have, [v for v in vids if v not in set(have)]

    def caption(self, vids: Sequence[str], weights: Optional[Sequence[float]] = None, beam: int = 1,
                max_len: int = 30, batch_size: int = 128) -> Dict[str, str]:
        weights = list(weights) if weights is not None else [1.0] * len(self.models)
        return caption_features(Fusion(list(zip(self.models, weights))), self.sources, self.max_frames, vids, self.vocab,
                                self.device, beam, max_len, batch_size)


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


def write_json(obj, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
    tmp.replace(path)
    return path


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


def benchmark(spec: List[dict], out_dir, beam: int = 5, device: str = "cpu", progress: bool = True,
              meteor: Optional[Meteor] = None) -> Tuple[str, dict]:
    """Evaluate the paper's rows on every dataset/split of ``spec``.

    spec: [{"name": "msvd", "dataset": "msvd", "annotations": ROOT, "splits": ["test"],
            "rgb": {"checkpoint", "features"}, "flow": {...}, "random": {...}}]  (any model may be absent)
    RGB+Flow uses alpha tuned on the dataset's val split. Returns (markdown, results).
    """
    results: Dict[str, Dict[str, dict]] = {r: {} for r in ROWS}
    columns, paper_of, alphas = [], {}, {}
    with (contextlib.nullcontext(meteor) if meteor is not None else Meteor()) as meteor:  # one JVM for all
        for entry in spec:
            models = {k: Member(**entry[k]) for k in ("rgb", "flow", "random") if entry.get(k)}
            alpha = entry.get("alpha")
            if "rgb" in models and "flow" in models and alpha is None:
                refs_val = split_refs(entry["dataset"], entry["annotations"], "val")
                alpha, _ = tune_alpha(Captioner([models["rgb"], models["flow"]], device), refs_val, beam=1, meteor=meteor)
            alphas[entry["name"]] = alpha
            for split in entry.get("splits", ["test"]):
                col = f"{entry['name']} {split}"
                columns.append(col)
                paper_of[col] = entry["dataset"] if split == "test" else None
                refs = split_refs(entry["dataset"], entry["annotations"], split)
                for row, members, w in (("Flow", ["flow"], None), ("RGB", ["rgb"], None),
                                        ("RGB random order", ["random"], None),
                                        ("RGB+Flow", ["rgb", "flow"], [alpha, 1 - alpha] if alpha is not None else None)):
                    if not all(m in models for m in members):
                        continue
                    r = evaluate(Captioner([models[m] for m in members], device), refs, w, beam, meteor)
                    results[row][col] = r["metrics"]
                    write_json(r, Path(out_dir) / f"{entry['name']}_{split}_{row.replace(' ', '_').replace('+', '_')}.json")
    table = markdown_table({r: v for r, v in results.items() if v}, columns, ("METEOR", "Bleu_4", "CIDEr"), paper_of)
    payload = {"table": table, "results": results, "alphas": alphas, "beam": beam, "spec": spec}
    write_json(payload, Path(out_dir) / "benchmark.json")
    (Path(out_dir) / "benchmark.md").write_text(table + "\n")
    return table, payload
