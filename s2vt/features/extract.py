"""The extraction driver: videos -> sampled frames (or flow images) -> CNN -> HDF5.

Three things run at once so the wall time approaches max(decode time, CNN time):

* worker processes decode videos, compute flow and crop images (uint8 tensors, in chunks
  of at most ``chunk`` frames so a long video never sits in memory whole); each worker
  takes the next video no worker has taken yet, and its chunks reach the main process as
  soon as they are ready, in whatever order the workers finish them;
* the main process copies chunks into a staging buffer (pinned on CUDA), sends each full
  batch to the device with a non-blocking copy on a side stream, runs the CNN, and starts
  the device-to-host copy of its features; it waits for a batch only when the next one
  is already queued on the device (``Pipeline``);
* a writer thread (``store.BackgroundWriter``) makes finished videos durable in groups.

A video that fails at any point (decoding, no frame sampled, non-finite features) is
recorded with its reason and nothing of it is kept. Re-running skips finished videos.
"""
from __future__ import annotations

import os
import time
import warnings
from collections import Counter, deque
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from s2vt.features.backbones.registry import Backbone, backbone_spec, check_backbone
from s2vt.features.backbones.spec import Preprocess, prepare
from s2vt.runtime.config import as_flags, check_fields, feature_fields, option
from s2vt.runtime.devices import configure, local_world_size, synchronize
from s2vt.runtime.devices import resolve as resolve_device
from s2vt.runtime.devices import name as device_name
from s2vt.runtime.errors import FieldError, S2VTError, SignatureMismatch
from s2vt.video.flow import METHODS, OFFSET, SCALE, FlowComputer, flow_to_image
from s2vt.runtime.hostmem import keep_freed_memory, return_free_memory
from s2vt.features.raft import LEARNED, RAFT_MIN, FlowFeatures, LearnedFlow
from s2vt.features.store import VERSION, BackgroundWriter, FeatureWriter, already_complete
from s2vt.video.reader import Sampling, iter_frames
from s2vt.runtime.workers import DieWithParent, usable_cores, worker_context

STREAMS = ("rgb", "flow")


CPU_BATCH, GPU_BATCH = 8, 64  # default images per CNN call
SHARE_VIDEOS = True  # workers take the next untaken video; False: a fixed share each (scripts/bench_shares.py)
TAKE_TURNS = True  # see cpu_gate; scripts/bench_extract.py --no-turns measures without


