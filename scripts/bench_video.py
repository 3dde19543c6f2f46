#!/usr/bin/env python
"""Frame sampling: s2vt's reader against reading every frame, on the same generated clips.

``s2vt.video.reader.iter_frames`` calls ``grab()`` for every frame (the codec still decodes it: a
frame count is only trusted once decoded) but ``retrieve()`` (conversion to BGR) and the
resize only for sampled frames. The baseline calls ``read()`` (grab + retrieve) for every
frame and keeps the same ones. Both must yield identical frames; the script checks it.
One process, one core (``cv2.setNumThreads(1)``, as in extraction's workers), the two
readers alternating ``--repeats`` times; the best time of each is kept.

  python scripts/bench_video.py                          # 24 MJPG .avi clips, one frame in 10
  python scripts/bench_video.py --ext .mp4 --stride 5 --json
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from s2vt.data.synth import SynthConfig, generate
from s2vt.video.reader import Sampling, _shrink, iter_frames, open_video


def read_every_frame(path, sampling: Sampling):
    """The baseline: ``read()`` (decode and convert) every frame, keep one in ``stride``."""
    cap, _, _ = open_video(path)
    try:
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if n % sampling.stride == 0:
                yield n, _shrink(frame, sampling.short_side)
            n += 1
    finally:
        cap.release()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=24, help="videos to generate")
    p.add_argument("--frames", type=int, default=120, help="frames per video")
    p.add_argument("--width", type=int, default=320, help="clip width in pixels (even)")
    p.add_argument("--height", type=int, default=240, help="clip height in pixels (even)")
    p.add_argument("--ext", choices=[".avi", ".mp4"], default=".avi", help=".avi (MJPG) or .mp4 (mp4v)")
    p.add_argument("--stride", type=int, default=10, help="keep one frame in every N")
    p.add_argument("--repeats", type=int, default=3, help="timings of each reader (the best is kept)")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the figures")
    args = p.parse_args(argv)
    for flag, low in (("clips", 1), ("frames", 2), ("stride", 1), ("repeats", 1)):
        if getattr(args, flag) < low:
            p.error(f"--{flag} must be at least {low}")
    return args


def main(args):
    cv2.setNumThreads(1)
    sampling = Sampling(stride=args.stride)
    readers = {"grab_skip": lambda p: iter_frames(p, sampling), "read_all": lambda p: read_every_frame(p, sampling)}
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "data", SynthConfig(train=args.clips, val=0, test=0, frames=args.frames,
                                                 width=args.width, height=args.height, ext=args.ext), progress=False)
        paths = sorted((Path(tmp) / "data" / "videos").glob(f"*{args.ext}"))
        best = {k: float("inf") for k in readers}
        outputs = {}
        for _ in range(args.repeats):
            for name, read in readers.items():
                t = time.perf_counter()
                outputs[name] = [(i, f) for p in paths for i, f in read(p)]
                best[name] = min(best[name], time.perf_counter() - t)
    a, b = outputs["grab_skip"], outputs["read_all"]
    if [i for i, _ in a] != [i for i, _ in b] or not all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b)):
        raise SystemExit("the two readers yielded different frames")
    decoded = args.clips * args.frames
    print(f"{args.clips} clips x {args.frames} frames {args.width}x{args.height} {args.ext}, one in {args.stride} "
          f"-> {len(a)} frames kept (identical from both readers)")
    for name in readers:
        print(f"{name:10s}: {best[name]:6.3f} s  ({decoded / best[name]:7.1f} decoded frames/s)")
    print(f"speed-up of grab_skip over read_all: {best['read_all'] / best['grab_skip']:.2f}x")
    if args.json:
        print(json.dumps({"ext": args.ext, "stride": args.stride, "frames_decoded": decoded, "frames_kept": len(a),
                          "grab_skip_s": round(best["grab_skip"], 4), "read_all_s": round(best["read_all"], 4),
                          "speedup": round(best["read_all"] / best["grab_skip"], 3)}))


if __name__ == "__main__":
    main(parse_args())
