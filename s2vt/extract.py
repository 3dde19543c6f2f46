"""The extraction driver: videos -> sampled frames (or flow images) -> CNN -> HDF5.

Worker processes decode videos, compute flow and crop images (uint8, in chunks of at
most ``chunk`` frames so a long video never sits in memory whole); the main process
batches chunks across videos through the CNN on ``device`` and stages each finished
video in the store. A video that fails at any point is recorded with its reason and
nothing of it is kept. Re-running skips finished videos.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .backbones import Backbone, Preprocess, SPECS, prepare
from .flow import FlowComputer, flow_to_image
from .store import FeatureWriter, VERSION
from .video import Sampling, iter_frames

STREAMS = ("rgb", "flow")


@dataclass
class ExtractConfig:
    stream: str = "rgb"               # rgb frames or optical-flow images
    cnn: str = "efficientnet_lite0"   # backbone name (see s2vt.backbones.SPECS)
    layer: Optional[str] = None       # None = the backbone's default layer
    weights: Optional[str] = None     # weights file; None = offline default / torch cache
    stride: int = 10                  # one frame in every 10 (the paper)
    num_frames: int = 0               # >0: this many frames spread uniformly instead of a stride
    max_frames: int = 0               # cap on sampled frames per video (0 = none)
    input_size: int = 224             # CNN crop side
    crop_ratio: float = 0.875         # crop side / resized short side (224 of 256)
    flow_method: str = "dis"
    batch_size: int = 64              # images per CNN call
    workers: int = 2                  # decoding processes (0 = decode in the main process)
    chunk: int = 32                   # frames per worker message (bounds memory)
    device: str = "cpu"
    precision: str = "fp32"           # fp32 or bf16 (autocast; recorded in the signature)

    def __post_init__(self):
        if self.stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, not {self.stream!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError("precision must be fp32 or bf16")
        if self.cnn not in SPECS:
            raise ValueError(f"unknown CNN {self.cnn!r}; choose one of {', '.join(SPECS)}")

    def sampling(self) -> Sampling:
        return Sampling(stride=self.stride, num_frames=self.num_frames, max_frames=self.max_frames)

    def preprocess(self) -> Preprocess:
        base = SPECS[self.cnn].preprocess
        return Preprocess(self.input_size, self.crop_ratio, base.mean, base.std)


def make_signature(cfg: ExtractConfig, backbone: Backbone) -> dict:
    """What a feature means: stream, network, weights, preprocessing, sampling."""
    s = cfg.sampling()
    sig = {"format_version": VERSION, "stream": cfg.stream, **backbone.signature(),
           "sampling": {"stride": s.stride, "num_frames": s.num_frames, "max_frames": s.max_frames,
                        "short_side": s.short_side},
           "precision": cfg.precision}
    if cfg.stream == "flow":
        sig["flow"] = {"method": cfg.flow_method, "scale": 16, "offset": 128}
    return sig


def video_images(path, cfg: ExtractConfig, pre: Preprocess, info: dict) -> Iterator[Tuple[int, np.ndarray]]:
    """(frame index, (3, S, S) uint8 CNN input) for each sampled position of one video."""
    if cfg.stream == "rgb":
        for i, frame in iter_frames(path, cfg.sampling(), info=info):
            yield i, prepare(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), pre)
    else:
        flow = FlowComputer(cfg.flow_method)
        for i, a, b in iter_frames(path, cfg.sampling(), pairs=True, info=info):
            yield i, prepare(flow_to_image(flow(a, b)), pre)


class VideoChunks(IterableDataset):
    """Yields dicts: ``{vid, images (n,3,S,S) uint8, indices (n,), last, meta}`` or ``{vid, error}``."""

    def __init__(self, items: Sequence[Tuple[str, str]], cfg: ExtractConfig, pre: Optional[Preprocess] = None):
        self.items, self.cfg, self.pre = list(items), cfg, pre or cfg.preprocess()

    def __iter__(self):
        w = get_worker_info()
        items = self.items if w is None else self.items[w.id::w.num_workers]
        cv2.setNumThreads(1)
        for vid, path in items:
            info: dict = {}
            imgs, idx = [], []
            try:
                for i, img in video_images(path, self.cfg, self.pre, info):
                    imgs.append(img)
                    idx.append(i)
                    if len(imgs) == self.cfg.chunk:
                        yield {"vid": vid, "images": np.stack(imgs), "indices": np.array(idx), "last": False}
                        imgs, idx = [], []
            except Exception as e:  # any failure of one video is reported, never fatal
                yield {"vid": vid, "error": str(e) or type(e).__name__, "source": str(path)}
                continue
            S = self.pre.size
            yield {"vid": vid, "images": np.stack(imgs) if imgs else np.zeros((0, 3, S, S), np.uint8),
                   "indices": np.array(idx, np.int64), "last": True,
                   "meta": {"fps": info.get("fps", 0.0), "decoded_frames": info.get("decoded_frames", 0),
                            "source": str(path)}}


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


def extract(items: Sequence[Tuple[str, str]], out, cfg: ExtractConfig,
            backbone: Optional[Backbone] = None, progress: bool = True,
            shard: Optional[Tuple[int, int]] = None) -> ExtractSummary:
    """Extract features of ``items`` ((video id, path) pairs) into the store ``out``."""
    from tqdm import tqdm

    t0 = time.time()
    device = torch.device(cfg.device)
    backbone = backbone or Backbone(cfg.cnn, cfg.layer, cfg.weights, cfg.preprocess())
    backbone = backbone.to(device)
    sig = make_signature(cfg, backbone)
    if shard:
        sig["shard"] = f"{shard[0]}/{shard[1]}"
    writer = FeatureWriter(out, sig)
    done = writer.done_ids()
    todo = [(v, str(p)) for v, p in items if v not in done]
    summary = ExtractSummary(skipped=len(items) - len(todo), out=str(out))
    ds = VideoChunks(todo, cfg, backbone.preprocess)  # crop exactly as the signature records
    workers = min(cfg.workers, len(todo))
    loader = DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    state: Dict[str, dict] = {}      # vid -> {"feats": [...], "indices": [...], "last": bool, "meta": {}}
    pending: List[Tuple[str, torch.Tensor]] = []
    bar = tqdm(total=len(todo), desc=f"extract {cfg.stream}", unit="video", disable=not progress)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")

    def run_batch():
        if not pending:
            return
        x = torch.cat([t for _, t in pending]).to(device, non_blocking=True)
        with torch.inference_mode(), autocast:
            y = backbone(x).float().cpu().numpy()
        k = 0
        for vid, t in pending:
            state[vid]["feats"].append(y[k:k + len(t)])
            k += len(t)
        pending.clear()
        summary.frames += k
        for vid in [v for v, s in state.items() if s["last"]]:
            finish(vid)

    def finish(vid):
        s = state.pop(vid)
        feats = np.concatenate(s["feats"]) if s["feats"] else np.zeros((0, backbone.dim), np.float32)
        indices = np.concatenate(s["indices"])
        if len(feats) == 0:
            writer.add_failure(vid, "no frame sampled", s["meta"].get("source", ""))
            summary.failed[vid] = "no frame sampled"
        else:
            writer.add(vid, feats.astype(np.float32), indices, s["meta"])
            summary.done += 1
        bar.update()
        el = time.time() - t0
        bar.set_postfix(frames_s=f"{summary.frames / el:.0f}", failed=len(summary.failed))

    try:
        for msg in loader:
            vid = msg["vid"]
            if "error" in msg:
                state.pop(vid, None)
                pending[:] = [(v, t) for v, t in pending if v != vid]
                writer.add_failure(vid, msg["error"], msg["source"])
                summary.failed[vid] = msg["error"]
                bar.update()
                continue
            s = state.setdefault(vid, {"feats": [], "indices": [], "last": False, "meta": {}})
            images = torch.as_tensor(msg["images"])
            s["indices"].append(np.asarray(msg["indices"]))
            if len(images):
                pending.append((vid, images))
            if msg["last"]:
                s["last"], s["meta"] = True, msg["meta"]
            if sum(len(t) for _, t in pending) >= cfg.batch_size:
                run_batch()
        run_batch()
        for vid in [v for v, s in state.items() if s["last"]]:
            finish(vid)
    finally:
        bar.close()
    writer.finalize()
    summary.seconds = time.time() - t0
    return summary


def shard_items(items: Sequence, rank: int, world: int) -> list:
    """Every ``world``-th item starting at ``rank`` (items sorted by id first)."""
    if not 0 <= rank < world:
        raise ValueError(f"shard {rank}/{world}: rank must be in [0, {world})")
    return sorted(items)[rank::world]


def shard_path(out, rank: int, world: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.shard{rank}of{world}{out.suffix}") if world > 1 else out


def env_shard() -> Optional[Tuple[int, int]]:
    """(rank, world size) set by torchrun, if any."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None
