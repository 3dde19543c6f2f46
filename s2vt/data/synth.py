"""The embedded dataset: real video files of moving coloured shapes with paraphrased
captions, small enough to run the whole pipeline on a laptop CPU.

Designed so the paper's findings are measurable:

* **Temporal order matters.** A clip traverses a segment of positions (or sizes) in one
  direction; the reverse clip visits the same positions. Over the frames of a clip,
  positions are distributed identically for "left" and "right" (likewise up/down,
  grow/shrink), so a single frame, or the frames in random order, cannot tell the
  direction: only their order can. Captions of opposite motions share every other
  word ("a red ball moves to the left" / "... to the right").
* **Position is visible to a CNN.** The static backdrop has a layout shared by all clips
  (brighter to the right, more magenta downwards; see ``background``), so the pooled
  features of a frame change with where the shape is, and ordered frames reveal the
  direction of travel.
* **Flow sees motion, not colour.** Flow images encode direction and speed but no
  colour, so a flow model names the motion well and the colour by chance; an RGB model
  sees the colour at once. Fusing the two is expected to beat either.
* Motion types: translation in four directions, growing, shrinking and spinning
  (squares and triangles only: a spinning circle looks still).

Layout written (the ``generic`` dataset form): ``videos/ID.avi``, ``captions.tsv``,
``train.txt``, ``val.txt``, ``test.txt``, ``clips.jsonl`` (the ground truth of each
clip: split, colour, shape, motion and per-frame centre/size/angle) and
``synth_config.json``. Clips are rendered by a process pool; each clip has its own
generator seeded by (seed, clip index), so every file is byte-identical for any number
of workers. ``s2vt.data.attributes`` scores captions against ``clips.jsonl``.
"""
from __future__ import annotations

import errno
import json
import math
import re
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from s2vt.runtime.config import check_fields, option
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.fileio import atomic_write, check_not_other_kind, fsync_dir
from s2vt.data.corpora import SPLITS
from s2vt.runtime.workers import DieWithParent, usable_cores, worker_context
from s2vt.video.reader import open_capture

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
# the words that name each motion in the captions above (s2vt.data.attributes parses with them)
MOTION_WORDS = {
    "left": ("left", "leftward", "leftwards"),
    "right": ("right", "rightward", "rightwards"),
    "up": ("up", "upward", "upwards", "rising", "rises"),
    "down": ("down", "downward", "downwards", "falling", "falls"),
    "grow": ("grows", "growing", "bigger", "larger", "expands", "expanding"),
    "shrink": ("shrinks", "shrinking", "smaller", "contracts", "contracting"),
    "spin": ("spins", "spinning", "rotating", "rotates", "turns", "turning"),
}


@dataclass
class SynthConfig:
    train: int = option(240, "clips in the train split", low=1, high=1_000_000)
    val: int = option(40, "clips in the val split", low=0, high=1_000_000)
    test: int = option(80, "clips in the test split", low=0, high=1_000_000)
    frames: int = option(48, "frames per clip", low=2, high=10_000)
    width: int = option(128, "frame width in pixels (even)", low=32, high=4096)
    height: int = option(96, "frame height in pixels (even)", low=32, high=4096)
    fps: float = option(12.0, "frame rate of the files", low=0.0, low_open=True, high=1000.0)
    captions_per_clip: int = option(4, "paraphrased captions per clip", low=1, high=4)
    seed: int = option(0, "random seed (same seed, same bytes)", low=0)
    ext: str = option(".avi", "container: .avi (MJPG) or .mp4 (mp4v)", choices=(".avi", ".mp4"))

    def __post_init__(self):
        check_fields(self)
        if self.width % 2 or self.height % 2:  # MJPG and mp4v both write odd sizes rounded down
            raise S2VTError(f"--width {self.width} --height {self.height}: frame sizes must be even (the video "
                            "encoders would round them down)")


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


