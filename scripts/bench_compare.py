#!/usr/bin/env python
"""Paired significance at the study's size: ``s2vt.evaluation.compare`` on synthetic per-video statistics.

Two systems (a baseline and one compared with it) of ``--seeds`` runs each over ``--videos``
test videos; every video carries plausible statistics of the four metrics (BLEU-4 counts, the
23 METEOR numbers, CIDEr-D and ROUGE-L scores). Timed: the paired bootstrap of all four
metrics (``--resamples`` resamples, seeds resampled and averaged inside each), and with
``--ar`` approximate randomisation as well. The best of ``--repeats`` runs is kept.

  python scripts/bench_compare.py                         # 10,000 resamples, 670 videos x 3 seeds
  python scripts/bench_compare.py --resamples 1000 --json
"""
import argparse
import json
import os
import time

import numpy as np

from s2vt.evaluation.compare import METRICS, System, compare


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=670, help="test videos (MSVD's test split: 670)")
    p.add_argument("--seeds", type=int, default=3, help="runs per system")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (and AR trials)")
    p.add_argument("--ar", action="store_true", help="also time approximate randomisation")
    p.add_argument("--repeats", type=int, default=1, help="timings (the best is kept)")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the figures")
    args = p.parse_args(argv)
    for flag, low in (("videos", 2), ("seeds", 1), ("resamples", 1), ("repeats", 1)):
        if getattr(args, flag) < low:
            p.error(f"--{flag} must be at least {low}")
    return args


def video_stats(rng: np.random.Generator, n: int, skill: float) -> np.ndarray:
    """``(n, width)`` statistics of ``n`` captions of a system matching about ``skill`` of their words."""
    length = rng.integers(5, 12, n)
    ref = np.clip(length + rng.integers(-2, 3, n), 3, None)
    guess = np.stack([np.maximum(length - k, 0) for k in range(4)], 1)
    correct = np.floor(guess * np.clip(rng.normal(skill, 0.15, (n, 1)) ** np.arange(1, 5), 0, 1))
    bleu = np.column_stack([length, ref, guess, correct])
    func_t, func_r = length // 3, ref // 3
    exact = np.minimum(correct[:, 0], np.minimum(length, ref))
    content = np.maximum(exact - func_t, 0)
    stages = np.zeros((n, 16))
    stages[:, 0], stages[:, 1] = content, content                      # exact content matches
    stages[:, 2], stages[:, 3] = exact - content, exact - content      # exact function-word matches
    chunks = np.where(exact > 0, np.maximum(1, (exact // 3)), 0)
    meteor = np.column_stack([length, ref, func_t, func_r, stages, chunks, exact, exact])
    cider = np.clip(rng.gamma(2.0, skill / 2, n) * 2, 0, 10)
    rouge = np.clip(rng.normal(skill, 0.15, n), 0, 1)
    cols = {"bleu": bleu, "meteor": meteor, "cider": cider[:, None], "rouge_l": rouge[:, None]}
    return np.column_stack([cols[key] for key, _ in METRICS.values()]).astype(np.float64)


def main(args):
    rng = np.random.default_rng(0)
    systems = [System(name, np.stack([video_stats(rng, args.videos, skill) for _ in range(args.seeds)]))
               for name, skill in (("baseline", 0.55), ("system", 0.58))]
    out = {"videos": args.videos, "seeds": args.seeds, "metrics": len(METRICS), "resamples": args.resamples,
           "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    for method in ("bootstrap", "ar") if args.ar else ("bootstrap",):
        best, result = float("inf"), None
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = compare(systems, method, args.resamples, seed=0)
            best = min(best, time.perf_counter() - t)
        out[f"{method}_s"] = round(best, 3)
        out[f"{method}_p"] = {m: r["p"] for m, r in result["systems"]["system"].items()}
        print(f"{method}: {args.resamples} resamples of {args.videos} videos x {args.seeds} seeds x "
              f"{len(METRICS)} metrics: {best:.2f} s")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main(parse_args())
