"""The train command: its flags are TrainConfig's, ModelConfig's and DecodeConfig's fields."""
from __future__ import annotations

import json

from s2vt.cli.common import DATASETS, RAW, examples
from s2vt.decoding.search import DecodeConfig
from s2vt.models.checkpoint import Checkpoint
from s2vt.models.s2vt import ModelConfig
from s2vt.runtime.config import add_arguments, configs, merged, overrides
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.inputs import read_json
from s2vt.training.config import TrainConfig, grouped
from s2vt.training.loop import train
from s2vt.training.recipes import recipe


def train_config(args):
    """TrainConfig from --config (if any) with the flags given on top; validated by the dataclasses."""
    base = read_json(args.config, "--config") if args.config else {}
    if not isinstance(base, dict):
        raise S2VTError(f"--config {args.config} must hold a JSON object (as a run's config.json)")
    base = grouped(base)  # the config.json of an earlier version is flat
    for key in configs(TrainConfig):  # nested: flags over --config's values, option by option
        if not isinstance(base.get(key, {}), dict):
            raise S2VTError(f"--config {args.config}: '{key}' must be a JSON object of {key} options")
    flags = {**overrides(args, TrainConfig), "model": overrides(args, ModelConfig, "model_"),
             "decoding": overrides(args, DecodeConfig, "decoding_")}
    name = args.recipe if args.recipe is not None else base.get("recipe")
    start = recipe(name) if isinstance(name, str) and name else {}  # under --config, whose values are under the flags
    given = merged(TrainConfig, base, flags)
    init = given.get("scst", {}).get("init")
    if given.get("objective") == "scst" and isinstance(init, str) and init:
        start = {**init_settings(init), **start}  # the model and data the init checkpoint was trained on
    cfg = TrainConfig.from_dict(merged(TrainConfig, start, base, flags))
    for req in ("dataset", "annotations", "features"):
        if not getattr(cfg, req):
            raise S2VTError(f"--{req} is required (or set it in --config)"
                            + (f": the format of --annotations, one of {DATASETS}" if req == "dataset" else ""))
    return cfg


# what --objective scst takes from its --init checkpoint's recorded config unless given: its data and its model
# (top-level options, in the flat layout of earlier versions as in the nested one)
INHERITED = ("dataset", "annotations", "features", "train_split", "val_split", "min_count", "shuffle_frames", "seed",
             "model", "decoding")


def init_settings(init: str) -> dict:
    """The options of ``init``'s recorded training config that a fine-tuning run starts from."""
    recorded = Checkpoint.load(init).train_config
    for key in ("model", "decoding"):  # merged under the flags as objects: anything else is the file's fault
        if key in recorded and not isinstance(recorded[key], dict):
            raise S2VTError(f"--init {init}: its recorded config's '{key}' is not an object of {key} options; "
                            "give the model flags, or train the init again")
    return {k: recorded[k] for k in INHERITED if k in recorded}


def cmd_train(args) -> int:
    res = train(train_config(args), resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    print(json.dumps(res, indent=1))
    return 0


def add_train(sub, shared):
    s = sub.add_parser("train", help="train the S2VT stacked LSTM", formatter_class=RAW, parents=[shared["overwrite"]],
                       description="Options default to the paper (E=500, H=1000, 80 frames, 20 words). "
                                   "The resolved config is written to OUT/config.json.",
                       epilog=examples(
                           "s2vt train --dataset synthetic --annotations data/synthetic --features features/rgb.h5 --out runs/rgb",
                           "s2vt train --dataset msvd --annotations data/msvd --features features/msvd_vgg.h5 --out runs/msvd_vgg --device cuda --amp",
                           "s2vt train ... --out runs/rgb --resume            # continue from runs/rgb/last.pt",
                           "s2vt train --config runs/rgb/config.json --out runs/rgb2 --seed 1",
                           "s2vt train --recipe small --dataset generic --annotations my_clips --features features/mine.h5 --out runs/mine",
                           "torchrun --nproc_per_node 8 -m s2vt train ... --device cuda"))
    s.add_argument("--config", help="JSON config (as written to a run's config.json); flags override it")
    s.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(s, TrainConfig, skip=("model",))
    add_arguments(s.add_argument_group("model"), ModelConfig, dest_prefix="model_")
    add_arguments(s.add_argument_group("decoding: recorded in the checkpoint as the default of caption, evaluate and "
                                       "benchmark"), DecodeConfig, dest_prefix="decoding_", skip=("alpha",))
    s.set_defaults(fn=cmd_train)
