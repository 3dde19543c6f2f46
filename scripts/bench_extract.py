#!/usr/bin/env python
"""Extraction throughput against its in-run baselines on the same files.

Prints frames/s of (1) decode-only: the same worker processes decoding, sampling and
cropping, without the CNN; (2) CNN-only: the backbone on ready uint8 batches; (3) full
extraction into an HDF5 store. The goal ratio is extraction time / decode-only time.

  python scripts/bench_extract.py                       # CPU, small
  python scripts/bench_extract.py --device cuda --clips 200 --workers 12 --bf16
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from s2vt.backbones import Backbone
from s2vt.extract import ExtractConfig, VideoChunks, extract
from s2vt.synth import SynthConfig, generate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=24, help="videos to generate and extract")
    p.add_argument("--frames", type=int, default=120, help="frames per video")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--stride", type=int, default=10)
    p.add_argument("--stream", choices=["rgb", "flow"], default="rgb")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    return p.parse_args(argv)


def main(args):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "data", SynthConfig(train=args.clips, val=0, test=0, frames=args.frames, width=args.width,
                                           height=args.height), progress=False)
        items = [(p.stem, p) for p in sorted((tmp / "data" / "videos").glob("*.avi"))]
        cfg = ExtractConfig(stream=args.stream, stride=args.stride, input_size=args.input_size,
                            batch_size=args.batch_size, workers=args.workers, device=args.device,
                            precision="bf16" if args.bf16 else "fp32")
        backbone = Backbone(cfg.cnn, preprocess=cfg.preprocess()).to(args.device)

        t = time.perf_counter()
        n_dec = 0
        loader = DataLoader(VideoChunks(items, cfg), batch_size=None, num_workers=min(args.workers, len(items)),
                            prefetch_factor=4 if args.workers else None)
        for msg in loader:
            n_dec += len(msg.get("images", ()))
        t_dec = time.perf_counter() - t

        x = torch.randint(0, 255, (args.batch_size, 3, args.input_size, args.input_size), dtype=torch.uint8)
        x = x.to(args.device)
        ac = torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16)
        with torch.inference_mode(), ac:
            backbone(x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            reps = max(1, n_dec // args.batch_size)
            for _ in range(reps):
                backbone(x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t_cnn = time.perf_counter() - t
        cnn_ips = reps * args.batch_size / t_cnn

        t = time.perf_counter()
        s = extract(items, tmp / "f.h5", cfg, backbone=backbone, progress=False)
        t_ext = time.perf_counter() - t
        assert s.frames == n_dec and not s.failed

    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; torch {torch.__version__}; {len(items)} videos x {args.frames} frames "
          f"{args.width}x{args.height}, stride {args.stride} -> {n_dec} {args.stream} images at {args.input_size}px, "
          f"{args.workers} workers, batch {args.batch_size}{', bf16' if args.bf16 else ''}")
    print(f"decode-only : {n_dec / t_dec:8.1f} frames/s  ({t_dec:.2f} s)")
    print(f"CNN-only    : {cnn_ips:8.1f} images/s")
    print(f"extraction  : {n_dec / t_ext:8.1f} frames/s  ({t_ext:.2f} s)")
    print(f"ratio extraction/decode-only wall time: {t_ext / t_dec:.2f}x (goal on a GPU: <= 1.25x)")


if __name__ == "__main__":
    main(parse_args())
