"""A video's stored features as a model reads them: at most ``max_frames`` frames spread
uniformly (:func:`cap_frames`, the paper's cap of 80 encoder steps), read on demand from a store,
and padded into a batch. Training's feature bank and every captioner share these."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch

from s2vt.features.store import FeatureStore


def cap_frames(n: int, max_frames: int) -> np.ndarray:
    """Indices of at most ``max_frames`` of ``n`` frames, spread uniformly, in order."""
    if not max_frames or n <= max_frames:
        return np.arange(n)
    return np.linspace(0, n - 1, max_frames).round().astype(np.int64)


class StoreFeatures:
    """Per-video (T, D) features read from a store on demand, capped to ``max_frames``."""

    def __init__(self, store: FeatureStore, max_frames: int = 0):
        self.store, self.max_frames = store, max_frames

    def __contains__(self, vid: str) -> bool:
        return vid in self.store

    def __call__(self, vid: str) -> torch.Tensor:
        f = self.store.features(vid)
        return torch.from_numpy(np.ascontiguousarray(f[cap_frames(len(f), self.max_frames)]))


def pad_features(feats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """[(T_i, D)] -> zero-padded (B, T, D) and lengths (B,)."""
    lens = torch.tensor([len(f) for f in feats])
    x = feats[0].new_zeros(len(feats), int(lens.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        x[i, : len(f)] = f
    return x, lens
