"""Per-attribute accuracy on the embedded dataset: does a caption name the right colour,
shape and motion?

METEOR gives partial credit to "a red circle moves to the left" for a clip that moves
right (five words of six match), so it hides *which* part of a caption a model gets
wrong. Here a caption is parsed into (colour, shape, motion) with the synth vocabulary,
synonyms included ("ball" = circle, "box" = square, "getting bigger" = grow, "falling" =
down, ...), and scored against the ground truth that ``s2vt synth`` writes in
``clips.jsonl``.

Rule: an attribute is named correctly when the caption names exactly one value of it
and that value is the true one. A caption naming none ("a thing moves") or two
("a red and blue ball") counts as wrong for that attribute.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, NamedTuple, Optional

from s2vt.runtime.errors import S2VTError
from s2vt.data.synth import COLOURS, MOTION_WORDS, SYNONYMS

ATTRIBUTES = ("colour", "shape", "motion")


class Attributes(NamedTuple):
    colour: Optional[str]
    shape: Optional[str]
    motion: Optional[str]


def _lexicon() -> Dict[str, Dict[str, str]]:
    """attribute -> {word: value}, from the synth vocabulary."""
    shapes = {w: s for s, words in SYNONYMS.items() for w in words}
    motions = {w: m for m, words in MOTION_WORDS.items() for w in words}
    return {"colour": {c: c for c in COLOURS}, "shape": shapes, "motion": motions}


LEXICON = _lexicon()


def parse(caption: str) -> Attributes:
    """The colour, shape and motion a caption names (None where it names none or several)."""
    words = re.findall(r"[a-z]+", caption.lower())
    found = []
    for attr in ATTRIBUTES:
        values = {LEXICON[attr][w] for w in words if w in LEXICON[attr]}
        found.append(values.pop() if len(values) == 1 else None)
    return Attributes(*found)


def load_truth(root) -> Dict[str, Attributes]:
    """Ground truth per clip id from ``ROOT/clips.jsonl`` (written by ``s2vt synth``)."""
    path = Path(root) / "clips.jsonl"
    if not path.exists():
        raise S2VTError(f"{path} not found: per-attribute accuracy needs a dataset written by `s2vt synth`")
    truth = {}
    for line in path.read_text().splitlines():
        m = json.loads(line)
        truth[m["id"]] = Attributes(m["colour"], m["shape"], m["motion"])
    return truth


def accuracy(captions: Dict[str, str], truth: Dict[str, Attributes]) -> Dict[str, float]:
    """Fraction of the captioned videos whose colour / shape / motion (and all three) are named correctly.

    captions: video id -> generated caption; every id must be in ``truth``.
    """
    if not captions:
        raise S2VTError("no captions to score for attribute accuracy")
    missing = [v for v in captions if v not in truth]
    if missing:
        raise S2VTError(f"no ground truth for {missing[:3]} in clips.jsonl: captions of another dataset?")
    hits = {a: 0 for a in ATTRIBUTES + ("all",)}
    for vid, cap in captions.items():
        got, want = parse(cap), truth[vid]
        ok = [getattr(got, a) == getattr(want, a) for a in ATTRIBUTES]
        for a, o in zip(ATTRIBUTES, ok):
            hits[a] += o
        hits["all"] += all(ok)
    return {f"acc_{a}": hits[a] / len(captions) for a in hits}
