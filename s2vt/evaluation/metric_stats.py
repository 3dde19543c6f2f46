"""Per-video sufficient statistics of the corpus metrics, and each metric's corpus score from
their sum, so that any multiset of videos (a bootstrap resample, a permutation of two systems'
outputs) is scored exactly as coco-caption scores a corpus, with no tokenizer or JVM call:

- BLEU-1..4 (``bleu``: 10 counts per video): candidate length, the closest reference length
  (ties go to the shorter, as coco-caption's "closest" rule), then n-gram guesses and clipped
  matches for n = 1..4. The corpus score sums them, so its brevity penalty is the corpus one.
- METEOR 1.5 (``meteor``: the 23 numbers of the jar's ``SCORE`` line): lengths, function words,
  per stage (exact, stem, synonym, paraphrase) content and function matches, chunks and word
  matches. The jar's ``EVAL`` sums them (a perfectly matched segment adds no chunk) and applies
  the final formula; :func:`meteor_from_stats` is that formula with the jar's parameters for
  English (task "rank", as ``-l en -norm`` runs it).
- CIDEr-D (``cider``) and ROUGE-L (``rouge_l``): coco-caption's corpus score is the mean of the
  per-video scores (CIDEr-D's document frequencies are those of the full reference set).

Arrays are numpy; every ``*_from_stats`` takes stats summed over videos, shape ``(..., K)``,
and returns the score for each leading index, so many resamples are scored at once.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

BLEU_N = 4
BLEU_WIDTH = 2 + 2 * BLEU_N      # testlen, reflen, guess[1..4], correct[1..4]
METEOR_WIDTH = 4 + 4 * 4 + 3     # the jar's SCORE line: lengths, 4 stages x 4 matches, chunks and word matches
METEOR_STAGES = 4                # exact, stem, synonym, paraphrase
# METEOR 1.5, English, task "rank": alpha, beta, gamma, delta and the stage weights
METEOR_ALPHA, METEOR_BETA, METEOR_GAMMA, METEOR_DELTA = 0.85, 0.20, 0.60, 0.75
METEOR_WEIGHTS = (1.0, 0.60, 0.80, 0.60)
_SMALL, _TINY = 1e-9, 1e-15      # coco-caption's guards against a zero division


def bleu_video_stats(candidate: str, references: Sequence[str]) -> List[int]:
    """One video's BLEU counts (tokenised text), as coco-caption's ``BleuScorer`` cooks them."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    reflens, maxcounts = cook_refs(list(references), n=BLEU_N)
    test = cook_test(candidate, (reflens, maxcounts), eff="closest", n=BLEU_N)
    return [test["testlen"], test["reflen"], *test["guess"], *test["correct"]]


def bleu_from_stats(summed: np.ndarray, n: int = BLEU_N) -> np.ndarray:
    """Corpus BLEU-``n`` from BLEU counts summed over videos: ``(..., 10) -> (...)``."""
    s = np.asarray(summed, dtype=np.float64)
    testlen, reflen = s[..., 0], s[..., 1]
    bleu = np.ones(s.shape[:-1])
    for k in range(n):
        bleu = bleu * (s[..., 2 + BLEU_N + k] + _TINY) / (s[..., 2 + k] + _SMALL)
    bleu = bleu ** (1.0 / n)
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    with np.errstate(divide="ignore", over="ignore"):
        penalty = np.where(ratio < 1, np.exp(1 - 1 / np.minimum(ratio, 1)), 1.0)
    return bleu * penalty


