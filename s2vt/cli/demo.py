"""The demo command: the whole pipeline on the embedded dataset, and the studies."""
from __future__ import annotations

from s2vt.apps.demo import run_demo
from s2vt.apps.study import run_study
from s2vt.cli.common import RAW, examples
from s2vt.runtime.devices import resolve as resolve_device
from s2vt.runtime.errors import S2VTError


def cmd_demo(args) -> int:
    if args.device:
        resolve_device(args.device)
    if args.seeds is not None and any(s < 0 for s in args.seeds):
        raise S2VTError(f"--seeds {' '.join(map(str, args.seeds))}: seeds must be >= 0")
    if args.study:

        return 0 if run_study(args.workdir, args.study, args.preset, args.fresh, args.device, args.seeds, workers=args.workers) else 1
    res = run_demo(args.workdir, args.preset, args.fresh, args.device, args.seeds, workers=args.workers)
    return 0 if res else 1


def add_demo(sub, shared):
    s = sub.add_parser("demo", help="the whole pipeline on the embedded dataset", formatter_class=RAW,
                       epilog=examples("s2vt demo", "s2vt demo --preset tiny --workdir /tmp/demo",
                                        "s2vt demo --preset gpu --device cuda",
                                        "s2vt demo --study decoders --workdir /tmp/study"))
    s.add_argument("--workdir", default="demo_out", help="folder for everything the demo writes (default: demo_out)")
    s.add_argument("--preset", choices=["cpu", "tiny", "gpu"], default="cpu", help="sizes (default: cpu)")
    s.add_argument("--fresh", action="store_true", help="start over (removes only what an earlier demo wrote)")
    s.add_argument("--device", default="", help="default: the preset's device")
    s.add_argument("--seeds", type=int, nargs="+", help="seeds to train (default: the preset's)")
    s.add_argument("--workers", type=int, default=None, help="processes generating the dataset (default: all cores)")
    s.add_argument("--study", choices=["decoders"], default=None,
                   help="instead of the paper's table, a measured comparison: decoders = S2VT vs temporal "
                        "attention, each with and without SCST (3 seeds)")
    s.set_defaults(fn=cmd_demo)
