"""The extraction pipeline: decoding workers turn videos into uint8 network inputs
(:class:`VideoChunks`), the main process batches them through the CNN with overlapped copies
(:class:`Pipeline`), and on a CPU the workers and the CNN take turns on the cores
(:class:`CpuGate`)."""
from __future__ import annotations

import os
import time
import warnings
from collections import deque
from typing import Deque, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from s2vt.features.backbones.registry import Backbone
from s2vt.features.backbones.spec import Preprocess, prepare
from s2vt.features.config import ExtractConfig
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.hostmem import keep_freed_memory, return_free_memory
from s2vt.runtime.workers import DieWithParent, usable_cores, worker_context
from s2vt.video.flow import FlowComputer, flow_to_image
from s2vt.video.reader import iter_frames, opencv_threads_stopped


def video_images(path, cfg: ExtractConfig, pre: Preprocess, info: dict) -> Iterator[Tuple[int, np.ndarray]]:
    """(frame index, (C, S, S) uint8 network input) for each sampled position of one video: C = 3, or 6
    for a learned flow's frame pair."""
    if cfg.stream == "rgb":
        for i, frame in iter_frames(path, cfg.sampling(), info=info):
            yield i, prepare(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), pre)
    elif cfg.learned_flow():  # the pair, cropped as the CNN wants it: RAFT runs on the device
        for i, a, b in iter_frames(path, cfg.sampling(), pairs=True, info=info):
            yield i, np.concatenate([prepare(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), pre) for f in (a, b)])
    else:
        flow = FlowComputer(cfg.flow_method)
        for i, a, b in iter_frames(path, cfg.sampling(), pairs=True, info=info):
            yield i, prepare(flow_to_image(flow(a, b)), pre)


class VideoChunks(IterableDataset):
    """Yields dicts: ``{vid, images (n,3,S,S) uint8 tensor, indices (n,), last, meta}`` or ``{vid, error}``."""

    def __init__(self, items: Sequence[Tuple[str, str]], cfg: ExtractConfig, pre: Optional[Preprocess] = None,
                 gate=None, shared: bool = False):
        self.items, self.cfg, self.pre = list(items), cfg, pre or cfg.preprocess()
        self.gate = gate  # a CpuGate flag: decode the next image only while it is set
        self.parent = os.getpid()
        # with workers, each takes the next video not yet taken (a counter in shared memory),
        # so a worker that drew long videos does not finish alone while the others idle
        self._next = worker_context().Value("q", 0) if shared else None

    def _videos(self, w) -> Iterator[Tuple[str, str]]:
        if w is None or self._next is None:  # in-process, or a static share per worker
            yield from (self.items if w is None else self.items[w.id::w.num_workers])
            return
        while True:
            with self._next.get_lock():  # taken by workers only: the main process never holds it
                i = self._next.value
                self._next.value = i + 1
            if i >= len(self.items):
                return
            yield self.items[i]

    def _wait_turn(self, worker: int) -> None:
        while not self.gate.wait(0.5, worker):
            if os.getppid() != self.parent:  # the main process died during a batch: do not wait forever
                raise SystemExit(1)

    def __iter__(self):
        w = get_worker_info()
        cv2.setNumThreads(1)
        S = self.pre.size
        worker = w.id if w is not None else 0
        for vid, path in self._videos(w):
            info: dict = {}
            imgs, idx = [], []
            try:
                for i, img in video_images(path, self.cfg, self.pre, info):
                    if self.gate is not None:  # finish the image in hand, then wait while the CNN computes
                        self._wait_turn(worker)
                    imgs.append(img)
                    idx.append(i)
                    if len(imgs) == self.cfg.chunk:
                        yield {"vid": vid, "images": torch.from_numpy(np.stack(imgs)), "indices": np.array(idx),
                               "last": False}
                        imgs, idx = [], []
            except Exception as e:  # any failure of one video is reported, never fatal
                yield {"vid": vid, "error": str(e) or type(e).__name__, "source": str(path)}
                continue
            # tensors travel from workers through shared memory, not pickled pipes
            yield {"vid": vid, "images": torch.from_numpy(np.stack(imgs) if imgs else np.zeros((0, self.cfg.channels(), S, S), np.uint8)),
                   "indices": np.array(idx, np.int64), "last": True,
                   "meta": {"fps": info.get("fps", 0.0), "decoded_frames": info.get("decoded_frames", 0),
                            "source": str(path)}}


