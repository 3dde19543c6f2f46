"""Training batches as index arithmetic over a few tensors: no per-sample Python per step.

One training sample is one (video, caption) pair, so an epoch covers every caption.

* :class:`CaptionTable` tokenises every caption once: ``ids`` (N, Lmax) padded with <pad>,
  ``lengths`` (N,) and the video row of each sample (N,).
* :class:`FeatureBank` holds every video's frames (capped to ``max_frames`` with
  :func:`cap_frames`) back to back in one flat (F + 1, D) tensor, with per-video
  ``offsets``/``lengths``; the last row is zeros and serves every padded position, so
  building (B, T, D) is one gather.
* :class:`BatchStream` turns the sampler's sample order into :class:`Batch` es. When the
  bank lives on the training device (it fits) batches are built there by gathers: the
  epoch's order is copied once per epoch, and the only host work per step is reading two
  small numpy arrays for the shapes. When it does not fit, the bank stays in host memory,
  each batch is gathered into a reused pinned buffer and the next one is copied on a side
  stream while the current one computes. When even host memory is short, each batch reads
  its videos from the HDF5 store (the slow path, said once).

Within a batch, samples are ordered by decreasing sequence length (frames + words + 1),
so packing for the fused LSTM calls needs no permutation. Frame shuffling for the
paper's random-order ablation is a permutation per (seed, epoch, sample index), the same
on every path (the tests compare every path with a plain per-sample version).
"""
from __future__ import annotations

import math
import os
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from s2vt.data.vocab import Vocab
from s2vt.features.frames import cap_frames
from s2vt.features.store import FeatureStore
from s2vt.runtime.devices import local_world_size, normalize, same
from s2vt.runtime.errors import ConfigError, S2VTError


def frame_permutation(seed: int, epoch: int, sample: int, n: int) -> np.ndarray:
    """The random-frame-order ablation's permutation of ``n`` frames for one sample."""
    return np.random.default_rng([seed, epoch, sample]).permutation(n)


