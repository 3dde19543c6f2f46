#!/usr/bin/env python
"""Decoding workers sharing one list of videos, against a fixed share per worker.

Extraction's workers each take the next video no worker has taken yet, and their chunks
are passed on as they finish (``ExtractConfig.share_videos``). The baseline gives worker k
the videos k, k+W, k+2W, ... and passes chunks on in turn, worker by worker (the
DataLoader's default for an iterable dataset). With videos of different lengths the
baseline leaves workers idle while one finishes its share. Measured: the decode-only
stage (``extract.worker_chunks``: decode, sample, crop; no CNN) on generated short and long
clips, in two orders: ``skewed`` (every long clip falls in worker 0's fixed share) and
``shuffled``. Both ways alternate ``--repeats`` times; the best time of each is kept.

  python scripts/bench_shares.py                     # 2 workers, 16 short + 4 long clips
  python scripts/bench_shares.py --workers 8 --short 64 --long 16 --json
"""
import argparse
import json
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from s2vt.features.config import ExtractConfig
from s2vt.features.pipeline import worker_chunks
from s2vt.data.synth import SynthConfig, generate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--short", type=int, default=16, help="short clips")
    p.add_argument("--long", type=int, default=4, help="long clips")
    p.add_argument("--short-frames", type=int, default=40)
    p.add_argument("--long-frames", type=int, default=400)
    p.add_argument("--stream", choices=["rgb", "flow"], default="rgb")
    p.add_argument("--repeats", type=int, default=3, help="timings of each way (the best is kept)")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the figures")
    args = p.parse_args(argv)
    for flag, low in (("workers", 1), ("short", 1), ("long", 1), ("short_frames", 2), ("long_frames", 2),
                      ("repeats", 1)):
        if getattr(args, flag) < low:
            p.error(f"--{flag.replace('_', '-')} must be at least {low}")
    return args


def orders(short: list, long: list, workers: int) -> dict:
    """``skewed``: the long clips at positions 0, W, 2W, ... (worker 0's fixed share); ``shuffled``."""
    skewed, s, lg = [], list(short), list(long)
    while s or lg:
        skewed.append(lg.pop() if (len(skewed) % workers == 0 and lg) or not s else s.pop())
    both = short + long
    return {"skewed": skewed, "shuffled": random.Random(0).sample(both, len(both))}


def decode_only(items, cfg: ExtractConfig, share: bool) -> tuple:
    cfg = replace(cfg, share_videos=share)
    t = time.perf_counter()
    images = sum(len(m["images"]) for m in worker_chunks(items, cfg, cfg.preprocess()) if "images" in m)
    return time.perf_counter() - t, images


def main(args):
    cfg = ExtractConfig(stream=args.stream, workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        clips = {}
        for kind, n, frames in (("short", args.short, args.short_frames), ("long", args.long, args.long_frames)):
            d = Path(tmp) / kind
            generate(d, SynthConfig(train=n, val=0, test=0, frames=frames, width=320, height=240, seed=frames),
                     progress=False)
            clips[kind] = [(f"{kind}_{p.stem}", p) for p in sorted((d / "videos").glob("*.avi"))]
        out = {}
        for name, items in orders(clips["short"], clips["long"], args.workers).items():
            best = {True: float("inf"), False: float("inf")}
            counts = set()
            for _ in range(args.repeats):
                for share in (False, True):
                    s, n = decode_only(items, cfg, share)
                    best[share] = min(best[share], s)
                    counts.add(n)
            if len(counts) != 1:
                raise SystemExit(f"the two ways decoded different numbers of images: {sorted(counts)}")
            out[name] = {"shared_s": round(best[True], 3), "fixed_s": round(best[False], 3), "images": counts.pop(),
                         "speedup": round(best[False] / best[True], 3)}
    print(f"{args.workers} workers, {args.short} clips of {args.short_frames} frames and {args.long} of "
          f"{args.long_frames} (320x240), {args.stream}, decode-only, best of {args.repeats}")
    for name, r in out.items():
        print(f"{name:9s}: shared list {r['shared_s']:.3f} s, fixed shares {r['fixed_s']:.3f} s "
              f"-> {r['speedup']:.2f}x ({r['images']} images)")
    if args.json:
        print(json.dumps({"workers": args.workers, "stream": args.stream, **out}))
    return out


if __name__ == "__main__":
    main(parse_args())
