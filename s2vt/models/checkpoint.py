"""Checkpoints: one typed record that rebuilds everything, and the only code that reads one.

A :class:`Checkpoint` holds the model config and weights, the vocabulary, the feature
signature of the store it was trained on, the decoding defaults, the resolved training
config, the loop state, optimiser/scheduler state and RNG state. On disk it is a dict of
tensors and plain types, written atomically (``fileio.atomic_write``) and read with
``torch.load(weights_only=True)``, so a file crafted to run code when unpickled is refused.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from s2vt.runtime.config import check_fields, from_dict, option
from s2vt.runtime.errors import ConfigError, FieldError, S2VTError
from s2vt.decoding.search import DecodeConfig
from s2vt.runtime.fileio import atomic_write
from s2vt.runtime.inputs import InputError, check_input_file
from s2vt.models.s2vt import DECODERS, ModelConfig
from s2vt.features.signature import is_imported, signature_problem
from s2vt.runtime.state_dicts import load_exactly, load_tensors, mismatch
from s2vt.data.vocab import Vocab

FORMAT = "s2vt-checkpoint"
VERSION = 2


class CheckpointError(S2VTError):
    """A file that is not a usable s2vt checkpoint."""


@dataclass
class LoopState:
    """Where a training run is: the checkpoint's ``state``, all a resume needs besides the weights."""

    step: int = option(0, "optimiser steps taken", low=0)
    epoch: int = option(0, "epochs finished", low=0)
    batch: int = option(0, "batches of the current epoch finished", low=0)
    best: float = option(-math.inf, "best validation score (higher is better)", infinite=True)
    best_epoch: int = option(-1, "epoch of the best validation score", low=-1)
    stale: int = option(0, "validations since the last improvement", low=0)

    def __post_init__(self):
        check_fields(self)


@dataclass
class Checkpoint:
    model_config: ModelConfig
    weights: Dict[str, torch.Tensor]
    vocab: Vocab
    feature_signature: dict
    decoding: DecodeConfig = field(default_factory=DecodeConfig)
    train_config: dict = field(default_factory=dict)   # the resolved TrainConfig, as written to config.json
    state: dict = field(default_factory=dict)          # loop state: step, epoch, batch, best, ...
    optimizer: Optional[dict] = None
    scheduler: Optional[dict] = None
    rng: Optional[dict] = None
    source: str = field(default="", compare=False)   # the file it was read from, for messages

    @property
    def max_frames(self) -> int:
        return self.model_config.max_frames

    def build_model(self, device="cpu") -> torch.nn.Module:
        """The model (the recorded decoder) in eval mode on ``device``, weights loaded."""
        from s2vt.models.registry import build_model

        model = build_model(self.model_config)
        load_exactly(model, self.weights, CheckpointError,
                     f"{self.source or 'the checkpoint'}: its weights do not fit its recorded model config")
        return model.to(device).eval()

    def save(self, path) -> Path:
        d = {"format": FORMAT, "version": VERSION, "model": self.weights, "model_config": asdict(self.model_config),
             "vocab": self.vocab.to_list(), "feature_signature": self.feature_signature,
             "decoding": asdict(self.decoding), "config": self.train_config, "state": self.state,
             "optimizer": self.optimizer, "scheduler": self.scheduler, "rng": self.rng}
        return atomic_write(path, lambda f: torch.save(d, f))

    @classmethod
    def load(cls, path, map_location="cpu") -> "Checkpoint":
        """The checkpoint at ``path``, every field checked as :data:`FIELDS` declares; CheckpointError
        naming the file and the field otherwise."""
        path = Path(path)
        d = _read(path, map_location)
        missing = [k for k, f in FIELDS.items() if f.required and k not in d]
        if d.get("format") != FORMAT or missing:
            raise CheckpointError(f"{path} is not an s2vt checkpoint"
                                  + (f" (missing {', '.join(missing)})" if missing else " (no format tag)"))
        decoder = d["model_config"].get("decoder", "s2vt") if isinstance(d["model_config"], dict) else "s2vt"
        if decoder not in DECODERS:
            raise CheckpointError(f"{path} was trained with the decoder {decoder!r}, which this version of s2vt does "
                                  f"not know (known: {', '.join(DECODERS)}); use the s2vt version that trained it")
        got: Dict[str, Any] = {}
        for key, f in FIELDS.items():  # in order: a field's parser and check see the fields read before it
            got[key] = f.read(path, key, d.get(key), got)
        return cls(got["model_config"], got["model"], got["vocab"], got["feature_signature"], got["decoding"],
                   got["config"], got["state"], got["optimizer"], got["scheduler"], got["rng"], str(path))


