"""Training and evaluation data: features from the HDF5 store paired with captions.

One training sample is one (video, caption) pair, so an epoch covers every caption.
Videos with more than ``max_frames`` sampled frames are subsampled uniformly to
``max_frames``. Annotated videos missing from the store (extraction failed or never
ran) are skipped and counted by the trainer, which refuses to start when
nothing is left.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .store import FeatureStore
from .vocab import Vocab


def cap_frames(n: int, max_frames: int) -> np.ndarray:
    """Indices of at most ``max_frames`` of ``n`` frames, spread uniformly, in order."""
    if not max_frames or n <= max_frames:
        return np.arange(n)
    return np.linspace(0, n - 1, max_frames).round().astype(np.int64)


def available_memory() -> int:
    """Bytes of physical memory not in use (Linux), or a conservative 4 GiB elsewhere."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


class FeatureSource:
    """Per-video (T, D) features from a store, optionally preloaded into memory.

    With ``preload``, the features are read into memory once when they take less than
    half the free memory; otherwise they are read from the HDF5 file on demand (and a
    line says so).
    """

    def __init__(self, store: FeatureStore, vids: Sequence[str], preload: bool = False):
        self.store = store
        self.cache: Dict[str, np.ndarray] = {}
        if preload:
            need, free = store.nbytes(vids), available_memory()
            if need < free // 2:
                self.cache = {v: store.features(v) for v in vids}
                store.close()  # workers re-open lazily if needed
            else:
                print(f"[s2vt] features need {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free: "
                      f"reading {store.path} on demand instead of preloading")

    def __call__(self, vid: str) -> np.ndarray:
        f = self.cache.get(vid)
        return f if f is not None else self.store.features(vid)


class CaptionDataset(Dataset):
    """(video features, caption token ids) pairs; ``set_epoch`` reseeds frame shuffling."""

    def __init__(self, source: FeatureSource, items: Sequence[Tuple[str, List[str]]], vocab: Vocab,
                 max_frames: int = 80, max_words: int = 20, shuffle_frames: bool = False, seed: int = 0):
        self.source, self.max_frames, self.shuffle_frames, self.seed = source, max_frames, shuffle_frames, seed
        self.samples: List[Tuple[str, List[int]]] = []
        for vid, caps in items:
            for c in caps:
                ids = vocab.encode(c, max_words)
                if ids:
                    self.samples.append((vid, ids))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        vid, ids = self.samples[i]
        f = self.source(vid)
        f = f[cap_frames(len(f), self.max_frames)]
        if self.shuffle_frames:  # the paper's random-frame-order ablation; reproducible per (seed, epoch, i)
            rng = np.random.default_rng([self.seed, self.epoch, i])
            f = f[rng.permutation(len(f))]
        return torch.from_numpy(np.ascontiguousarray(f)), ids


def pad_features(feats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """[(T_i, D)] -> zero-padded (B, T, D) and lengths (B,)."""
    lens = torch.tensor([len(f) for f in feats])
    x = torch.zeros(len(feats), int(lens.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        x[i, : len(f)] = f
    return x, lens


def collate_captions(batch):
    """-> feats (B, T, D), feat_lens (B,), words_in (B, L+1), targets (B, L+1), word_lens (B,)."""
    from .vocab import Vocab as V

    feats, caps = zip(*batch)
    B = len(batch)
    x, feat_lens = pad_features(feats)
    L1 = max(len(c) for c in caps) + 1
    words_in = torch.zeros(B, L1, dtype=torch.long)
    targets = torch.zeros(B, L1, dtype=torch.long)
    for i, c in enumerate(caps):
        c = torch.tensor(c)
        words_in[i, 0] = V.bos
        words_in[i, 1: len(c) + 1] = c
        targets[i, : len(c)] = c
        targets[i, len(c)] = V.eos
    word_lens = torch.tensor([len(c) + 1 for c in caps])
    return x, feat_lens, words_in, targets, word_lens


class VideoDataset(Dataset):
    """One sample per video, for captioning: (vid, [features from each source])."""

    def __init__(self, sources: Sequence[FeatureSource], vids: Sequence[str], max_frames: Sequence[int]):
        self.sources, self.vids, self.max_frames = list(sources), list(vids), list(max_frames)

    def __len__(self):
        return len(self.vids)

    def __getitem__(self, i):
        out = []
        for source, m in zip(self.sources, self.max_frames):
            f = source(self.vids[i])
            out.append(torch.from_numpy(np.ascontiguousarray(f[cap_frames(len(f), m)])))
        return self.vids[i], out


def collate_videos(batch):
    """-> vids, [(feats (B, T, D), lens (B,)) per source]."""
    vids, feats = zip(*batch)
    return list(vids), [pad_features([f[j] for f in feats]) for j in range(len(feats[0]))]


class EpochSampler(Sampler):
    """A seeded permutation per epoch, split across ranks, resumable mid-epoch.

    Global batch k holds permutation[k*B:(k+1)*B]; rank r takes its every world-th item,
    so a run on N processes sees the same global batches as a run on one.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1, drop_last: bool = False):
        self.n, self.B, self.seed, self.rank, self.world, self.drop_last = n, batch_size, seed, rank, world, drop_last
        self.epoch, self.start_batch = 0, 0

    def batches_per_epoch(self) -> int:
        return self.n // self.B if self.drop_last else math.ceil(self.n / self.B)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[List[int]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        for k in range(self.start_batch, self.batches_per_epoch()):
            batch = perm[k * self.B:(k + 1) * self.B]
            yield batch[self.rank::self.world]

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch
