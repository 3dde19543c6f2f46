"""The training config: :class:`TrainConfig` and its option groups (optimiser, validation, logging,
torchrun, SCST), each field declared once with its flag's help, type and range.

``config.json`` and a checkpoint's training config record every option at the top, named as its
flag (:meth:`TrainConfig.to_dict`, :func:`flat`); :func:`grouped` reads that layout back, and a grouped
one as well."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import asdict, dataclass
from typing import Optional

from s2vt.data.corpora import DATASETS
from s2vt.decoding.search import DecodeConfig
from s2vt.models.s2vt import ModelConfig
from s2vt.runtime.config import INT64_MAX, check_fields, configs, from_dict, nested, option
from s2vt.runtime.errors import ConfigError
from s2vt.training.recipes import RECIPES

REMOVED_OPTIONS = {"workers", "preload", "compile"}  # TrainConfig fields of earlier versions
LR_PRESETS = {"adam": 2e-4, "sgd": 0.01}  # OptimConfig.lr when none is given


@dataclass
class OptimConfig:
    """The optimiser and its learning-rate schedule."""

    optimizer: str = option("adam", "optimiser", choices=("adam", "sgd"))
    lr: Optional[float] = option(None, "learning rate (preset: adam 2e-4, sgd 0.01)", low=0.0, low_open=True, high=10.0)
    momentum: float = option(0.9, "SGD momentum", low=0.0, high=0.999, when={"optimizer": "sgd"})
    weight_decay: float = option(0.0, "L2 weight decay", low=0.0, high=1.0)
    grad_clip: float = option(5.0, "clip the global gradient norm to this", low=0.0, low_open=True)
    schedule: str = option("none", "learning-rate schedule per epoch", choices=("none", "step", "cosine"))
    step_epochs: int = option(10, "step schedule: multiply the lr by --gamma every this many epochs", low=1, high=100_000,
                              when={"schedule": "step"})
    gamma: float = option(0.5, "step schedule factor", low=0.0, low_open=True, high=1.0, when={"schedule": "step"})

    def __post_init__(self):
        check_fields(self)

    def resolved(self) -> "OptimConfig":
        """A copy with the preset lr of the chosen optimiser where none is given."""
        return dataclasses.replace(self, lr=self.lr if self.lr is not None else LR_PRESETS[self.optimizer])


@dataclass
class ValidationConfig:
    """How often the run validates, what selects best.pt, and when it stops early."""

    val_meteor: bool = option(True, "select the model on val METEOR of the captions --select-beam decodes "
                                    "(else on val loss)")
    select_beam: int = option(1, "beam of the val captions that select best.pt (1: greedy, cheap; the reported "
                                 "numbers use the checkpoint's --beam)", low=1, high=100, when={"val_meteor": True})
    val_every: int = option(1, "validate every N epochs (and after the last)", low=1)
    patience: int = option(0, "early stopping: validations without improvement (0: off)", low=0)

    def __post_init__(self):
        check_fields(self)


@dataclass
class LoggingConfig:
    """What the run writes between epochs: train-loss lines, TensorBoard events, extra saves of last.pt."""

    log_every: int = option(50, "write a train-loss line to metrics.jsonl every N steps", low=1)
    tensorboard: bool = option(False, "also write metrics.jsonl's figures as TensorBoard events in OUT/tensorboard "
                                      "(needs the tensorboard package: pip install -e '.[tensorboard]')")
    save_every: int = option(0, "also write last.pt every N steps (0: once per epoch)", low=0)

    def __post_init__(self):
        check_fields(self)


@dataclass
class DistributedConfig:
    """How long torchrun's processes wait for each other."""

    dist_timeout: int = option(300, "seconds to wait for torchrun peers before giving up", low=1, high=604800)
    val_timeout: int = option(7200, "torchrun: seconds the other processes wait while rank 0 validates and saves",
                              low=1, high=604800)

    def __post_init__(self):
        check_fields(self)


@dataclass
class ScstConfig:
    """Self-critical fine-tuning: its options apply only with TrainConfig.objective scst."""

    init: str = option("", "--objective scst: the cross-entropy checkpoint to start from (RUN/best.pt)",
                       when={"objective": "scst"})
    scst_samples: int = option(5, "--objective scst: captions sampled per video", low=1, high=100,
                               when={"objective": "scst"})

    def __post_init__(self):
        check_fields(self)


