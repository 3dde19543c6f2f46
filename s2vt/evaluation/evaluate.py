"""Evaluation: caption a split with one model or an RGB+flow fusion and score it; tune the
fusion weight on validation with the decoding the reported numbers use (the paper's table over
datasets and seeds is :mod:`s2vt.evaluation.benchmark`).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Dict, List, Optional, Tuple

import numpy as np

from s2vt.captioning.captioner import Captioner
from s2vt.data.corpora import load_corpus
from s2vt.decoding.search import DecodeConfig, fusion_weights
from s2vt.runtime.errors import S2VTError
from s2vt.evaluation.metrics import Meteor, score

# the evaluation JSON's layout; 2: each video carries its metric statistics ("stats", s2vt.evaluation.metric_stats),
# from which s2vt compare rescores any resample of the videos
FORMAT = 2


def evaluate(captioner: Captioner, refs: Dict[str, List[str]], weights=None, decoding: Optional[DecodeConfig] = None,
             meteor: Optional[Meteor] = None, progress: bool = False) -> dict:
    """Caption the videos of ``refs`` with ``decoding`` (default: the checkpoint's) and score them.
    Returns corpus/per-video metrics (fractions, not x100), each video's metric statistics, captions
    and the decoding used."""
    dec = decoding or captioner.decoding
    vids, missing = captioner.available(list(refs))
    if not vids:
        raise S2VTError("no video of this split has features in every store")
    weights = weights if weights is not None else fusion_weights(dec.alpha, len(captioner.models))
    caps = captioner.caption(vids, weights, dec, progress=progress)
    stats: Dict[str, dict] = {}
    corpus, per = score({v: refs[v] for v in vids}, caps, meteor=meteor, stats=stats)
    return {"format": FORMAT, "metrics": corpus,
            "videos": {v: {"caption": caps[v], "references": refs[v], **per[v], "stats": stats[v]} for v in vids},
            "missing": missing, "beam": dec.beam, "decoding": asdict(dec),
            "weights": list(weights) if weights is not None else None}


ALPHA_GRID = tuple(round(float(a), 2) for a in np.linspace(0, 1, 11))
TIE_RULE = "highest val METEOR; on a tie the alpha closest to 0.5, then the larger (RGB) one"


def tune_alpha(captioner: Captioner, refs, decoding: Optional[DecodeConfig] = None, grid=ALPHA_GRID,
               meteor: Optional[Meteor] = None, progress: bool = False) -> Tuple[float, dict]:
    """The RGB weight alpha (score = a*log p_rgb + (1-a)*log p_flow) with the best METEOR on ``refs``,
    decoded exactly as the reported numbers are (``decoding``: beam, length penalty, max length).

    The grid holds 0 and 1 (flow alone, RGB alone: a member of weight 0 is not run), so the fused
    score at the tuned alpha is never below the better single model on ``refs``. Ties: ``TIE_RULE``.
    Returns (alpha, {"curve": {alpha: METEOR}, "decoding": ..., "rule": TIE_RULE})."""
    from tqdm import tqdm

    dec = decoding or captioner.decoding
    curve = {a: evaluate(captioner, refs, fusion_weights(a, 2), dec, meteor)["metrics"]["METEOR"]
             for a in tqdm(grid, desc="tune alpha on val", unit="alpha", disable=not progress, leave=False)}
    best = max(curve, key=lambda a: (curve[a], -abs(a - 0.5), a))
    return best, {"alpha": best, "curve": curve, "decoding": asdict(dec), "rule": TIE_RULE}


def evaluate_captioner(captioner: Captioner, dataset: str, annotations, split: str,
                       decoding: Optional[DecodeConfig] = None, meteor: Optional[Meteor] = None, log=None,
                       progress: bool = False) -> dict:
    """:func:`evaluate` on ``split`` of a dataset; a fusion of two models is weighted by
    ``decoding.alpha``, or by the alpha :func:`tune_alpha` finds on val with the same decoding
    (recorded under ``alpha_tuning``). ``log``: a callable told of the tuning; ``progress``: a bar
    over the tuning's alphas."""
    dec = decoding or captioner.decoding
    weights, tuning, alpha = None, None, dec.alpha
    if len(captioner.models) == 2:
        if alpha is None:
            if log:
                log(f"tuning alpha on val (beam {dec.beam}, length penalty {dec.len_penalty}, at most "
                    f"{dec.max_len} words) ...")
            alpha, tuning = tune_alpha(captioner, split_refs(dataset, annotations, "val"), dec, meteor=meteor,
                                       progress=progress)
            if log:
                log(f"alpha tuned on val: {alpha} (val METEOR {100 * tuning['curve'][alpha]:.1f})")
        weights = fusion_weights(alpha, 2)
    r = evaluate(captioner, split_refs(dataset, annotations, split), weights, dec, meteor, progress)
    r.update(dataset=dataset, split=split, alpha=alpha, alpha_tuning=tuning, date=time.strftime("%Y-%m-%d %H:%M"),
             metrics_scale="fractions in [0, 1]; x100 where printed")
    return r


def split_refs(dataset: str, root, split: str) -> Dict[str, List[str]]:
    return dict(load_corpus(dataset, root).split_items(split))