def available_memory() -> int:
    """Bytes of physical memory not in use (Linux), or a conservative 4 GiB elsewhere."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def num_frames(store: FeatureStore, vid: str) -> int:
    """Frames stored for ``vid`` (from the array's shape; reads no data)."""
    return store.nbytes([vid]) // (4 * int(store.signature["dim"]))


def capped_lengths(store: FeatureStore, vids: Sequence[str], max_frames: int) -> np.ndarray:
    """(V,) frames each video has after :func:`cap_frames` (from shapes; reads no data)."""
    return np.asarray([min(num_frames(store, v), max_frames or 1 << 62) for v in vids], dtype=np.int64)


class Batch(NamedTuple):
    """feats (B, T, D) and words_in/targets (B, L+1) on the device; feat_lens/word_lens (B,)
    on the CPU (packing needs them there) and their device copies in ``device_lens``; ``rows`` (B,)
    on the CPU: each video's reward row, for an objective that scores its own captions (SCST)."""

    feats: torch.Tensor
    feat_lens: torch.Tensor
    words_in: torch.Tensor
    targets: torch.Tensor
    word_lens: torch.Tensor
    device_lens: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    rows: Optional[torch.Tensor] = None

    def with_rows(self, rows: torch.Tensor) -> "Batch":
        """This batch with each video's reward row (``_replace`` cannot: ``len`` is the batch's size)."""
        return Batch(self.feats, self.feat_lens, self.words_in, self.targets, self.word_lens, self.device_lens, rows)

    def __len__(self) -> int:
        return self.feats.shape[0]


class CaptionTable:
    """Every (video, caption) training sample, tokenised once.

    ``video_row`` (N,) indexes ``vids`` (default: the items' videos in order; pass the
    bank's video list to share one bank between tables); ``ids`` (N, Lmax) int64 word ids padded with 0;
    ``lengths`` (N,) words per caption (captions with no known word are dropped).
    """

    def __init__(self, items: Sequence[Tuple[str, List[str]]], vocab: Vocab, max_words: int = 20,
                 vids: Optional[Sequence[str]] = None):
        self.vids = list(vids) if vids is not None else list(dict.fromkeys(v for v, _ in items))
        row_of = {v: i for i, v in enumerate(self.vids)}
        rows, caps = [], []
        for vid, captions in items:
            r = row_of[vid]
            for c in captions:
                ids = vocab.encode(c, max_words)
                if ids:
                    rows.append(r)
                    caps.append(ids)
        self.video_row = np.asarray(rows, dtype=np.int64)
        self.lengths = np.asarray([len(c) for c in caps], dtype=np.int64)
        self.ids = np.zeros((len(caps), int(self.lengths.max(initial=0))), dtype=np.int64)
        for i, c in enumerate(caps):
            self.ids[i, : len(c)] = c

    def __len__(self) -> int:
        return len(self.lengths)


class FeatureBank:
    """Capped frames of ``vids`` in one flat tensor: ``feats`` (F + 1, D), last row zeros.

    ``offsets``/``lengths`` (V,) numpy, with device copies ``offsets_t``/``lengths_t``.
    """

    def __init__(self, feats: torch.Tensor, offsets: np.ndarray, lengths: np.ndarray):
        self.feats, self.offsets, self.lengths = feats, offsets, lengths
        self.zero_row = feats.shape[0] - 1
        self.offsets_t = torch.from_numpy(offsets).to(feats.device)
        self.lengths_t = torch.from_numpy(lengths).to(feats.device)

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def source(self, vids: Sequence[str]):
        """A feature source over the bank: ``vid -> (T, D)`` view of its frames (``vids``: the bank's rows)."""
        row = {v: i for i, v in enumerate(vids)}

        def frames(vid: str) -> torch.Tensor:
            r = row[vid]
            return self.feats[self.offsets[r]: self.offsets[r] + self.lengths[r]].float()

        return frames

    @staticmethod
    def nbytes(store: FeatureStore, vids: Sequence[str], max_frames: int, dtype: torch.dtype,
               lengths: Optional[np.ndarray] = None) -> int:
        """Bytes of the bank; ``lengths``: :func:`capped_lengths` when already known."""
        lengths = capped_lengths(store, vids, max_frames) if lengths is None else lengths
        return int(lengths.sum() + 1) * int(store.signature["dim"]) * torch.empty((), dtype=dtype).element_size()

    @classmethod
    def build(cls, store: FeatureStore, vids: Sequence[str], max_frames: int, device="cpu",
              dtype: torch.dtype = torch.float32, lengths: Optional[np.ndarray] = None) -> "FeatureBank":
        """Read every video once (in order) straight into a tensor on ``device``.

        On a GPU the bank is allocated there and filled one video at a time, so host memory
        holds one video's frames at most (never the whole bank, on any rank)."""
        lengths = capped_lengths(store, vids, max_frames) if lengths is None else lengths
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        total, dim = int(lengths.sum()), int(store.signature["dim"])
        feats = torch.empty(total + 1, dim, dtype=dtype, device=normalize(device))
        feats[total].zero_()
        for v, off, n in zip(vids, offsets, lengths):
            f = store.features(v)
            feats[off: off + n].copy_(torch.from_numpy(np.ascontiguousarray(f[cap_frames(len(f), max_frames)])))
        return cls(feats, offsets, lengths)


def place_bank(need: int, device: torch.device, headroom: int = 4 << 30) -> str:
    """Where a bank of ``need`` bytes goes: ``device``, ``host`` or ``store`` (read per batch).

    On a GPU: there when it fits beside ``headroom`` bytes of its free memory. In host memory
    when it takes under half the free memory left to this process: under torchrun every
    process of the machine keeps its own bank, so the half is shared by ``LOCAL_WORLD_SIZE``."""
    device = normalize(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need < free - headroom:
            return "device"
    if need < available_memory() // (2 * local_world_size()):
        return "device" if device.type == "cpu" else "host"
    return "store"


class BatchStream:
    """Batches of one epoch, in the sampler's order, from a bank (or the store when none fits).

    ``bank`` None: read each batch's videos from ``store`` (per-sample, the slow path).
    """

    def __init__(self, table: CaptionTable, bank: Optional[FeatureBank], device, max_frames: int,
                 shuffle_frames: bool = False, seed: int = 0, store: Optional[FeatureStore] = None,
                 dtype: torch.dtype = torch.float32):
        self.table, self.bank, self.device = table, bank, normalize(device)
        self.max_frames, self.shuffle, self.seed, self.store, self.dtype = max_frames, shuffle_frames, seed, store, dtype
        if bank is None and store is None:
            raise S2VTError("a batch stream needs a feature bank or a feature store")
        self.on_device = bank is not None and same(bank.device, self.device)
        self._ids_t = torch.from_numpy(table.ids).to(self.device) if self.on_device else None
        self._rows_t = torch.from_numpy(table.video_row).to(self.device) if self.on_device else None
        self._lens_t = torch.from_numpy(table.lengths).to(self.device) if self.on_device else None
        self._frame_lens = bank.lengths if bank is not None else capped_lengths(store, table.vids, max_frames)

    # ---------------------------------------------------------------- order
    def sort_batch(self, idx: Sequence[int]) -> np.ndarray:
        """Sample indices of one batch ordered by decreasing sequence length (stable)."""
        idx = np.asarray(idx, dtype=np.int64)
        seq = self._frame_lens[self.table.video_row[idx]] + self.table.lengths[idx]
        return idx[np.argsort(-seq, kind="stable")]

    def epoch(self, batches: Sequence[Sequence[int]], epoch: int) -> Iterator[Batch]:
        """Yield one :class:`Batch` per list of sample indices, for ``epoch`` (frame shuffling)."""
        order = [self.sort_batch(b) for b in batches]
        if self.on_device:
            yield from self._device_batches(order, epoch)
        elif self.device.type == "cuda":
            yield from self._uploaded(order, epoch, CudaCopies(self.device))
        else:
            yield from (self.host_batch(idx, epoch) for idx in order)

    # ---------------------------------------------------------------- shapes and words
    def _shape(self, idx: np.ndarray):
        flen = self._frame_lens[self.table.video_row[idx]]
        clen = self.table.lengths[idx]
        return flen, clen, int(flen.max()), int(clen.max())

    def _positions(self, idx: np.ndarray, flen: np.ndarray, T: int, epoch: int) -> np.ndarray:
        """(B, T) row of the bank for each frame slot; padding points at the zero row."""
        steps = np.broadcast_to(np.arange(T), (len(idx), T))
        if self.shuffle:
            steps = steps.copy()
            for b, (i, n) in enumerate(zip(idx, flen)):
                steps[b, :n] = frame_permutation(self.seed, epoch, int(i), int(n))
        pos = self.bank.offsets[self.table.video_row[idx]][:, None] + steps
        return np.where(np.arange(T)[None, :] < flen[:, None], pos, self.bank.zero_row)

    def _device_batches(self, order: List[np.ndarray], epoch: int) -> Iterator[Batch]:
        flat = torch.from_numpy(np.concatenate(order) if order else np.zeros(0, np.int64)).to(self.device)
        start = 0
        for idx in order:
            B = len(idx)
            flen, clen, T, L = self._shape(idx)
            sel = flat[start: start + B]  # (B,) on the device: no copy per step
            start += B
            rows = self._rows_t[sel]
            fl, cl = self.bank.lengths_t[rows], self._lens_t[sel]
            if self.shuffle:
                pos = torch.from_numpy(self._positions(idx, flen, T, epoch))
                pos = (pos.pin_memory() if self.device.type == "cuda" else pos).to(self.device, non_blocking=True)
            else:
                ar = torch.arange(T, device=self.device)
                pos = torch.where(ar[None] < fl[:, None], self.bank.offsets_t[rows][:, None] + ar[None],
                                  self.bank.zero_row)                      # (B, T)
            feats = self.bank.feats[pos]                                    # (B, T, D)
            ids = self._ids_t[sel, :L]                                      # (B, L)
            words_in = torch.cat([ids.new_full((B, 1), Vocab.bos), ids], 1)  # (B, L+1)
            targets = torch.cat([ids, ids.new_zeros(B, 1)], 1).scatter_(1, cl[:, None], Vocab.eos)
            yield Batch(feats, torch.from_numpy(flen), words_in, targets, torch.from_numpy(clen + 1), (fl, cl + 1))

    def _words(self, idx: np.ndarray, clen: np.ndarray, L: int) -> Tuple[np.ndarray, np.ndarray]:
        B = len(idx)
        ids = self.table.ids[idx, :L]
        words_in = np.concatenate([np.full((B, 1), Vocab.bos), ids], 1)
        targets = np.concatenate([ids, np.zeros((B, 1), np.int64)], 1)
        targets[np.arange(B), clen] = Vocab.eos
        return words_in, targets

    def host_batch(self, idx: np.ndarray, epoch: int, alloc=None) -> Batch:
        """One batch built in host memory (from the host bank, or from the store).

        ``alloc(numel, dtype)``: where the (B, T, D) frames are written (a reused pinned buffer
        on the way to a GPU); default: a new tensor."""
        flen, clen, T, L = self._shape(idx)
        B = len(idx)
        dim = int(self.bank.feats.shape[1]) if self.bank is not None else int(self.store.signature["dim"])
        dtype = self.bank.feats.dtype if self.bank is not None else self.dtype
        feats = (alloc(B * T * dim, dtype) if alloc is not None else torch.empty(B * T * dim, dtype=dtype)).view(B, T, dim)
        if self.bank is not None:
            pos = torch.from_numpy(self._positions(idx, flen, T, epoch)).view(-1)
            torch.index_select(self.bank.feats, 0, pos, out=feats.view(B * T, dim))  # gathered in place
        else:
            feats.zero_()
            for b, i in enumerate(idx):
                feats[b, : flen[b]] = torch.from_numpy(self._store_frames(int(i), epoch))
        words_in, targets = self._words(idx, clen, L)
        return Batch(feats, torch.from_numpy(flen), torch.from_numpy(words_in), torch.from_numpy(targets),
                     torch.from_numpy(clen + 1))

    def _uploaded(self, order: List[np.ndarray], epoch: int, copies: "CudaCopies") -> Iterator[Batch]:
        """Host batches copied to the GPU one ahead of the compute.

        Batch k's frames are gathered straight into pinned buffer k % 2 (the bank itself stays
        in pageable memory: pinning it would lock memory no copy reads from) and copied on a
        side stream; the compute waits on that copy's own event, so the copy of batch k + 1
        overlaps batch k. A buffer is refilled once its previous copy has finished."""
        dim = int(self.bank.feats.shape[1]) if self.bank is not None else int(self.store.signature["dim"])
        largest = max((len(idx) * int(self._frame_lens[self.table.video_row[idx]].max()) for idx in order), default=0)
        slots: List[Optional[torch.Tensor]] = [None, None]  # each sized for the epoch's largest batch
        copied: List[object] = [None, None]

        def alloc_for(k):
            def alloc(numel: int, dtype: torch.dtype) -> torch.Tensor:
                if copied[k] is not None:
                    copied[k].synchronize()  # batch k - 2's copy: long done
                if slots[k] is None:
                    slots[k] = copies.pinned(largest * dim, dtype)
                return slots[k][:numel]
            return alloc

        pending = None
        for k, idx in enumerate(order):
            b = self.host_batch(idx, epoch, alloc_for(k % 2))
            moved, event = copies.upload([b.feats, copies.pin(b.words_in), copies.pin(b.targets),
                                          copies.pin(b.feat_lens), copies.pin(b.word_lens)])
            copied[k % 2] = event
            nxt = (Batch(moved[0], b.feat_lens, moved[1], moved[2], b.word_lens, (moved[3], moved[4])), event)
            if pending is not None:
                yield copies.ready(*pending)
            pending = nxt
        if pending is not None:
            yield copies.ready(*pending)

    def _store_frames(self, i: int, epoch: int) -> np.ndarray:
        f = self.store.features(self.table.vids[self.table.video_row[i]])
        f = f[cap_frames(len(f), self.max_frames)]
        return f[frame_permutation(self.seed, epoch, i, len(f))] if self.shuffle else f


class CudaCopies:
    """The CUDA calls of the host path in one place: pinned buffers, copies on a side stream,
    and the compute stream's wait for one copy (tests put a recorder in its place)."""

    def __init__(self, device: torch.device):
        self.device = normalize(device)
        self.side = torch.cuda.Stream(self.device)

    def pinned(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(numel, dtype=dtype, pin_memory=True)

    def pin(self, t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory()  # small tensors: from the caching host allocator

    def upload(self, tensors: Sequence[torch.Tensor]):
        """Non-blocking copies of pinned ``tensors`` on the side stream; returns them and the copies' event."""
        with torch.cuda.stream(self.side):
            moved = [t.to(self.device, non_blocking=True) for t in tensors]
            event = torch.cuda.Event()
            event.record(self.side)
        return moved, event

    def ready(self, batch: Batch, event) -> Batch:
        """``batch`` once its own copies are done, from the compute stream's point of view."""
        cur = torch.cuda.current_stream(self.device)
        cur.wait_event(event)
        for t in (batch.feats, batch.words_in, batch.targets, *batch.device_lens):
            t.record_stream(cur)  # allocated on the side stream, used on this one
        return batch


def check_batch_size(batch_size: int, world: int) -> None:
    """Refuse a global batch that leaves a process of ``world`` without a sample."""
    if batch_size < world:
        raise ConfigError(f"--batch-size {batch_size} is split across {world} processes (WORLD_SIZE): each needs a "
                          f"sample of every batch; pass --batch-size {world} or more")


class EpochSampler:
    """A seeded permutation per epoch, split across ranks, resumable mid-epoch.

    Global batch k holds permutation[k*B:(k+1)*B]; rank r takes its every world-th item,
    so a run on N processes sees the same global batches as a run on one.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1, drop_last: bool = False):
        check_batch_size(batch_size, world)
        self.n, self.B, self.seed, self.rank, self.world, self.drop_last = n, batch_size, seed, rank, world, drop_last

    def batches_per_epoch(self) -> int:
        return self.n // self.B if self.drop_last else math.ceil(self.n / self.B)

    def batches(self, epoch: int, start_batch: int = 0) -> List[List[int]]:
        """This rank's sample indices of every batch of ``epoch`` from ``start_batch`` on."""
        g = torch.Generator().manual_seed((self.seed * 100003 + epoch) % (1 << 64))  # any seed up to 2**63-1
        perm = torch.randperm(self.n, generator=g).tolist()
        return [perm[k * self.B:(k + 1) * self.B][self.rank::self.world]
                for k in range(start_batch, self.batches_per_epoch())]
