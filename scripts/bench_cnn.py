#!/usr/bin/env python
"""CNN images/s on the CPU per batch size, with the allocator as extraction sets it
(s2vt.runtime.hostmem.keep_freed_memory) and with glibc's defaults (a fresh interpreter).

Each setting runs the extraction's own Pipeline (staging, normalisation, CNN) on the same
random uint8 images after a warm-up. The default batch sizes include the CPU default
(extract.CPU_BATCH), which these figures chose.

  python scripts/bench_cnn.py                       # EfficientNet-Lite0 at 224 px
  python scripts/bench_cnn.py --batch-sizes 4 16 64 --images 256 --json
  python scripts/bench_cnn.py --batch-sizes 8 --threads 1 --json  # how the CNN scales with cores
"""
import argparse
import json
import os
import subprocess
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--images", type=int, default=256, help="images per timing")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=2, help="timings per batch size (the best is kept)")
    p.add_argument("--threads", type=int, default=None,
                   help="CNN threads (torch.set_num_threads; default: torch's, one per core)")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the figures")
    p.add_argument("--default-allocator", action="store_true", help=argparse.SUPPRESS)  # the child run
    args = p.parse_args(argv)
    if args.repeats < 1 or args.images < 1 or (args.threads is not None and args.threads < 1):
        p.error("--repeats, --images and --threads must be at least 1")
    return args


def rates(args) -> dict:
    """{batch size: best images/s over the repeats}."""
    import torch

    from s2vt.features.backbones.registry import Backbone
    from s2vt.features.pipeline import Pipeline
    from s2vt.features.config import ExtractConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ExtractConfig(input_size=args.input_size)
    backbone = Backbone(cfg.cnn, cfg.layer, cfg.weights, cfg.preprocess())
    S = args.input_size
    chunk = torch.randint(0, 256, (32, 3, S, S), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = {}
    for _ in range(args.repeats):
        for b in args.batch_sizes:
            pipe = Pipeline(backbone, torch.device("cpu"), b, S)
            for _ in range(max(2, 2 * b // 32)):
                pipe.add(0, chunk)
            pipe.flush()
            t = time.perf_counter()
            for k in range(0, args.images, 32):
                pipe.add(k, chunk[: min(32, args.images - k)])
            pipe.flush()
            out[b] = max(out.get(b, 0.0), args.images / (time.perf_counter() - t))
    return out


def main(args):
    if args.default_allocator:
        print(json.dumps(rates(args)))
        return None
    child = subprocess.run([sys.executable, __file__, "--default-allocator", "--batch-sizes",
                            *map(str, args.batch_sizes), "--images", str(args.images), "--input-size",
                            str(args.input_size), "--repeats", str(args.repeats)]
                           + (["--threads", str(args.threads)] if args.threads else []),
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "S2VT_KEEP_FREED_MEMORY": "0"})  # glibc's defaults in the child
    default = {int(k): v for k, v in json.loads(child.stdout.strip().splitlines()[-1]).items()}
    tuned = rates(args)
    import torch

    print(f"cpu ({torch.get_num_threads()} threads), EfficientNet-Lite0 at {args.input_size} px, "
          f"{args.images} images, best of {args.repeats}")
    print(f"{'batch':>5}  {'glibc default':>14}  {'kept memory':>12}  ratio")
    for b in args.batch_sizes:
        print(f"{b:5d}  {default[b]:10.1f} i/s  {tuned[b]:8.1f} i/s  {tuned[b] / default[b]:.2f}x")
    r = {"device": f"cpu ({torch.get_num_threads()} threads)", "input_size": args.input_size,
         "default_images_per_s": {str(b): round(default[b], 1) for b in args.batch_sizes},
         "tuned_images_per_s": {str(b): round(tuned[b], 1) for b in args.batch_sizes}}
    if args.json:
        print(json.dumps(r))
    return r


if __name__ == "__main__":
    main(parse_args())