@dataclass(frozen=True)
class Field:
    """How one field of a checkpoint file is read: whether it must be there, the type it is stored as,
    whether it may hold tensors (else plain data only), how it is parsed (``parse(value, got)``, ``got``
    the fields read before it; its errors name the field) and what else it must satisfy
    (``problem(value, got)``: why not, or None). An absent field is ``empty``'s value."""

    required: bool = False
    kind: type = dict
    tensors: bool = False
    parse: Optional[Callable[[Any, dict], Any]] = None
    problem: Optional[Callable[[Any, dict], Optional[str]]] = None
    empty: Callable[[], Any] = dict

    def read(self, path: Path, key: str, value, got: dict):
        if value is None:
            value = self.empty()
            if value is None:
                return None
        if not isinstance(value, self.kind):
            raise _malformed(path, key, f"is a {type(value).__name__}, not a {self.kind.__name__}")
        problem = None if self.tensors else _plain(value)
        if not problem and self.parse is not None:
            try:
                value = self.parse(value, got)
            except (ConfigError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: malformed checkpoint: field {key!r}: {e}") from None
        problem = problem or (self.problem(value, got) if self.problem else None)
        if problem:
            raise _malformed(path, key, problem)
        return value


def _vocab(words, got: dict) -> Vocab:
    vocab, size = Vocab.from_list(words), got["model_config"].vocab_size
    if len(vocab) != size:
        raise ValueError(f"{len(vocab)} words but the model expects {size} (model_config.vocab_size)")
    return vocab


def _state(state: dict, got: dict) -> dict:
    try:
        from_dict(LoopState, state, "loop state")
    except FieldError as e:
        raise ValueError(e.about(f"[{e.name!r}]")) from None
    return state


FIELDS: Dict[str, Field] = {  # in the order they are read: later checks may use earlier fields
    "model_config": Field(required=True, parse=lambda v, got: from_dict(ModelConfig, v, "model_config")),
    "vocab": Field(required=True, kind=list, parse=_vocab),
    "model": Field(required=True, tensors=True, problem=lambda v, got: _weights_problem(v, got["model_config"])),
    "feature_signature": Field(required=True, problem=lambda v, got: _signature_problem(v, got["model_config"])),
    "decoding": Field(parse=lambda v, got: from_dict(DecodeConfig, v, "decoding")),
    "config": Field(),
    "state": Field(parse=_state),
    "optimizer": Field(tensors=True, empty=lambda: None,
                       problem=lambda v, got: _optimizer_problem(v, [tuple(t.shape) for t in got["model"].values()])),
    "scheduler": Field(empty=lambda: None, problem=lambda v, got: _scheduler_problem(v)),
    "rng": Field(tensors=True, empty=lambda: None, problem=lambda v, got: _rng_problem(v)),
}


def _malformed(path: Path, key: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: malformed checkpoint: field {key!r} {problem}")


_PLAIN = (str, int, float, bool, type(None))


def _plain(value, depth: int = 0) -> Optional[str]:
    """Why ``value`` is not plain data (strings, numbers, lists and string-keyed dicts, 16 levels at most)."""
    if depth > 16:
        return "nests deeper than 16 levels"
    if isinstance(value, _PLAIN):
        return None
    if isinstance(value, (list, tuple)):
        return next((p for p in (_plain(v, depth + 1) for v in value) if p), None)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return "has a key that is not a string"
        return next((f"[{k!r}] {p}" if depth == 0 else p for k, p in
                     ((k, _plain(v, depth + 1)) for k, v in value.items()) if p), None)
    return f"holds a {type(value).__name__} where plain data (strings, numbers, lists, dicts) belongs"


def _signature_problem(sig: dict, mc: ModelConfig) -> Optional[str]:
    """The feature signature: every key caption / evaluate / resume reads, and the model's feature size."""
    problem = signature_problem(sig)
    if problem:
        return f"({problem}; see the signature table of features/README.md)"
    if sig["dim"] != mc.feat_dim:
        return f"says features of dim {sig['dim']}, but the model reads {mc.feat_dim} (model_config.feat_dim)"
    if not is_imported(sig):  # the settings that recompute the features (s2vt caption) must be ones extraction takes
        from s2vt.features.config import ExtractConfig

        try:
            ExtractConfig.from_signature(sig)
        except S2VTError as e:
            return f"({e})"
    return None


def _weights_problem(state: dict, mc: ModelConfig) -> Optional[str]:
    """Tensors only, fitting the recorded model (names, shapes, floating point: checked on a model
    built on the meta device, which allocates nothing), and finite ones: a damaged file can decode to
    NaN weights, which caption every video with an empty sentence (training never saves a non-finite model)."""
    from s2vt.models.registry import build_model

    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) and v.layout == torch.strided
               for k, v in state.items()):
        return "is not a dict of tensors (dense tensors named by strings)"
    with torch.device("meta"):
        why = mismatch(build_model(mc), state)
    if why:
        return f"(its weights do not fit its recorded model config): {why}"
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        return (f"is damaged: non-finite (NaN or inf) weights in {', '.join(bad[:3])}"
                + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))
    return None


