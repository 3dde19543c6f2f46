"""The embedded dataset: real video files of moving coloured shapes with paraphrased
captions, small enough to run the whole pipeline on a laptop CPU.

Designed so the paper's findings are measurable:

* **Temporal order matters.** A clip traverses a segment of positions (or sizes) in one
  direction; the reverse clip visits the same positions. Over the frames of a clip,
  positions are distributed identically for "left" and "right" (likewise up/down,
  grow/shrink), so a single frame, or the frames in random order, cannot tell the
  direction: only their order can.
* **Flow sees motion, not colour.** Flow images encode direction and speed but no
  colour, so a flow model names the motion well and the colour by chance; an RGB model
  sees the colour at once. Fusing the two is expected to beat either.
* Motion types: translation in four directions, growing, shrinking and spinning
  (squares and triangles only: a spinning circle looks still).

Layout written (the ``generic`` dataset form): ``videos/ID.avi``, ``captions.tsv``,
``train.txt``, ``val.txt``, ``test.txt``, and ``clips.jsonl`` (the ground truth of
each clip: colour, shape, motion and per-frame centre/size/angle).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np

COLOURS = {  # name -> BGR
    "red": (40, 40, 220),
    "green": (50, 190, 50),
    "blue": (220, 90, 30),
    "yellow": (40, 220, 230),
}
SHAPES = ("circle", "square", "triangle")
SYNONYMS = {"circle": ("circle", "ball"), "square": ("square", "box"), "triangle": ("triangle", "triangle")}
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "spin")
TEMPLATES = {
    "left": ("a {c} {s} moves to the left", "a {c} {t} is moving left", "the {c} {s} slides to the left", "a {c} {t} goes left"),
    "right": ("a {c} {s} moves to the right", "a {c} {t} is moving right", "the {c} {s} slides to the right", "a {c} {t} goes right"),
    "up": ("a {c} {s} moves up", "a {c} {t} is rising", "the {c} {s} goes upward", "a {c} {t} is moving up"),
    "down": ("a {c} {s} moves down", "a {c} {t} is falling", "the {c} {s} goes downward", "a {c} {t} is moving down"),
    "grow": ("a {c} {s} grows", "a {c} {t} is getting bigger", "the {c} {s} expands", "a {c} {t} is growing larger"),
    "shrink": ("a {c} {s} shrinks", "a {c} {t} is getting smaller", "the {c} {s} contracts", "a {c} {t} is shrinking"),
    "spin": ("a {c} {s} spins", "a {c} {t} is rotating", "the {c} {s} turns around", "a {c} {t} is spinning"),
}


@dataclass
class SynthConfig:
    train: int = 240
    val: int = 40
    test: int = 80
    frames: int = 48          # frames per clip
    width: int = 128
    height: int = 96
    fps: float = 12.0
    captions_per_clip: int = 4
    seed: int = 0
    ext: str = ".avi"         # .avi (MJPG) or .mp4 (mp4v)


def combos() -> List[tuple]:
    """Every (colour, shape, motion) the dataset can show."""
    return [(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS if not (m == "spin" and s == "circle")]


def captions_for(colour: str, shape: str, motion: str, k: int, rng: np.random.Generator) -> List[str]:
    templates = TEMPLATES[motion]
    order = rng.permutation(len(templates))[:k]
    return [templates[i].format(c=colour, s=shape, t=SYNONYMS[shape][1]) for i in order]


def trajectory(motion: str, cfg: SynthConfig, rng: np.random.Generator) -> Dict[str, list]:
    """Per-frame centre (x, y), radius r and angle a (radians) of one clip."""
    W, H, T = cfg.width, cfg.height, cfg.frames
    s = np.linspace(0.0, 1.0, T)
    r0 = 0.12 * H
    x = np.full(T, rng.uniform(0.3, 0.7) * W)
    y = np.full(T, rng.uniform(0.3, 0.7) * H)
    r = np.full(T, r0)
    a = np.full(T, rng.uniform(0, math.pi / 2))
    if motion in ("left", "right"):
        span = 0.45 * W
        lo = rng.uniform(r0 + 2, W - r0 - 2 - span)
        path = lo + span * s
        x = path[::-1] if motion == "left" else path
        y = np.full(T, rng.uniform(r0 + 2, H - r0 - 2))
    elif motion in ("up", "down"):
        span = 0.45 * H
        lo = rng.uniform(r0 + 2, H - r0 - 2 - span)
        path = lo + span * s
        y = path[::-1] if motion == "up" else path  # image y grows downwards
        x = np.full(T, rng.uniform(r0 + 2, W - r0 - 2))
    elif motion in ("grow", "shrink"):
        path = (0.06 + 0.16 * s) * H
        r = path if motion == "grow" else path[::-1]
        x = np.full(T, rng.uniform(0.35, 0.65) * W)
        y = np.full(T, rng.uniform(0.35, 0.65) * H)
    elif motion == "spin":
        r = np.full(T, 0.2 * H)
        turn = rng.choice([-1.0, 1.0]) * math.pi * rng.uniform(0.8, 1.2)
        a = a + turn * s
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return {"x": x.tolist(), "y": y.tolist(), "r": r.tolist(), "a": a.tolist()}


def draw(frame: np.ndarray, shape: str, colour, x: float, y: float, r: float, a: float) -> None:
    if shape == "circle":
        cv2.circle(frame, (int(round(x * 16)), int(round(y * 16))), int(round(r * 16)), colour, -1, cv2.LINE_AA, 4)
        return
    n = 4 if shape == "square" else 3
    ang = a + np.arange(n) * 2 * math.pi / n
    pts = np.stack([x + r * np.cos(ang), y + r * np.sin(ang)], 1)
    cv2.fillPoly(frame, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, 4)


def render(shape: str, colour_name: str, traj: Dict[str, list], cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) uint8 BGR frames on a static textured background."""
    bg_colour = rng.integers(20, 70, size=3)
    noise = rng.integers(-12, 13, size=(cfg.height, cfg.width, 1))
    bg = np.clip(bg_colour[None, None, :] + noise, 0, 255).astype(np.uint8)
    colour = COLOURS[colour_name]
    frames = np.empty((cfg.frames, cfg.height, cfg.width, 3), np.uint8)
    for t in range(cfg.frames):
        f = bg.copy()
        draw(f, shape, colour, traj["x"][t], traj["y"][t], traj["r"][t], traj["a"][t])
        frames[t] = f
    return frames


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """Write BGR frames with OpenCV (MJPG in .avi, mp4v in .mp4)."""
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix == ".mp4" else "MJPG"))
    h, w = frames.shape[1:3]
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    writer = cv2.VideoWriter(str(tmp), fourcc, fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path.suffix} video to {tmp}")
    for f in frames:
        writer.write(f)
    writer.release()
    tmp.replace(path)


