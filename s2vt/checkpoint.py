"""Checkpoints: one typed record that rebuilds everything, and the only code that reads one.

A :class:`Checkpoint` holds the model config and weights, the vocabulary, the feature
signature of the store it was trained on, the decoding defaults, the resolved training
config, the loop state, optimiser/scheduler state and RNG state. On disk it is a dict of
tensors and plain types, written atomically (``fileio.atomic_write``) and read with
``torch.load(weights_only=True)``, so a file crafted to run code when unpickled is refused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .config import ConfigError, from_dict
from .decoding import DecodeConfig
from .errors import S2VTError
from .fileio import atomic_write
from .model import DECODERS, ModelConfig
from .state_dicts import load_exactly
from .vocab import Vocab

FORMAT = "s2vt-checkpoint"
VERSION = 2
_REQUIRED = ("model", "model_config", "vocab", "feature_signature")


class CheckpointError(S2VTError):
    """A file that is not a usable s2vt checkpoint."""


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
        from .decoders import build_model

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
        path = Path(path)
        d = _read(path, map_location)
        missing = [k for k in _REQUIRED if k not in d]
        if d.get("format") != FORMAT or missing:
            raise CheckpointError(f"{path} is not an s2vt checkpoint"
                                  + (f" (missing {', '.join(missing)})" if missing else " (no format tag)"))
        decoder = d["model_config"].get("decoder", "s2vt") if isinstance(d["model_config"], dict) else "s2vt"
        if decoder not in DECODERS:
            raise CheckpointError(f"{path} was trained with the decoder {decoder!r}, which this version of s2vt does "
                                  f"not know (known: {', '.join(DECODERS)}); use the s2vt version that trained it")
        try:
            mc = from_dict(ModelConfig, d["model_config"], "model_config")
            dec = from_dict(DecodeConfig, d.get("decoding") or {}, "decoding")
            vocab = Vocab.from_list(d["vocab"])
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: malformed checkpoint: {e}")
        if len(vocab) != mc.vocab_size:
            raise CheckpointError(f"{path}: vocabulary of {len(vocab)} words but the model expects {mc.vocab_size}")
        if not isinstance(d["feature_signature"], dict):
            raise CheckpointError(f"{path}: malformed checkpoint: feature_signature is not a dict")
        _check_weights(path, d["model"])
        return cls(mc, d["model"], vocab, d["feature_signature"], dec, d.get("config") or {}, d.get("state") or {},
                   d.get("optimizer"), d.get("scheduler"), d.get("rng"), str(path))


def _check_weights(path: Path, state) -> None:
    """Tensors only, and finite ones: a damaged file can decode to NaN weights, which caption every
    video with an empty sentence (training never saves a non-finite model)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: malformed checkpoint: model is not a dict of tensors")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} is damaged: non-finite (NaN or inf) weights in {', '.join(bad[:3])}"
                              + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))


def _read(path: Path, map_location) -> Dict[str, Any]:
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file in it (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        d = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied")
    except Exception as e:  # includes pickle payloads that weights_only refuses
        raise CheckpointError(f"refusing to load {path}: not a readable plain-tensor s2vt checkpoint (damaged, "
                              f"truncated, or holding objects that would run code when loaded; {type(e).__name__})")
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} is not an s2vt checkpoint (holds a {type(d).__name__})")
    return d


def load(path, map_location="cpu") -> Checkpoint:
    return Checkpoint.load(path, map_location)
