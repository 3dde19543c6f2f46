"""Commands on datasets: synth (write the embedded set) and dataset-info (split and caption counts)."""
from __future__ import annotations

import json

from s2vt.cli.common import DATASETS, RAW, examples
from s2vt.data.corpora import load_corpus
from s2vt.data.synth import SynthConfig, generate
from s2vt.runtime.config import add_arguments, overrides
from s2vt.runtime.console import shown


def cmd_synth(args) -> int:
    cfg = SynthConfig(**overrides(args, SynthConfig))
    out = generate(args.out_dir, cfg, workers=args.workers, overwrite=args.overwrite)
    print(f"wrote {cfg.train + cfg.val + cfg.test} clips to {shown(str(out))}")
    return 0


def cmd_dataset_info(args) -> int:
    print(json.dumps(load_corpus(args.name, args.root).stats(), indent=2))
    return 0


def add_synth(sub, shared):
    s = sub.add_parser("synth", help="generate the embedded dataset of moving shapes", formatter_class=RAW,
                       parents=[shared["overwrite"]],
                       epilog=examples("s2vt synth data/synthetic", "s2vt synth /tmp/tiny --train 20 --val 5 --test 5 --ext .mp4"))
    s.add_argument("out_dir", help="folder to write (must be empty, or a dataset written by s2vt synth with --overwrite)")
    add_arguments(s, SynthConfig)
    s.add_argument("--workers", type=int, default=None, help="processes writing clips (default: all cores)")
    s.set_defaults(fn=cmd_synth)


def add_dataset_info(sub, shared):
    s = sub.add_parser("dataset-info", help="videos and captions per split, as JSON", formatter_class=RAW,
                       epilog=examples("s2vt dataset-info msvd --root ../shared/data/msvd",
                                        "s2vt dataset-info synthetic --root data/synthetic"))
    s.add_argument("name", help=DATASETS)
    s.add_argument("--root", required=True, help="dataset folder")
    s.set_defaults(fn=cmd_dataset_info)
