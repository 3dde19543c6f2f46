"""Video decoding and frame sampling with OpenCV.

Frames are read sequentially and counted as they decode (a container's frame count
is a hint, not a fact). Memory stays bounded on long videos: frames are yielded one
sampled position at a time and resized at once so a 4K stream never sits in memory.

Sampling rules (documented in ``s2vt extract --help``):

* ``stride=N``: frames 0, N, 2N, ... (the paper samples one frame in every 10).
* ``num_frames=K``: K frames spread uniformly over the decoded length (needs a counting
  pass first).
* ``max_frames=M`` caps the kept frames: with a stride the first M sampled positions
  are kept; with ``num_frames`` the cap lowers K.
* A video shorter than the stride still yields its first frame, so it gets one step.
* With ``pairs=True`` each sampled frame comes with its successor (for optical flow);
  the last frame of a video is paired with its predecessor, and a 1-frame video with
  itself (zero flow).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

# a broken video is reported once, by s2vt, not also by OpenCV's and FFmpeg's loggers (each reads its
# setting when it first logs or opens a file); a user's own setting is kept
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from s2vt.runtime.errors import S2VTError  # noqa: E402

def open_capture(path) -> cv2.VideoCapture:
    """``path`` opened through FFmpeg alone, OpenCV's logger silent meanwhile: a file FFmpeg cannot
    open is reported once, by s2vt (OpenCV's own AVI reader, tried next, prints raw bytes of it)."""
    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    finally:
        log.setLogLevel(level)


@contextlib.contextmanager
def opencv_threads_stopped() -> Iterator[None]:
    """Fork worker processes inside this block. OpenCV's thread pool, once an OpenCV call in this
    process has started it, does not survive ``fork``: a child's first call into it (even
    ``cv2.setNumThreads``) waits for ever on threads that exist only in the parent. One thread
    stops the pool for the fork; the parent's setting comes back after."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


# the files a folder of videos is searched for (extract, import-features, the corpora)
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")


class VideoError(S2VTError):
    """A video file that cannot be decoded (the message is the reason)."""


SHRINK = 256  # the short side frames are shrunk to at decoding, unless a sampling says otherwise


@dataclass(frozen=True)
class Sampling:
    stride: int = 10
    num_frames: int = 0
    max_frames: int = 0
    short_side: int = SHRINK  # frames are resized so their short side is at most this; 0: kept as decoded

    def __post_init__(self):
        for flag, value, low in (("--stride", self.stride, 1), ("--num-frames", self.num_frames, 0),
                                 ("--max-frames", self.max_frames, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise S2VTError(f"{flag} must be an integer >= {low}, not {value!r}")
        s = self.short_side
        if not isinstance(s, int) or isinstance(s, bool) or not (s == 0 or s >= 16):
            raise S2VTError(f"short_side must be 0 (frames kept as decoded) or an integer >= 16, not {s!r}")


def open_video(path) -> Tuple[cv2.VideoCapture, float, int]:
    """(capture, fps, reported frame count); raises VideoError with the reason."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"file not found: {path}")
    if path.is_dir():
        raise VideoError(f"is a directory, not a video: {path}")
    if not path.is_file():
        raise VideoError(f"not a regular file (a pipe, socket or device), not a video: {path}")
    if not os.access(path, os.R_OK):
        raise VideoError(f"cannot read: permission denied: {path}")
    if path.stat().st_size == 0:
        raise VideoError(f"empty file (0 bytes): {path}")
    cap = open_capture(path)
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"cannot open: not a video, or a codec OpenCV lacks: {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return cap, float(fps), reported


def _shrink(frame: np.ndarray, short_side: int) -> np.ndarray:
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    h, w = frame.shape[:2]
    s = min(h, w)
    if short_side and s > short_side:
        scale = short_side / s
        frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return frame


def count_frames(path) -> int:
    cap, _, _ = open_video(path)
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


def _wanted(sampling: Sampling, path) -> Optional[set]:
    """Frame indices to keep when sampling uniformly; None for stride sampling."""
    if not sampling.num_frames:
        return None
    n = count_frames(path)
    k = sampling.num_frames if not sampling.max_frames else min(sampling.num_frames, sampling.max_frames)
    k = min(k, n)
    return set(np.linspace(0, n - 1, k).round().astype(int).tolist()) if n else set()


def iter_frames(path, sampling: Sampling = Sampling(), pairs: bool = False,
                info: Optional[dict] = None) -> Iterator[tuple]:
    """Yield ``(index, frame)`` (or ``(index, frame, next_frame)`` with ``pairs``), BGR uint8.

    ``info`` (a dict) receives ``fps``, ``reported_frames`` and ``decoded_frames``.
    Raises VideoError if nothing decodes, or if decoding stops well short of the
    container's frame count (a truncated file).
    """
    wanted = _wanted(sampling, path)
    cap, fps, reported = open_video(path)
    kept = 0
    n = 0
    prev = prev2 = None
    pending = None  # sampled index waiting for its successor (pairs mode)
    limit = sampling.max_frames if (sampling.max_frames and wanted is None) else 0
    try:
        while True:
            if limit and kept >= limit and pending is None:
                break
            ok = cap.grab()
            if not ok:
                break
            take = (n in wanted) if wanted is not None else (n % sampling.stride == 0)
            if limit and kept >= limit:
                take = False
            # decode pixels only where needed; near the end in pairs mode, keep the
            # predecessor of a possibly-sampled last frame
            near_end = pairs and reported > 0 and n >= reported - 2
            frame = None
            if take or pending is not None or near_end:
                ok, frame = cap.retrieve()
                if not ok or frame is None:
                    break
                frame = _shrink(frame, sampling.short_side)
            if pending is not None:
                yield pending, prev, frame
                pending = None
            if take:
                kept += 1
                if pairs:
                    pending = n
                else:
                    yield n, frame
            prev2, prev = prev, frame
            n += 1
    finally:
        cap.release()
    if pending is not None:  # the last frame was sampled: pair it with its predecessor
        yield pending, (prev2 if prev2 is not None else prev), prev
    if info is not None:
        info.update(fps=fps, reported_frames=reported, decoded_frames=n)
    if n == 0:
        raise VideoError("no frame could be decoded (corrupt or unsupported file)")
    if reported > 0 and n < 0.9 * reported and reported - n > 2 and not (limit and kept >= limit):
        raise VideoError(f"truncated: the container reports {reported} frames but only {n} decode")


def iter_video_paths(folder, extensions=None) -> Iterator[Path]:
    """Video files under ``folder`` (recursive, sorted), by extension."""
    exts = tuple(e.lower() for e in (extensions or VIDEO_EXTENSIONS))
    def unreadable(e: OSError) -> None:
        warnings.warn(f"cannot read folder {e.filename} ({e.strerror}): its videos are skipped", stacklevel=2)

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        dirnames.sort()
        for f in sorted(filenames):
            if f.lower().endswith(exts):  # dots inside a name (lecture.part.1.avi) are fine
                yield Path(dirpath) / f