def _int_at_least(flag: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise S2VTError(f"{flag} must be an integer >= {low}, not {value!r}")


@dataclass
class ExtractConfig:
    """How features are computed. Fields declared with ``feature=`` define what a feature means:
    the store's signature is made from them, and :meth:`from_signature` reads them back."""

    stream: str = option("rgb", "RGB frames or optical-flow images", choices=STREAMS, feature="stream")
    cnn: str = option("efficientnet_lite0", "backbone: efficientnet_lite0 (offline), vgg16, alexnet, resnet152, "
                                            "or timm:MODEL for any timm model (timm:resnet50, "
                                            "timm:vit_base_patch16_clip_224.openai, ...)", feature="backbone")
    layer: Optional[str] = option(None, "feature layer (default per CNN: pool, fc7, fc7, pool; timm: pool, or embed "
                                        "for CLIP towers)", feature="layer")
    weights: Optional[str] = option(None, "CNN weights file (torchvision .pth for vgg16/alexnet/resnet152; "
                                          ".safetensors or .pth for timm models)")
    download: bool = option(False, "let torchvision / timm fetch published weights (CNN and RAFT) into their "
                                   "caches when no file is found (needs internet; off: nothing is downloaded)")
    stride: int = option(10, "keep one frame in every N (the paper: 10)", low=1, high=100_000,
                         feature="sampling.stride")
    num_frames: int = option(0, "instead of a stride: K frames spread uniformly (0: use the stride)", low=0,
                             high=100_000, feature="sampling.num_frames")
    max_frames: int = option(0, "at most this many frames per video (0: all)", low=0, high=1_000_000,
                             feature="sampling.max_frames")
    input_size: Optional[int] = option(None, "CNN input crop side in pixels (default: the backbone's, 224 for all "
                                             "but a few timm models)", low=16, high=1024, feature="preprocess.size")
    crop_ratio: Optional[float] = option(None, "crop side / resized short side, in (0, 1] (default: the backbone's; "
                                               "0.875 for the ImageNet CNNs, timm's crop_pct for timm models)",
                                         low=0.0, low_open=True, high=1.0, feature="preprocess.crop_ratio")
    flow_method: str = option("dis", "optical flow: OpenCV's dis or farneback (decoding workers, CPU), or "
                                     "torchvision's RAFT raft_small / raft_large (batched on --device)",
                              choices=METHODS + LEARNED, feature="flow.method", when={"stream": "flow"})
    flow_weights: Optional[str] = option(None, "RAFT weights file (a torchvision state dict; default: torchvision's "
                                               "file in torch's cache)")
    batch_size: Optional[int] = option(None, f"images per CNN call (default: {CPU_BATCH} on the CPU, where small "
                                             f"batches stay in cache; {GPU_BATCH} on a GPU)", low=1, high=65536)
    workers: Optional[int] = option(None, "decoding processes (default: cores - 1 on a GPU, 2 on the CPU; "
                                          "0: in-process)", low=0, high=512)
    chunk: int = option(32, "frames per worker message (bounds memory)", low=1, high=4096, cli=False)
    device: str = option("cpu", "cpu, cuda, cuda:1 ...", cli=False)  # the command's shared --device
    precision: str = option("fp32", "bf16: autocast for the CNN on CUDA, recorded in the store "
                                    "(on a CPU: a warning, then fp32)", choices=("fp32", "bf16"), feature="precision")

    def __post_init__(self):
        check_fields(self)
        try:  # the name only: whether this machine has the device is checked when a run starts
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise S2VTError(f"--device {self.device!r} is not a device name (cpu, cuda, cuda:1, ...): {e}")
        size = self.preprocess().size
        check_backbone(self.cnn, self.layer, size)
        if self.learned_flow() and (size % 8 or size < RAFT_MIN):
            raise S2VTError(f"--input-size {size}: RAFT (--flow-method {self.flow_method}) needs a side divisible by 8 "
                            f"and at least {RAFT_MIN}")
        self.sampling()  # --stride / --num-frames / --max-frames

    def learned_flow(self) -> bool:
        """True when flow is RAFT's, computed on the device from frame pairs (:mod:`s2vt.features.raft`)."""
        return self.stream == "flow" and self.flow_method in LEARNED

    def channels(self) -> int:
        """Channels of the uint8 images workers send: 3, or 6 for RAFT's frame pairs."""
        return 6 if self.learned_flow() else 3

    def network(self, preprocess: Optional[Preprocess] = None) -> torch.nn.Module:
        """The network from workers' images to features: the backbone, behind RAFT for learned flow
        (weights loaded, on the CPU)."""
        backbone = Backbone(self.cnn, self.layer, self.weights, preprocess or self.preprocess(), self.download)
        if not self.learned_flow():
            return backbone
        return FlowFeatures(LearnedFlow(self.flow_method, self.flow_weights, self.download), backbone)

    def on_device(self) -> Tuple["ExtractConfig", torch.device]:
        """(this config as it runs here, the device): checked when a run starts, not on construction."""
        dev = resolve_device(self.device)
        if self.precision == "bf16" and dev.type == "cpu":
            # CPUs without bf16 units run a bf16 CNN ~60x slower than fp32: compute (and record) fp32
            warnings.warn("--precision bf16 is for GPUs; on the CPU the CNN runs (and the store records) fp32",
                          stacklevel=3)
            return replace(self, precision="fp32"), dev
        return self, dev

    @classmethod
    def from_signature(cls, sig: dict, weights: Optional[str] = None, device: str = "cpu",
                       download: bool = False, flow_weights: Optional[str] = None) -> "ExtractConfig":
        """The settings that compute features with signature ``sig`` (``weights`` / ``flow_weights``: the
        CNN and RAFT files whose digests it records; None = the offline defaults)."""
        given = {}
        for f in fields(cls):
            key = f.metadata.get("feature")
            value = _lookup(sig, key) if key else _MISSING
            if value is not _MISSING:
                given[f.name] = value
        try:
            return cls(**given, weights=weights, device=device, download=download, flow_weights=flow_weights)
        except FieldError as e:  # a value recorded in the signature, not a flag the user gave
            raise in_signature_words(e) from None
        except S2VTError as e:
            raise SignatureMismatch(f"{e} (a value the features' signature records)") from None

    def feature_values(self) -> dict:
        """The signature entries these settings define (dotted keys nested)."""
        out: dict = {}
        for f in feature_fields(self):
            *path, last = f.metadata["feature"].split(".")
            node = out
            for k in path:
                node = node.setdefault(k, {})
            node[last] = getattr(self, f.name)
        return out

    def flags(self) -> str:
        """The ``s2vt extract`` flags that select these features (not the speed settings): the stream,
        and every feature field whose value is not its default."""
        base = backbone_spec(self.cnn).preprocess
        defaults = {"input_size": base.size, "crop_ratio": base.crop_ratio}
        return as_flags(self, [f for f in feature_fields(self) if f.name == "stream" or
                               getattr(self, f.name) not in (f.default, defaults.get(f.name, f.default))])

    def sampling(self) -> Sampling:
        return Sampling(stride=self.stride, num_frames=self.num_frames, max_frames=self.max_frames)

    def preprocess(self) -> Preprocess:
        """The backbone's preprocessing, with ``input_size`` / ``crop_ratio`` where given."""
        base = backbone_spec(self.cnn).preprocess
        return replace(base, size=base.size if self.input_size is None else self.input_size,
                       crop_ratio=float(base.crop_ratio if self.crop_ratio is None else self.crop_ratio))

    def cnn_batch(self) -> int:
        """Images per CNN call: ``batch_size``, or the device's default. On a CPU, small batches
        keep each layer's activations in cache: on 2 cores EfficientNet-Lite0 ran 98 images/s at
        batch 8 against 65 at 64 (scripts/bench_cnn.py, BENCHMARKS.md); batches of 4 to 32 were
        within 10% of each other, and 8 leaves more work per call for CPUs with many cores."""
        if self.batch_size is not None:
            return self.batch_size
        return CPU_BATCH if torch.device(self.device).type == "cpu" else GPU_BATCH

    def decode_workers(self) -> int:
        """Decoding processes: ``workers``, or by default every core but one on a GPU (under torchrun, this
        process's share of the machine's cores, less one), 2 on the CPU."""
        if self.workers is not None:
            return self.workers
        cores = usable_cores()
        if torch.device(self.device).type == "cpu":
            return min(2, cores)
        return max(1, cores // local_world_size() - 1)


_MISSING = object()


def in_signature_words(e: FieldError) -> SignatureMismatch:
    """An ExtractConfig field error about a value read from a signature, in the signature's words:
    "its signature's sampling.stride must be >= 1, got 0 (a value the features' signature records)"."""
    key = next((f.metadata.get("feature") for f in fields(ExtractConfig) if f.name == e.name), None)
    subject = f"its signature's {key}" if key else f"its signature's {e.name}"
    return SignatureMismatch(f"{e.about(subject)} (a value the features' signature records)")


def _lookup(d: dict, dotted: str):
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return _MISSING
        d = d[k]
    return d


def make_signature(cfg: ExtractConfig, backbone: Backbone) -> dict:
    """What a feature means: the feature fields of ``cfg``, with what the backbone resolved
    (layer, dim, weights digest, preprocessing) and the constants of sampling and flow images."""
    sig = {"format_version": VERSION, **cfg.feature_values()}
    for k, v in backbone.signature().items():  # the backbone's resolved values (its default layer, mean, std)
        sig[k] = {**sig.get(k, {}), **v} if isinstance(v, dict) else v
    sig["sampling"]["short_side"] = cfg.sampling().short_side
    if cfg.stream == "flow":
        sig["flow"].update(scale=SCALE, offset=OFFSET)
    return sig


def extract_flags(sig: dict) -> str:
    """The ``s2vt extract`` flags that compute features with signature ``sig``."""
    return ExtractConfig.from_signature(sig).flags()


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
        self.gate = gate  # a Turns flag: decode the next image only while it is set
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


@dataclass
class ExtractSummary:
    done: int = 0
    skipped: int = 0
    failed: Dict[str, str] = field(default_factory=dict)
    frames: int = 0
    seconds: float = 0.0
    out: str = ""

    def lines(self) -> List[str]:
        fps = self.frames / self.seconds if self.seconds else 0.0
        out = [f"extracted {self.done} videos ({self.frames} frames, {fps:.1f} frames/s), "
               f"skipped {self.skipped} already done, failed {len(self.failed)} -> {self.out}"]
        failed = sorted(self.failed.items())
        out += [f"  failed: {v}: {r}" for v, r in failed[:20]]
        if len(failed) > 20:
            kinds = Counter(r.split(":")[0] for _, r in failed)
            out.append(f"  ... and {len(failed) - 20} more; by reason: " + ", ".join(f"{k} ({n})" for k, n in kinds.most_common()))
            out.append("  (every failure and its reason is in the store's /failed group)")
        return out


class _Videos:
    """Per-video bookkeeping of the main loop: rows sent to the CNN and received back;
    a video is finished once its last chunk arrived and every row came back."""

    def __init__(self, writer: BackgroundWriter, summary: ExtractSummary, bar):
        self.writer, self.summary, self.bar = writer, summary, bar
        self.state: Dict[str, dict] = {}

    def chunk(self, msg: dict) -> None:
        s = self.state.setdefault(msg["vid"], {"feats": [], "indices": [], "sent": 0, "got": 0, "meta": None})
        s["indices"].append(np.asarray(msg["indices"], np.int64))
        s["sent"] += len(msg["images"])
        if msg["last"]:
            s["meta"] = msg["meta"]
            self._maybe_finish(msg["vid"])

    def rows(self, done: list) -> None:
        for vid, arr in done:
            s = self.state.get(vid)
            if s is not None:  # None: the video failed after some of its rows were queued
                s["feats"].append(arr)
                s["got"] += len(arr)
                self._maybe_finish(vid)

    def fail(self, vid: str, reason: str, source: str) -> None:
        self.state.pop(vid, None)
        self.writer.add_failure(vid, reason, source)
        self.summary.failed[vid] = reason
        self.bar.update()

    def _maybe_finish(self, vid: str) -> None:
        s = self.state[vid]
        if s["meta"] is None or s["got"] < s["sent"]:
            return
        source = s["meta"].get("source", "")
        if not s["sent"]:
            return self.fail(vid, "no frame sampled", source)
        feats = np.concatenate(s["feats"])  # (T, D)
        if not np.isfinite(feats).all():
            return self.fail(vid, "non-finite features (NaN or inf) from the CNN", source)
        del self.state[vid]
        self.writer.add(vid, feats, np.concatenate(s["indices"]), s["meta"])
        self.summary.done += 1
        self.summary.frames += len(feats)
        self.bar.update()


class Turns:
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


def cpu_gate(cfg: ExtractConfig) -> Optional[Turns]:
    """On a CPU device the CNN's threads and the decoding workers share the same cores, and
    running both at once slows the CNN more than it gains (its threads wait for each other
    whenever a worker takes one of their cores). The gate takes turns: workers finish the
    image in hand and pause while a batch computes, and decode while the CNN waits for
    images. On 2 cores flow extraction took 5.5-6.8 s with it against 6.5-7.3 s without
    (BENCHMARKS.md). None on a GPU, or without workers."""
    if torch.device(cfg.device).type != "cpu" or not cfg.decode_workers() or not TAKE_TURNS:
        return None
    return Turns(cfg.decode_workers())


def _loader(todo, cfg: ExtractConfig, pre: Preprocess, gate=None) -> Iterator[dict]:
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
        chunks = VideoChunks(todo, cfg, pre, gate if workers else None, shared=SHARE_VIDEOS and workers > 0)
        loader = DataLoader(chunks, batch_size=None, num_workers=workers, in_order=not SHARE_VIDEOS,
                            prefetch_factor=4 if workers else None, persistent_workers=False,
                            multiprocessing_context=worker_context() if workers else None,
                            worker_init_fn=DieWithParent() if workers else None)
        it = iter(loader)
    yield from it


def _worker_died(e: RuntimeError) -> Optional[S2VTError]:
    """The error that says what to do when ``e`` is the DataLoader's report of a dead decoding
    worker (the kernel's out-of-memory killer, a kill); None for any other error."""
    if "DataLoader worker" not in str(e):
        return None
    return S2VTError(f"a decoding worker died ({str(e).splitlines()[0].rstrip('. ')}); the finished videos are "
                     "kept: re-run the same command to resume (with fewer --workers if memory ran out)")


def _run(todo, cfg: ExtractConfig, backbone: Backbone, device: torch.device, videos: _Videos) -> None:
    """The main loop: worker chunks -> Pipeline -> finished videos to the writer thread."""
    gate = cpu_gate(cfg)
    pipe = Pipeline(backbone, device, cfg.cnn_batch(), backbone.preprocess.size, cfg.precision, gate)
    try:
        for msg in _loader(todo, cfg, backbone.preprocess, gate):  # crop exactly as the signature records
            if "error" in msg:
                videos.fail(msg["vid"], msg["error"], msg["source"])
                continue
            done = pipe.add(msg["vid"], msg["images"]) if len(msg["images"]) else []
            videos.chunk(msg)
            videos.rows(done)
    except RuntimeError as e:
        # raised by the loader, or by its SIGCHLD handler wherever the main thread is (a CNN batch)
        died = _worker_died(e)
        if died is None:
            raise
        raise died from None
    videos.rows(pipe.flush())


def extract(items: Sequence[Tuple[str, str]], out, cfg: ExtractConfig,
            backbone: Optional[Backbone] = None, progress: bool = True,
            shard: Optional[Tuple[int, int]] = None) -> ExtractSummary:
    """Extract features of ``items`` ((video id, path) pairs) into the store ``out``."""
    from tqdm import tqdm

    t0 = time.time()
    if shard is not None:
        check_shard(*shard)
    cfg, device = cfg.on_device()  # cuda:LOCAL_RANK under torchrun
    configure(device, fp32=cfg.precision == "fp32", benchmark=True)  # fp32 features are IEEE fp32, as recorded
    backbone = (backbone or cfg.network()).to(device)
    sig = make_signature(cfg, backbone)
    if shard:
        sig["shard"] = f"{shard[0]}/{shard[1]}"
    if already_complete(out, sig, (v for v, _ in items)):  # nothing to do: write nothing
        return ExtractSummary(skipped=len(items), out=str(out), seconds=time.time() - t0)
    writer = FeatureWriter(out, sig)
    done = writer.done_ids()
    todo = [(v, str(p)) for v, p in items if v not in done]
    summary = ExtractSummary(skipped=len(items) - len(todo), out=str(out))
    bg = BackgroundWriter(writer)
    with tqdm(total=len(todo), desc=f"extract {cfg.stream}", unit="video", disable=not progress) as bar:
        try:
            if todo:
                _run(todo, cfg, backbone, device, _Videos(bg, summary, bar))
        except BaseException:
            try:
                bg.stop()  # what finished stays durable for the re-run
            except Exception:
                pass
            raise
        bg.finish()
    _check_accounted(out, todo)
    summary.seconds = time.time() - t0
    return summary


def _check_accounted(out, todo) -> None:
    """Every video this run took is in the published store or listed as failed: one that is neither
    (a worker that died without a word) ends the run with exit 1 and the videos named."""
    from s2vt.features.store import FeatureStore

    store = FeatureStore(out)
    lost = [v for v, _ in todo if v not in store and v not in store.failed]
    if lost:
        err = S2VTError(f"{len(lost)} video(s) were neither extracted nor reported as failed "
                        f"({', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}): a decoding worker was lost; "
                        "re-run the same command to extract them")
        err.exit_code = 1
        raise err


def check_shard(rank: int, world: int) -> Tuple[int, int]:
    """(rank, world) when 0 <= rank < world; else S2VTError."""
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (rank, world))
    if not ints or world < 1 or not 0 <= rank < world:
        raise S2VTError(f"--shard {rank}/{world}: need integers with N >= 1 and 0 <= I < N")
    return rank, world


def video_items(paths: Sequence) -> List[Tuple[str, Path]]:
    """(id, path) of video files and of every video under folders (searched recursively). A file's id
    is its stem; under a folder, its path relative to the folder without extension, parts joined by
    ``__`` (``a/b.mp4`` -> ``a__b``), so that two folders' ``clip1.mp4`` stay apart."""
    from s2vt.video.reader import VIDEO_EXTENSIONS
    from s2vt.data.ids import check_video_id
    from s2vt.video.reader import iter_video_paths

    items = []
    for p in map(Path, paths):
        if p.is_dir():
            found = list(iter_video_paths(p))
            if not found:
                raise S2VTError(f"{p}: no video files in this folder (looked for {', '.join(VIDEO_EXTENSIONS)})")
            items += [(check_video_id("__".join(f.relative_to(p).with_suffix("").parts), str(f)), f) for f in found]
        elif p.exists():
            items.append((check_video_id(p.stem, str(p)), p))
        else:
            raise S2VTError(f"{p}: no such file or folder")
    return items


def unique_items(items: Sequence[Tuple[str, Path]]) -> List[Tuple[str, Path]]:
    """``items`` sorted by id, each once; two paths under one id are refused."""
    seen: Dict[str, Path] = {}
    for vid, p in items:
        if vid in seen and seen[vid] != p:
            raise S2VTError(f"two videos share the id {vid!r}: {seen[vid]} and {p}")
        seen[vid] = p
    return sorted(seen.items())


def shard_items(items: Sequence, rank: int, world: int) -> list:
    """Every ``world``-th item starting at ``rank`` (items sorted by id first)."""
    check_shard(rank, world)
    return sorted(items)[rank::world]


def shard_path(out, rank: int, world: int) -> Path:
    check_shard(rank, world)
    out = Path(out)
    return out.with_name(f"{out.stem}.shard{rank}of{world}{out.suffix}") if world > 1 else out


def env_shard() -> Optional[Tuple[int, int]]:
    """(rank, world size) set by torchrun, if any."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        r, w = os.environ["RANK"], os.environ["WORLD_SIZE"]
        try:
            rank, world = int(r), int(w)
        except ValueError:
            raise S2VTError(f"RANK={r!r} and WORLD_SIZE={w!r} (set by torchrun) must be integers")
        if world < 1 or not 0 <= rank < world:
            raise S2VTError(f"RANK={r} WORLD_SIZE={w} (set by torchrun): need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
        return rank, world
    return None


# ----------------------------------------------------------------------------- benchmark

def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (decoding workers), user + system."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_stages(items: Sequence[Tuple[str, str]], cfg: ExtractConfig, workdir, backbone: Optional[Backbone] = None) -> dict:
    """Wall times of decode-only (the same workers decoding, sampling and cropping, no CNN),
    CNN-only (the same ``Pipeline`` on ready uint8 images: staging, transfers, CNN) and the
    full extraction into ``workdir/bench.h5``, on the same files; ``ratio`` = extraction /
    max(decode-only, CNN-only).

    Also the CPU seconds each stage used, and ``bound_s`` = max(decode-only, CNN-only,
    (decode CPU + CNN CPU) / cores): when decoding and the CNN both run on the CPU they share
    its cores, so no overlap can finish sooner; ``ratio_to_bound`` = extraction / bound_s."""
    cfg, device = cfg.on_device()
    configure(device, fp32=cfg.precision == "fp32", benchmark=True)
    backbone = (backbone or cfg.network()).to(device)
    t, c = time.perf_counter(), _cpu_seconds()
    images = sum(len(m["images"]) for m in _loader(list(items), cfg, backbone.preprocess) if "images" in m)
    decode_s, decode_cpu = time.perf_counter() - t, _cpu_seconds() - c
    S = backbone.preprocess.size
    chunk = torch.randint(0, 256, (cfg.chunk, cfg.channels(), S, S), dtype=torch.uint8)
    pipe = Pipeline(backbone, device, cfg.cnn_batch(), S, cfg.precision)
    for _ in range(max(2, 2 * cfg.cnn_batch() // cfg.chunk)):  # warm-up: two batches or more
        pipe.add(0, chunk)
    pipe.flush()
    synchronize(device)
    t, c = time.perf_counter(), _cpu_seconds()
    for k in range(0, images, cfg.chunk):
        pipe.add(k, chunk[: min(cfg.chunk, images - k)])
    pipe.flush()
    synchronize(device)
    cnn_s, cnn_cpu = time.perf_counter() - t, _cpu_seconds() - c

    t = time.perf_counter()
    s = extract(items, Path(workdir) / "bench.h5", cfg, backbone=backbone, progress=False)
    extract_s = time.perf_counter() - t
    if s.failed or s.frames != images:
        raise S2VTError(f"benchmark extraction failed: {s.lines()}")
    name = device_name(device)
    cores = usable_cores()
    bound = max(decode_s, cnn_s, (decode_cpu + cnn_cpu) / cores)
    return {"device": name, "stream": cfg.stream, "decode_only_s": round(decode_s, 3), "cnn_only_s": round(cnn_s, 3),
            "extraction_s": round(extract_s, 3), "images": images,
            "ratio": round(extract_s / max(decode_s, cnn_s), 3),
            "decode_cpu_s": round(decode_cpu, 3), "cnn_cpu_s": round(cnn_cpu, 3), "cores": cores,
            "bound_s": round(bound, 3), "ratio_to_bound": round(extract_s / bound, 3)}