@dataclass
class TrainConfig:
    """A training run. The options of one concern live in a group (``optim``, ``validation``, ``logging``,
    ``distributed``, ``scst``) whose flags are this config's own (``--lr`` sets ``optim.lr``). Build one
    from options named as the flags are with ``TrainConfig.from_dict({"lr": 2e-3, ...})``, and change
    them with :meth:`with_options`."""

    recipe: str = option("paper", "start from a named recipe: paper (these defaults) or small (a few hundred clips "
                                  "or fewer, a CPU: the demo's); --config and flags override it", choices=tuple(RECIPES))
    dataset: str = option("", f"dataset format of --annotations ({', '.join(DATASETS)}); required")
    annotations: str = option("", "dataset root: caption and split files")
    features: str = option("", "HDF5 feature store written by `s2vt extract`")
    out: str = option("runs/s2vt", "run folder: checkpoints, config.json, metrics.jsonl, curves.png")
    train_split: str = option("train", "split to train on")
    val_split: str = option("val", "split to validate on (empty: no validation, the last epoch is kept)")
    epochs: int = option(30, "passes over every training caption", low=1, high=100_000)
    max_steps: int = option(0, "stop after this many optimiser steps (0: no limit)", low=0)
    batch_size: int = option(64, "(video, caption) pairs per optimiser step", low=1, high=16384)
    optim: OptimConfig = nested(OptimConfig, inline=True)
    min_count: int = option(1, "vocabulary: keep words seen at least this often in the training split", low=1)
    validation: ValidationConfig = nested(ValidationConfig, inline=True)
    shuffle_frames: bool = option(False, "the paper's random-frame-order ablation")
    seed: int = option(0, "seed of the data order, frame shuffling and initial weights", low=0, high=INT64_MAX)
    device: str = option("cpu", "cpu, cuda, cuda:1, ...")
    amp: bool = option(False, "mixed precision (CUDA only): a bf16 feature bank, the linear layers under bf16 "
                              "autocast, the LSTMs in fp32 (TF32 allowed); without it every op is IEEE fp32")
    logging: LoggingConfig = nested(LoggingConfig, inline=True)
    distributed: DistributedConfig = nested(DistributedConfig, inline=True)
    objective: str = option("xe", "xe: cross-entropy on the captions; scst: self-critical fine-tuning of --init on "
                            "CIDEr-D (s2vt.training.scst)", choices=("xe", "scst"))
    scst: ScstConfig = nested(ScstConfig, inline=True)
    model: ModelConfig = nested(ModelConfig)
    decoding: DecodeConfig = nested(DecodeConfig)  # the checkpoint's decoding defaults

    def __post_init__(self):
        check_fields(self)
        if self.objective == "scst" and not self.scst.init:
            raise ConfigError("--objective scst fine-tunes a trained model: give it with --init RUN/best.pt")
        if self.validation.patience and not self.val_split:
            raise ConfigError("--patience applies only with a --val-split: early stopping counts validations")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config of ``d``, nested (config.json) or flat (earlier versions, or options named as the flags
        are: :func:`grouped`); a nested config may be given as its object (``"model": ModelConfig(...)``)."""
        removed = sorted(set(d) & REMOVED_OPTIONS) if isinstance(d, dict) else []
        if removed:  # a config.json of an earlier version still loads, and says what it no longer does
            one = len(removed) == 1
            warnings.warn(f"training config: {', '.join(removed)} {'is an option' if one else 'are options'} of an "
                          f"earlier s2vt that no longer {'exists' if one else 'exist'}; ignored", stacklevel=2)
            d = {k: v for k, v in d.items() if k not in REMOVED_OPTIONS}
        return from_dict(cls, grouped(d), "training config")

    def with_options(self, **options) -> "TrainConfig":
        """A copy with ``options`` set, named as the flags are (``lr=`` sets ``optim.lr``)."""
        groups = configs(TrainConfig, inline=True)
        return dataclasses.replace(self, **{k: dataclasses.replace(getattr(self, k), **v)
                                            if k in groups and isinstance(v, dict) else v
                                            for k, v in grouped(options).items()})

    def to_dict(self) -> dict:
        """The config as config.json and a checkpoint record it: every option at the top (the groups are
        this code's, the file's layout is the one earlier versions wrote), model and decoding nested."""
        return flat(asdict(self))

    def resolved(self) -> "TrainConfig":
        """A copy with presets filled in (the lr of the chosen optimiser), every nested config copied."""
        copies = {k: dataclasses.replace(getattr(self, k)) for k in configs(TrainConfig)}
        return dataclasses.replace(self, **{**copies, "optim": self.optim.resolved()})


def grouped(d: dict) -> dict:
    """``d`` with each option of a group moved into it (``lr`` into ``optim``): this reads the flat layout
    of earlier versions (their config.json and the training config of their checkpoints), and options
    named as the flags are. A nested dict, or anything not a dict, comes back as it is."""
    if not isinstance(d, dict):
        return d
    out = dict(d)
    for name, cls in configs(TrainConfig, inline=True).items():
        own = [k for k in out if k in {f.name for f in dataclasses.fields(cls)}]
        if own and isinstance(out.get(name, {}), dict):
            out[name] = {**out.get(name, {}), **{k: out.pop(k) for k in own}}
    return out


def flat(d: dict) -> dict:
    """A training config dict with each group's options at the top, as earlier versions recorded them."""
    groups = configs(TrainConfig, inline=True)
    return {k: v for name, value in d.items()
            for k, v in (value.items() if name in groups and isinstance(value, dict) else [(name, value)])}
