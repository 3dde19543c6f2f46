"""Checkpoints: one dict of tensors and plain types that rebuilds everything.

Written atomically (temp file, fsync, rename), so a crash mid-write leaves the previous
file intact; read with ``torch.load(weights_only=True)``, so a file crafted to run code
when unpickled is refused.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import S2VTError


def save(obj: dict, path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise S2VTError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # includes pickle payloads that weights_only refuses
        raise S2VTError(f"refusing to load {path}: not a plain-tensor checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:300]})")
    if not isinstance(ck, dict) or "model" not in ck or "config" not in ck:
        raise S2VTError(f"{path} is not an s2vt checkpoint (missing 'model' or 'config')")
    return ck


def build_model(ck: dict):
    """Rebuild the S2VT model and vocabulary from a checkpoint alone."""
    from .model import ModelConfig, S2VT
    from .vocab import Vocab

    model = S2VT(ModelConfig(**ck["config"]["model"]))
    model.load_state_dict(ck["model"])
    model.eval()
    return model, Vocab.from_list(ck["vocab"])
