"""The extraction driver: videos -> sampled frames (or flow images) -> CNN -> HDF5, with per-video
bookkeeping, the run's summary and the list of videos a command names.

Three things run at once so the wall time approaches max(decode time, CNN time):

* worker processes decode videos, compute flow and crop images (uint8 tensors, in chunks
  of at most ``chunk`` frames so a long video never sits in memory whole); each worker
  takes the next video no worker has taken yet, and its chunks reach the main process as
  soon as they are ready, in whatever order the workers finish them;
* the main process copies chunks into a staging buffer (pinned on CUDA), sends each full
  batch to the device with a non-blocking copy on a side stream, runs the CNN, and starts
  the device-to-host copy of its features; it waits for a batch only when the next one
  is already queued on the device (:mod:`s2vt.features.pipeline`);
* a writer thread (``store.BackgroundWriter``) makes finished videos durable in groups.

A video that fails at any point (decoding, no frame sampled, non-finite features) is
recorded with its reason and nothing of it is kept. Re-running skips finished videos.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from s2vt.features.backbones.registry import Backbone
from s2vt.features.config import ExtractConfig, make_signature
from s2vt.features.pipeline import Pipeline, cpu_gate, worker_chunks, worker_died_error
from s2vt.features.shards import check_shard
from s2vt.features.store import BackgroundWriter, FeatureWriter, already_complete
from s2vt.runtime.devices import configure
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.console import shown


def _int_at_least(flag: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise S2VTError(f"{flag} must be an integer >= {low}, not {value!r}")


@dataclass
class ExtractSummary:
    done: int = 0
    skipped: int = 0
    failed: Dict[str, str] = field(default_factory=dict)
    frames: int = 0
    seconds: float = 0.0
    out: str = ""

    def lines(self) -> List[str]:
        """The counts (for stdout)."""
        fps = self.frames / self.seconds if self.seconds else 0.0
        return [f"extracted {self.done} videos ({self.frames} frames, {fps:.1f} frames/s), "
                f"skipped {self.skipped} already done, failed {len(self.failed)} -> {shown(self.out)}"]

    def problems(self) -> List[str]:
        """One line per failed video (the first 20, then one line counting the rest by reason; for stderr)."""
        failed = sorted(self.failed.items())
        out = [f"failed: {v}: {r}" for v, r in failed[:20]]
        if len(failed) > 20:
            kinds = Counter(r.split(":")[0] for _, r in failed)
            out.append(f"... and {len(failed) - 20} more failed; by reason: "
                       + ", ".join(f"{k} ({n})" for k, n in kinds.most_common())
                       + " (every failure and its reason is in the store's /failed group)")
        return out


class VideoLedger:
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


def _run(todo, cfg: ExtractConfig, backbone: Backbone, device: torch.device, videos: VideoLedger) -> None:
    """The main loop: worker chunks -> Pipeline -> finished videos to the writer thread."""
    gate = cpu_gate(cfg)
    pipe = Pipeline(backbone, device, cfg.cnn_batch(), backbone.preprocess.size, cfg.precision, gate)
    try:
        for msg in worker_chunks(todo, cfg, backbone.preprocess, gate):  # crop exactly as the signature records
            if "error" in msg:
                videos.fail(msg["vid"], msg["error"], msg["source"])
                continue
            done = pipe.add(msg["vid"], msg["images"]) if len(msg["images"]) else []
            videos.chunk(msg)
            videos.rows(done)
    except RuntimeError as e:
        # raised by the loader, or by its SIGCHLD handler wherever the main thread is (a CNN batch)
        died = worker_died_error(e)
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
                _run(todo, cfg, backbone, device, VideoLedger(bg, summary, bar))
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


def video_items(paths: Sequence) -> List[Tuple[str, Path]]:
    """(id, path) of video files and of every video under folders (searched recursively). A file's id
    is its stem; under a folder, its path relative to the folder without extension, parts joined by
    ``__`` (``a/b.mp4`` -> ``a__b``), so that two folders' ``clip1.mp4`` stay apart."""
    from s2vt.data.ids import check_video_id
    from s2vt.video.reader import VIDEO_EXTENSIONS, iter_video_paths

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


# ----------------------------------------------------------------------------- benchmark


