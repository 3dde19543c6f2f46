#!/usr/bin/env python
"""Beam-search decoding of a test split's worth of clips: batched against one clip at a
time, in the same run, at the paper's model shapes (random weights: timing only).

  python scripts/bench_decode.py --clips 40                 # CPU
  python scripts/bench_decode.py --device cuda              # 670 clips x 80 frames (MSVD test)
"""
import argparse
import json
import time

import torch

from s2vt.runtime.devices import resolve, synchronize
from s2vt.runtime.devices import name as device_name
from s2vt.decoding.search import beam_search
from s2vt.models.s2vt import ModelConfig, S2VT
from s2vt.runtime.devices import configure


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=670)
    p.add_argument("--frames", type=int, default=80)
    p.add_argument("--feat-dim", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=13000)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=670, help="clips per batched call")
    p.add_argument("--single", type=int, default=0, help="clips timed one at a time (0: all; the rate is extrapolated otherwise)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    return p.parse_args(argv)


def main(args):
    device = resolve(args.device)
    configure(device, fp32=not args.amp)  # as s2vt train and evaluate: IEEE fp32 unless bf16
    torch.manual_seed(0)
    model = S2VT(ModelConfig(feat_dim=args.feat_dim, vocab_size=args.vocab)).to(device).eval()
    feats = torch.randn(args.clips, args.frames, args.feat_dim, device=device)
    lens = torch.full((args.clips,), args.frames)
    ac = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    sync = lambda: synchronize(device)

    with ac():
        beam_search(model, (feats[:2], lens[:2]), beam=args.beam, max_len=args.max_len)  # warm-up
    sync()
    t = time.perf_counter()
    with ac():
        out = []
        for i in range(0, args.clips, args.batch_size):
            out += beam_search(model, (feats[i:i + args.batch_size], lens[i:i + args.batch_size]), beam=args.beam,
                               max_len=args.max_len)
    sync()
    t_batched = time.perf_counter() - t

    n_single = args.single or args.clips
    t = time.perf_counter()
    with ac():
        for i in range(n_single):
            beam_search(model, (feats[i:i + 1], lens[i:i + 1]), beam=args.beam, max_len=args.max_len)
    sync()
    t_single = (time.perf_counter() - t) * args.clips / n_single

    dev = device_name(device)
    print(f"device: {dev}; torch {torch.__version__}; {args.clips} clips x {args.frames} frames x {args.feat_dim}-d, "
          f"beam {args.beam}, max {args.max_len} words, E=500 H=1000 V={args.vocab}{', bf16' if args.amp else ''}")
    print(f"batched      : {t_batched:8.2f} s  ({args.clips / t_batched:.1f} clips/s)")
    print(f"one at a time: {t_single:8.2f} s" + (f"  (timed on {n_single} clips, scaled)" if n_single < args.clips else ""))
    print(f"speed-up: {t_single / t_batched:.1f}x (goal on an H100: batched <= 1 s and >= 10x)")
    if args.json:
        print(json.dumps({"device": dev, "torch": torch.__version__, "clips": args.clips, "beam": args.beam,
                          "batched_s": t_batched, "one_at_a_time_s": t_single, "single_timed": n_single}))


if __name__ == "__main__":
    main(parse_args())