def meteor_video_stats(line: str) -> List[float]:
    """The 23 numbers of one ``SCORE`` answer of the jar, as ``EVAL`` adds them: a segment matched
    perfectly (every word, one chunk) adds no chunk."""
    s = [float(x) for x in line.split()]
    if len(s) != METEOR_WIDTH:
        raise ValueError(f"a METEOR SCORE line has {METEOR_WIDTH} numbers, this one {len(s)}: {line[:200]!r}")
    matches = np.reshape(s[4:4 + 4 * METEOR_STAGES], (METEOR_STAGES, 4))  # test/ref content, test/ref function
    if matches[:, 0::2].sum() == s[0] and matches[:, 1::2].sum() == s[1] and s[-3] == 1:
        s[-3] = 0.0
    return s


def meteor_from_stats(summed: np.ndarray) -> np.ndarray:
    """Corpus METEOR from ``SCORE`` statistics summed over videos: ``(..., 23) -> (...)``."""
    s = np.asarray(summed, dtype=np.float64)
    d, w = METEOR_DELTA, METEOR_WEIGHTS
    st = s[..., 4:4 + 4 * METEOR_STAGES].reshape(s.shape[:-1] + (METEOR_STAGES, 4))
    test_len = d * (s[..., 0] - s[..., 2]) + (1 - d) * s[..., 2]
    ref_len = d * (s[..., 1] - s[..., 3]) + (1 - d) * s[..., 3]
    test_m = sum(st[..., i, 0] * w[i] * d for i in range(METEOR_STAGES))
    ref_m = sum(st[..., i, 1] * w[i] * d for i in range(METEOR_STAGES))
    test_m = test_m + sum(st[..., i, 2] * w[i] * (1 - d) for i in range(METEOR_STAGES))
    ref_m = ref_m + sum(st[..., i, 3] * w[i] * (1 - d) for i in range(METEOR_STAGES))
    chunks, words = s[..., -3], (s[..., -2] + s[..., -1]) / 2
    perfect = ((st[..., 0] + st[..., 2]).sum(-1) == s[..., 0]) & ((st[..., 1] + st[..., 3]).sum(-1) == s[..., 1]) \
        & (chunks == 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p, r = test_m / test_len, ref_m / ref_len
        fmean = 1.0 / ((1 - METEOR_ALPHA) / p + METEOR_ALPHA / r)
        frag = np.where(perfect, 0.0, chunks / words)
        score = fmean * (1.0 - METEOR_GAMMA * frag ** METEOR_BETA)
    return np.where(np.isnan(score), 0.0, np.maximum(score, 0.0))


def video_stats(ids: Sequence[str], gts: Dict[str, List[str]], res: Dict[str, List[str]],
                meteor_lines: Sequence[str] = None, per: Dict[str, Dict[str, float]] = None) -> Dict[str, dict]:
    """Each video's statistics from tokenised references ``gts`` and candidates ``res`` (as
    coco-caption's scorers take them), the jar's ``SCORE`` lines in the order of ``ids`` (or None
    without METEOR) and the per-video CIDEr-D and ROUGE-L of ``per``."""
    out = {}
    for i, k in enumerate(ids):
        v = {"bleu": bleu_video_stats(res[k][0], gts[k])}
        if meteor_lines is not None:
            v["meteor"] = meteor_video_stats(meteor_lines[i])
        v["cider"], v["rouge_l"] = per[k]["CIDEr"], per[k]["ROUGE_L"]
        out[k] = v
    return out


def corpus_from_stats(stats: Dict[str, dict]) -> Dict[str, float]:
    """The corpus scores of all videos of ``stats`` (METEOR when the stats hold it)."""
    rows = list(stats.values())
    out = {}
    bleu = np.sum([r["bleu"] for r in rows], axis=0)
    for n in range(1, BLEU_N + 1):
        out[f"Bleu_{n}"] = float(bleu_from_stats(bleu, n))
    if all("meteor" in r for r in rows):
        out["METEOR"] = float(meteor_from_stats(np.sum([r["meteor"] for r in rows], axis=0)))
    out["ROUGE_L"] = float(np.mean([r["rouge_l"] for r in rows]))
    out["CIDEr"] = float(np.mean([r["cider"] for r in rows]))
    return out