def _rng_problem(rng: dict) -> Optional[str]:
    """Why ``rng`` is not the random-generator states a resume restores (None: it is)."""
    want = torch.get_rng_state()
    for k in ("torch", "cuda"):
        v = rng.get(k)
        if (v is not None or k == "torch" and rng) and not (isinstance(v, torch.Tensor) and v.dtype == torch.uint8
                                                    and (k == "cuda" or v.shape == want.shape)):
            return f"[{k!r}] is not a random-generator state (a uint8 tensor)"
    return None


def _scheduler_problem(sch) -> Optional[str]:
    """Why ``sch`` is not a learning-rate scheduler's state (None: it is, or it is absent)."""
    problem = _plain({k: v for k, v in sch.items() if k != "lr_lambdas"})
    if problem:
        return problem
    numbers = [sch.get("last_epoch", 0)] + [x for k in ("base_lrs", "_last_lr") for x in sch.get(k) or []]
    if not isinstance(sch.get("last_epoch", 0), int) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < 1e300 for x in numbers):
        return "has a last_epoch or learning rates that are not finite numbers"
    return None


def _optimizer_problem(opt, shapes) -> Optional[str]:
    """Why ``opt`` is not an optimiser state for parameters of ``shapes`` (None: it is, or it is absent)."""
    groups, state = opt.get("param_groups"), opt.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        return "has no 'state' dict and 'param_groups' list of {params: [...]}"
    ids = [i for g in groups for i in g["params"]]
    if sorted(ids) != list(range(len(shapes))) or any(isinstance(i, bool) for i in ids):
        return f"covers parameters {ids[:5]}{'...' if len(ids) > 5 else ''}, not the model's {len(shapes)}"
    problem = _plain([{k: v for k, v in g.items() if k != "params"} for g in groups])
    if problem:
        return f"param_groups {problem}"
    for i, st in state.items():
        if not isinstance(i, int) or not 0 <= i < len(shapes) or not isinstance(st, dict):
            return f"has state for {i!r}, which is not one of its parameters"
        for k, v in st.items():
            ok = (isinstance(v, torch.Tensor) and v.is_floating_point() and tuple(v.shape) in ((), shapes[i])) or (
                isinstance(v, (int, float)) and not isinstance(v, bool))
            if not ok:
                return f"state[{i}][{k!r}] does not fit parameter {i} of shape {shapes[i]}"
    return None


def _read(path: Path, map_location) -> Dict[str, Any]:
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file in it (e.g. {path / 'best.pt'})")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:  # a FIFO, socket or device: refused by name, not read (a FIFO would block)
        check_input_file(path, "checkpoint", max_bytes=None)
    except InputError as e:
        raise CheckpointError(str(e))
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        d = load_tensors(path, map_location)
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied")
    except Exception as e:  # includes pickle payloads that weights_only refuses
        raise CheckpointError(f"refusing to load {path}: not a readable plain-tensor s2vt checkpoint (damaged, "
                              f"truncated, or holding objects that would run code when loaded; {type(e).__name__})")
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} is not an s2vt checkpoint (holds a {type(d).__name__})")
    return d


def differences(was: dict, now: dict, skip=(), as_flags: bool = False) -> List[str]:
    """"name: was -> now" for each key of ``now`` whose value differs from ``was``'s (``as_flags``: the
    key named as its command-line flag): how a run refuses a checkpoint that does not fit it."""
    name = (lambda k: "--" + k.replace("_", "-")) if as_flags else str
    return [f"{name(k)}: {was.get(k)!r} -> {now[k]!r}" for k in now if k not in skip and was.get(k) != now[k]]


def vocab_difference(was: Vocab, now: Vocab) -> Optional[str]:
    """Why two vocabularies differ, or None when they are one."""
    if was == now:
        return None
    return (f"the vocabulary differs ({len(was)} -> {len(now)} words): the models were trained on other captions "
            "or another --min-count")