def generate(out_dir, cfg: SynthConfig = SynthConfig(), progress: bool = True) -> Path:
    """Write the embedded dataset to ``out_dir``; same config and seed -> same files."""
    from tqdm import tqdm

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    all_combos = combos()
    sizes = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    n_total = sum(sizes.values())
    # balanced: cycle through every combination, shuffled, before repeating one
    order: List[tuple] = []
    while len(order) < n_total:
        order += [all_combos[i] for i in rng.permutation(len(all_combos))]
    meta, caption_lines, split_ids = [], [], {s: [] for s in sizes}
    k = 0
    bar = tqdm(total=n_total, desc="synth", unit="clip", disable=not progress)
    for split, n in sizes.items():
        for _ in range(n):
            colour, shape, motion = order[k]
            vid = f"clip{k:05d}"
            k += 1
            clip_rng = np.random.default_rng([cfg.seed, k])
            traj = trajectory(motion, cfg, clip_rng)
            write_video(out / "videos" / f"{vid}{cfg.ext}", render(shape, colour, traj, cfg, clip_rng), cfg.fps)
            caps = captions_for(colour, shape, motion, cfg.captions_per_clip, clip_rng)
            caption_lines += [f"{vid}\t{c}" for c in caps]
            split_ids[split].append(vid)
            meta.append({"id": vid, "split": split, "colour": colour, "shape": shape, "motion": motion, **traj})
            bar.update()
    bar.close()
    (out / "captions.tsv").write_text("\n".join(caption_lines) + "\n")
    for split, ids in split_ids.items():
        (out / f"{split}.txt").write_text("\n".join(ids) + "\n")
    with open(out / "clips.jsonl", "w") as f:
        for m in meta:
            f.write(json.dumps(m) + "\n")
    (out / "synth_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out
