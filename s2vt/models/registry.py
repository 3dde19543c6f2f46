"""The decoders a checkpoint may name (``ModelConfig.decoder``) and the one place that builds them."""
from __future__ import annotations

from torch import nn

from s2vt.models.attention import AttentionS2VT
from s2vt.models.s2vt import DECODERS, ModelConfig, S2VT

MODELS = {"s2vt": S2VT, "attention": AttentionS2VT}
assert tuple(MODELS) == DECODERS, "every decoder name has a model class"


def build_model(cfg: ModelConfig) -> nn.Module:
    """The untrained model ``cfg.decoder`` names."""
    return MODELS[cfg.decoder](cfg)
