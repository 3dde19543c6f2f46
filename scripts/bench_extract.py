#!/usr/bin/env python
"""Extraction wall time against its in-run baselines on the same generated clips.

Measures (1) decode-only: the same worker processes decoding, sampling and cropping,
without the CNN; (2) CNN-only: the extraction's device pipeline (staging, transfers, CNN)
on ready uint8 images, as many as decoding produced; (3) the full extraction into an HDF5
store. Goal: extraction <= 1.15x max(decode-only, CNN-only). Logic: s2vt.features.extract.time_stages.

  python scripts/bench_extract.py --clips 12 --frames 60 --stream flow          # CPU, small
  python scripts/bench_extract.py --device cuda --bf16 --workers 12 --batch-size 256 --clips 96 --json
"""
import argparse
import json
import tempfile
from pathlib import Path

from s2vt.features.config import CPU_BATCH, GPU_BATCH, ExtractConfig
from s2vt.features.timing import time_stages
from s2vt.data.synth import SynthConfig, generate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=24, help="videos to generate and extract")
    p.add_argument("--frames", type=int, default=120, help="frames per video")
    p.add_argument("--width", type=int, default=320, help="clip width in pixels")
    p.add_argument("--height", type=int, default=240, help="clip height in pixels")
    p.add_argument("--stride", type=int, default=10, help="one frame in every N")
    p.add_argument("--stream", choices=["rgb", "flow"], default="rgb", help="one stream per run")
    p.add_argument("--input-size", type=int, default=224, help="CNN crop side")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per CNN call (default: extract's, {CPU_BATCH} on the CPU and {GPU_BATCH} on a GPU)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores-1 on a GPU, 2 on CPU)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--no-turns", action="store_true",
                   help="CPU: let decoding workers run while the CNN computes (see s2vt.features.pipeline.cpu_gate)")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the figures")
    return p.parse_args(argv)


def main(args):
    cfg = ExtractConfig(stream=args.stream, stride=args.stride, input_size=args.input_size,
                        batch_size=args.batch_size, workers=args.workers, device=args.device,
                        precision="bf16" if args.bf16 else "fp32", take_turns=not args.no_turns)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "data", SynthConfig(train=args.clips, val=0, test=0, frames=args.frames, width=args.width,
                                           height=args.height), progress=False)
        items = [(p.stem, p) for p in sorted((tmp / "data" / "videos").glob("*.avi"))]
        r = time_stages(items, cfg, tmp)
    print(f"device: {r['device']}; {len(items)} videos x {args.frames} frames {args.width}x{args.height}, "
          f"stride {args.stride} -> {r['images']} {args.stream} images at {args.input_size}px, "
          f"{cfg.decode_workers()} workers, batch {cfg.cnn_batch()}, {cfg.precision}")
    for name, key in (("decode-only", "decode_only_s"), ("CNN-only", "cnn_only_s"), ("extraction", "extraction_s")):
        print(f"{name:12s}: {r[key]:7.2f} s  ({r['images'] / r[key]:8.1f} images/s)")
    print(f"ratio extraction / max(decode-only, CNN-only): {r['ratio']:.2f}x (goal <= 1.15x)")
    print(f"CPU seconds: decode {r['decode_cpu_s']:.2f}, CNN {r['cnn_cpu_s']:.2f} on {r['cores']} cores -> "
          f"no overlap can beat {r['bound_s']:.2f} s; extraction / that bound: {r['ratio_to_bound']:.2f}x")
    if args.json:
        print(json.dumps({**r, "batch_size": cfg.cnn_batch(), "workers": cfg.decode_workers(),
                          "take_turns": cfg.take_turns}))
    return r


if __name__ == "__main__":
    main(parse_args())