def background(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 BGR static backdrop: a per-clip base colour and pixel texture over a
    layout shared by every clip (brightness rising from left to right, a magenta tint
    growing from top to bottom), neither of which is an object colour.

    Why the layout: a CNN's pooled features barely encode *where* a shape is on a flat
    backdrop (a linear probe on EfficientNet-Lite0 features recovers the x position with
    R^2 < 0.2), so frame order could not reveal the direction. With the layout, the part
    of the backdrop a shape covers, and its contrast, change with position (R^2 ~0.6-0.7).
    """
    H, W = cfg.height, cfg.width
    base = rng.integers(20, 60, size=3)
    noise = rng.integers(-12, 13, size=(H, W, 1))
    xs = np.linspace(0.0, 1.0, W)[None, :, None]
    ys = np.linspace(0.0, 1.0, H)[:, None, None]
    layout = 150 * xs + ys * np.array([80.0, -30.0, 80.0])  # BGR: brighter rightwards, magenta downwards
    return np.clip(base[None, None, :] + noise + layout, 0, 255).astype(np.uint8)


def render(shape: str, colour_name: str, traj: Dict[str, list], cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) uint8 BGR frames: the shape over a static backdrop (``background``)."""
    bg = background(cfg, rng)
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
    # OpenCV reports no failed write (a full disk): the file must hold every frame before it is published
    cap = open_capture(tmp)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    if n != len(frames):
        tmp.unlink(missing_ok=True)
        raise OSError(errno.EIO, f"the video was not written completely ({n} of {len(frames)} frames readable; "
                                 "is the disk full?)", str(path))
    tmp.replace(path)


MARKER = ".s2vt-synth"  # written first: the folder is generate's to replace with overwrite=True
OWN_FILES = ("captions.tsv", "train.txt", "val.txt", "test.txt", "clips.jsonl", "synth_config.json", MARKER)
CLIP_FILE = re.compile(r"clip\d{5}\.(avi|mp4)$")  # the clips generate writes in videos/ (via clipNNNNN.part.EXT)


def plan(cfg: SynthConfig) -> List[Tuple[int, str, str, tuple]]:
    """Every clip to write, in order: (index, video id, split, (colour, shape, motion)).

    Balanced: cycles through every combination, shuffled, before repeating one.
    """
    rng = np.random.default_rng(cfg.seed)
    all_combos = combos()
    sizes = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    order: List[tuple] = []
    while len(order) < sum(sizes.values()):
        order += [all_combos[i] for i in rng.permutation(len(all_combos))]
    splits = [s for s in SPLITS for _ in range(sizes[s])]
    return [(k, f"clip{k:05d}", split, order[k]) for k, split in enumerate(splits)]


def make_clip(job) -> Tuple[dict, List[str]]:
    """Render and write one clip; returns its clips.jsonl record and its captions.

    ``job = (index, vid, split, combo, cfg, videos_dir)``. The clip's random generator is
    seeded by (cfg.seed, index + 1) alone, so the bytes do not depend on which process
    writes it or in which order.
    """
    k, vid, split, (colour, shape, motion), cfg, videos = job
    clip_rng = np.random.default_rng([cfg.seed, k + 1])
    traj = trajectory(motion, cfg, clip_rng)
    write_video(Path(videos) / f"{vid}{cfg.ext}", render(shape, colour, traj, cfg, clip_rng), cfg.fps)
    caps = captions_for(colour, shape, motion, cfg.captions_per_clip, clip_rng)
    return {"id": vid, "split": split, "colour": colour, "shape": shape, "motion": motion, **traj}, caps


def _init_worker(die_with_parent: DieWithParent) -> None:
    die_with_parent()  # a killed run leaves no worker waiting for clips
    cv2.setNumThreads(1)  # one clip per process: no nested thread pools


def _listed_clips(out: Path) -> set:
    """The clip files a previous ``generate`` planned in ``out``: the names its marker lists (written
    before any clip), and those of its clips.jsonl."""
    names = set()
    try:
        names |= {line.strip() for line in (out / MARKER).read_text().splitlines()}
    except (OSError, UnicodeDecodeError):
        pass
    try:
        ext = json.loads((out / "synth_config.json").read_text()).get("ext", ".avi")
        names |= {json.loads(line)["id"] + ext for line in (out / "clips.jsonl").read_text().splitlines() if line}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return {n for n in names if CLIP_FILE.fullmatch(n)}


def remove_dataset(out: Path) -> None:
    """Delete what a previous ``generate`` wrote in ``out`` (its files and the clips it listed), nothing else."""
    videos = out / "videos"
    for name in _listed_clips(out):
        stem, ext = name.rsplit(".", 1)
        for f in (videos / name, videos / f"{stem}.part.{ext}"):
            if f.is_file() and not f.is_symlink():
                f.unlink()
    for name in OWN_FILES:
        (out / name).unlink(missing_ok=True)
    if videos.is_dir() and not any(videos.iterdir()):
        videos.rmdir()


def _prepare(out: Path, overwrite: bool, clips: List[str]) -> None:
    check_not_other_kind(out, "")
    if out.is_dir() and any(out.iterdir()):
        ours = (out / MARKER).exists() or (out / "synth_config.json").exists()
        if not ours:
            raise S2VTError(f"{out} is not empty and was not written by `s2vt synth` (no {MARKER} file); "
                            "choose an empty folder")
        if not overwrite:
            raise S2VTError(f"{out} holds a dataset written by `s2vt synth`; choose an empty folder, or pass "
                            "overwrite=True (`s2vt synth --overwrite`) to replace it (only its own files are "
                            "removed)")
    ours = _listed_clips(out) if out.is_dir() else set()
    taken = sorted(c for c in clips if (out / "videos" / c).exists() and c not in ours)
    if taken:  # a file of the user's under a name this dataset needs: never overwritten
        raise S2VTError(f"{out / 'videos' / taken[0]} exists and was not written by `s2vt synth`"
                        f"{f' (and {len(taken) - 1} more)' if len(taken) > 1 else ''}: move it away, or write the "
                        "dataset to another folder")
    if overwrite and out.is_dir() and any(out.iterdir()):
        remove_dataset(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    # the clips are listed before any is written, so --overwrite removes these and no other file
    atomic_write(out / MARKER, "written by s2vt synth; `s2vt synth --overwrite` may replace this folder and the "
                               "clips listed below in videos/\n" + "".join(f"{c}\n" for c in clips))


def _clips(jobs: list, workers: int, progress: bool):
    """Yield make_clip results in job order, from ``workers`` processes (1: this process)."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synth", unit="clip", disable=not progress)
    if workers <= 1:
        for job in jobs:
            yield make_clip(job)
            bar.update()
    else:
        # fork: workers start at once and need no importable __main__; they only run numpy and
        # single-threaded OpenCV, so the parent's threads (torch, OpenCV) cannot deadlock them
        ctx = worker_context()
        chunk = max(1, min(8, len(jobs) // (4 * workers)))
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(DieWithParent(),)) as pool:
            try:
                for res in pool.map(make_clip, jobs, chunksize=chunk):
                    yield res
                    bar.update()
            except BrokenProcessPool:
                raise S2VTError("a synth worker died (killed, or out of memory); the dataset is incomplete: "
                                "re-run the same command with --overwrite (with fewer --workers if memory "
                                "ran out)") from None
    bar.close()


def default_workers(n_clips: int) -> int:
    """All usable cores, but at least 8 clips per process (a process costs ~1 s to start)."""
    return max(1, min(usable_cores(), n_clips // 8))


def generate(out_dir, cfg: SynthConfig = SynthConfig(), progress: bool = True, workers: Optional[int] = None,
             overwrite: bool = False) -> Path:
    """Write the embedded dataset to ``out_dir``; same config and seed -> byte-identical files.

    workers: processes rendering clips (None: all cores; 1: this process); the files do
    not depend on it. A non-empty ``out_dir`` is refused unless an earlier ``generate``
    wrote it (its marker file) and ``overwrite`` is set, which first removes what that
    run wrote there (never other files).
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise S2VTError(f"--workers {workers}: need at least 1 process")
    out = Path(out_dir)
    clips = plan(cfg)
    _prepare(out, overwrite, [vid + cfg.ext for _, vid, _, _ in clips])
    jobs = [(k, vid, split, combo, cfg, str(out / "videos")) for k, vid, split, combo in clips]
    workers = default_workers(len(jobs)) if workers is None else max(1, min(workers, len(jobs)))
    meta, caption_lines = [], []
    for m, caps in _clips(jobs, workers, progress):
        meta.append(m)
        caption_lines += [f"{m['id']}\t{c}" for c in caps]
    atomic_write(out / "captions.tsv", "\n".join(caption_lines) + "\n")
    for split in SPLITS:
        atomic_write(out / f"{split}.txt", "".join(f"{m['id']}\n" for m in meta if m["split"] == split) or "\n")
    atomic_write(out / "clips.jsonl", "".join(json.dumps(m) + "\n" for m in meta))
    atomic_write(out / "synth_config.json", json.dumps(asdict(cfg), indent=2))
    fsync_dir(out)
    return out