def cnn_features(backbone: Backbone, x: torch.Tensor, autocast) -> torch.Tensor:
    """(n, D) float32 features of (n, 3, S, S) uint8 images ``x``. A batch of one runs as two:
    oneDNN rounds N=1 differently, and a video's features must not depend on how it was batched
    (extraction, or captioning a raw video, in any batch size: the same bits)."""
    n = len(x)
    if n == 1:
        x = x.expand(2, *x.shape[1:])
    with autocast:
        return backbone(x).float()[:n]


class Pipeline:
    """uint8 image batches -> CNN features on ``device``, without making the host wait.

    ``add(owner, images)`` copies (n, 3, S, S) uint8 rows into a staging buffer (pinned on
    CUDA). Each full batch is launched: a non-blocking host-to-device copy (on a side
    stream, so it overlaps the previous batch's CNN), the CNN under autocast, and a
    non-blocking copy of its (n, D) float32 features back to pinned host memory. The host
    waits for a batch only once the next one is queued on the device. ``add`` and
    ``flush`` return the finished rows as ``[(owner, (k, D) float32 array), ...]`` in order.
    """

    def __init__(self, backbone: Backbone, device: torch.device, batch_size: int, size: int,
                 precision: str = "fp32", gate=None):
        self.backbone, self.device, self.batch_size = backbone, device, batch_size
        self.gate = gate  # cleared while the CNN computes (see cpu_gate)
        self.cuda = device.type == "cuda"
        if device.type == "cpu":
            keep_freed_memory()  # activations are reused, not mapped afresh for every call
        n_bufs = 2 if self.cuda else 1  # fill one while the other is being copied to the device
        channels = getattr(backbone, "channels", 3)  # 6: RAFT's frame pairs (s2vt.features.raft.FlowFeatures)
        self.bufs = [torch.empty((batch_size, channels, size, size), dtype=torch.uint8, pin_memory=self.cuda)
                     for _ in range(n_bufs)]
        self.copied: List[Optional[torch.cuda.Event]] = [None] * n_bufs  # buffer's last H2D copy done
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        self.k, self.fill, self.owners = 0, 0, []   # buffer being filled, rows in it, (owner, rows) runs
        self.inflight: Deque[tuple] = deque()       # (done event, host features, owners) per launched batch
        self.images = 0

    def add(self, owner, images: torch.Tensor) -> list:
        """Queue (n, 3, S, S) uint8 ``images`` of ``owner``; returns finished rows."""
        done, i = [], 0
        while i < len(images):
            if self.fill == 0 and self.copied[self.k] is not None:
                self.copied[self.k].synchronize()  # long done: the copy of two batches ago
            n = min(len(images) - i, self.batch_size - self.fill)
            self.bufs[self.k][self.fill:self.fill + n].copy_(images[i:i + n])
            self.owners.append((owner, n))
            self.fill, i = self.fill + n, i + n
            if self.fill == self.batch_size:
                done += self._launch()
        return done

    def flush(self) -> list:
        """Launch the partial batch and wait for every batch in flight."""
        done = self._launch() if self.fill else []
        while self.inflight:
            done += self._collect()
        return done

    @torch.inference_mode()
    def _launch(self) -> list:
        n, buf = self.fill, self.bufs[self.k]
        if self.cuda:
            with torch.cuda.stream(self.copy_stream):
                x = buf[:n].to(self.device, non_blocking=True)
                self.copied[self.k] = torch.cuda.Event()
                self.copied[self.k].record(self.copy_stream)
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self.copy_stream)
            x.record_stream(compute)
        else:
            x = buf[:n].to(self.device)  # the CPU uses the buffer itself: it is refilled after the CNN ran
        if self.gate is not None:
            self.gate.clear()
        try:
            y = cnn_features(self.backbone, x, self.autocast)
        finally:
            if self.gate is not None:
                self.gate.set()
        event = None
        if self.cuda:
            host = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(y, non_blocking=True)
            event = torch.cuda.Event()
            event.record(compute)
        else:
            host = y.cpu()
        self.inflight.append((event, host, self.owners))
        self.images += n
        self.k, self.fill, self.owners = (self.k + 1) % len(self.bufs), 0, []
        done = []
        while len(self.inflight) > (1 if self.cuda else 0):  # keep the device one batch ahead
            done += self._collect()
        return done

    def _collect(self) -> list:
        event, host, owners = self.inflight.popleft()
        if event is not None:
            event.synchronize()
        arr, k, out = host.numpy(), 0, []
        for owner, n in owners:
            out.append((owner, arr[k:k + n].copy() if self.cuda else arr[k:k + n]))  # pinned blocks get reused
            k += n
        return out


