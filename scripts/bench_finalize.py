#!/usr/bin/env python
"""Cost of writing N videos through the feature store and publishing it (``finalize``), at
MSVD (2,000) and M-VAD (50,000) scale, with small (20, 64) float32 features so the store's
own work dominates. Uses only ``FeatureWriter(path, signature).add(...)`` and
``finalize()``, so the same script times an older checkout (put it first on PYTHONPATH).

  python scripts/bench_finalize.py --videos 2000 50000 --json
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from s2vt.features.store import FeatureStore, FeatureWriter


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, nargs="+", default=[2000, 50000], help="store sizes to time")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    return p.parse_args(argv)


def run(n: int, root: Path) -> dict:
    out = root / f"f{n}.h5"
    sig = {"stream": "rgb", "dim": 64}
    feats = np.random.default_rng(0).standard_normal((20, 64)).astype(np.float32)
    idx = np.arange(0, 200, 10)
    t = time.perf_counter()
    w = FeatureWriter(out, sig)
    for i in range(n):
        w.add(f"vid{i:06d}", feats, idx, {"fps": 30.0})
    if hasattr(w, "close"):  # a writer with a background thread: wait for it
        w.close()
    add_s = time.perf_counter() - t
    t = time.perf_counter()
    w.finalize()
    finalize_s = time.perf_counter() - t
    st = FeatureStore(out)
    assert len(st) == n and np.array_equal(st.features("vid000001"), feats)
    return {"videos": n, "add_s": round(add_s, 3), "finalize_s": round(finalize_s, 3)}


def main(args):
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        results = []
        for n in args.videos:
            r = run(n, root)
            results.append(r)
            print(f"{n:6d} videos: writing {r['add_s']:8.2f} s, finalize {r['finalize_s']:8.2f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps({"device": "cpu", "results": results}))


if __name__ == "__main__":
    main(parse_args())
