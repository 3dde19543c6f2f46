"""Helpers that write small test videos with OpenCV."""
from pathlib import Path

import cv2
import numpy as np


def write(path, frames, fps=10.0, fourcc="MJPG", is_color=True):
    path = Path(path)
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h), is_color)
    assert vw.isOpened(), f"cannot write {path}"
    for f in frames:
        vw.write(f)
    vw.release()
    return path


def moving_square(n=20, w=64, h=48, dx=2, seed=0):
    """A textured square moving dx pixels per frame to the right on a textured background."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    tex = rng.integers(120, 255, (12, 12, 3), dtype=np.uint8)
    frames = []
    for t in range(n):
        f = bg.copy()
        x = 6 + (dx * t) % (w - 18)  # wraps around on long clips
        f[18:30, x:x + 12] = tex
        frames.append(f)
    return frames


def numbered(n=30, w=32, h=24):
    """Frame t is filled with grey level 8*t (decodes back to roughly that value)."""
    return [np.full((h, w, 3), min(255, 8 * t), np.uint8) for t in range(n)]