class CpuGate:
    """Whose turn the cores are: the CNN's (cleared) or the decoding workers' (set).

    A flag byte in shared memory, read without a lock, and one semaphore per worker to wake
    it: a waiting worker sleeps in the kernel (``sem_timedwait``) and uses no CPU while the
    CNN computes. Polling instead (a 0.5 ms sleep loop) woke each worker 2,000 times a
    second, and every wake-up took a core from the CNN's threads. Not a
    ``multiprocessing.Event``: its ``wait`` takes a lock that ``set`` and ``clear`` hold for
    an instant, so a run killed in that instant left its workers blocked for ever.
    ``sem_post`` holds no lock, so a killed setter leaves nothing held."""

    def __init__(self, workers: int = 1):
        import ctypes

        ctx = worker_context()  # the workers' own context: a semaphore cannot cross start methods
        self._flag = ctx.RawValue(ctypes.c_bool, True)
        self._wake = [ctx.Semaphore(0) for _ in range(max(1, workers))]

    def set(self) -> None:
        self._flag.value = True
        for s in self._wake:  # one token per worker at most: a stale token costs one spurious wake-up
            try:
                empty = s.get_value() == 0
            except NotImplementedError:  # macOS cannot tell: a token more or less
                empty = True
            if empty:
                s.release()

    def clear(self) -> None:
        self._flag.value = False

    def wait(self, timeout: float, worker: int = 0) -> bool:
        """True once set, False if ``timeout`` seconds pass first (``worker``: the caller's index)."""
        if self._flag.value:
            return True
        end = time.monotonic() + timeout
        wake = self._wake[worker % len(self._wake)]
        while not self._flag.value:
            left = end - time.monotonic()
            if left <= 0:
                return False
            wake.acquire(timeout=left)
        return True


def cpu_gate(cfg: ExtractConfig) -> Optional[CpuGate]:
    """On a CPU device the CNN's threads and the decoding workers share the same cores, and
    running both at once slows the CNN more than it gains (its threads wait for each other
    whenever a worker takes one of their cores). The gate takes turns: workers finish the
    image in hand and pause while a batch computes, and decode while the CNN waits for
    images. On 2 cores flow extraction took 5.5-6.8 s with it against 6.5-7.3 s without
    (BENCHMARKS.md). None on a GPU, or without workers."""
    if torch.device(cfg.device).type != "cpu" or not cfg.decode_workers() or not cfg.take_turns:
        return None
    return CpuGate(cfg.decode_workers())


def worker_chunks(todo, cfg: ExtractConfig, pre: Preprocess, gate=None) -> Iterator[dict]:
    """The workers' messages (see ``VideoChunks``), decoded in ``cfg.decode_workers()`` processes."""
    workers = min(cfg.decode_workers(), len(todo))
    if workers:
        # the workers fork when the loader is iterated: pages the CNN freed and the allocator
        # kept would be shared copy-on-write, and the next batch paid for copying them
        return_free_memory()
    if workers > usable_cores():
        warnings.warn(f"--workers {workers}: more decoding processes than the cores this run may use "
                      f"({usable_cores()}); they will take turns on them", stacklevel=2)
    with warnings.catch_warnings():  # said once above, not twice by the DataLoader
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        chunks = VideoChunks(todo, cfg, pre, gate if workers else None, shared=cfg.share_videos and workers > 0)
        loader = DataLoader(chunks, batch_size=None, num_workers=workers, in_order=not cfg.share_videos,
                            prefetch_factor=4 if workers else None, persistent_workers=False,
                            multiprocessing_context=worker_context() if workers else None,
                            worker_init_fn=DieWithParent() if workers else None)
        with opencv_threads_stopped():  # the workers fork here
            it = iter(loader)
    yield from it


def worker_died_error(e: RuntimeError) -> Optional[S2VTError]:
    """The error that says what to do when ``e`` is the DataLoader's report of a dead decoding
    worker (the kernel's out-of-memory killer, a kill); None for any other error."""
    if "DataLoader worker" not in str(e):
        return None
    return S2VTError(f"a decoding worker died ({str(e).splitlines()[0].rstrip('. ')}); the finished videos are "
                     "kept: re-run the same command to resume (with fewer --workers if memory ran out)")
