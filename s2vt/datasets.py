"""Caption datasets in one internal form: captions per video, video ids per split, and
the video file of each id.

Supported on-disk forms:

* ``msvd``: the S2VT caption files (``sents_{train,val,test}_lc_nopunc.txt``, lines
  ``vidN<TAB>caption``) with ``youtube_mapping.txt`` (``CLIP vidN``), or Microsoft's
  ``video_corpus.csv`` (English rows) with the same mapping. Standard split: vid1-1200
  train, vid1201-1300 val, vid1301-1970 test. Videos: ``ROOT/YouTubeClips/CLIP.avi``.
* ``mvad``: LSMDC annotation files (``*_training.csv``, ``*_val.csv``, ``*_test.csv``,
  tab-separated CLIP_ID, START_ALIGNED, END_ALIGNED, START_EXTRACTED, END_EXTRACTED,
  SENTENCE). Only M-VAD clips (ids starting with ``3``) are kept; others are counted as
  skipped. Videos: ``ROOT/MOVIE/CLIP_ID.avi``.
* ``generic`` (and ``synthetic``, which ``s2vt synth`` writes in this form):
  ``captions.tsv`` (``video_id<TAB>caption``) with ``train.txt``/``val.txt``/``test.txt``
  id lists. Videos: ``ROOT/videos/ID.<ext>``.

Bad lines raise :class:`DataError` naming file and line. Documented skips (empty
captions, LSMDC clips that are not M-VAD, captions of ids in no split) are counted in
``Corpus.skipped`` and shown by ``s2vt dataset-info``.
"""
from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

from .errors import DataError, S2VTError

SPLITS = ("train", "val", "test")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_\-.]+$")


@dataclass
class Corpus:
    """A captioned video dataset: ``captions[id] -> [str]``, ``splits[name] -> [id]``."""

    name: str
    root: Path
    captions: Dict[str, List[str]]
    splits: Dict[str, List[str]]
    path_of: Callable[[str], Path]
    skipped: Counter = field(default_factory=Counter)

    def video_path(self, vid: str) -> Path:
        return self.path_of(vid)

    def split_items(self, split: str) -> List[Tuple[str, List[str]]]:
        if split not in self.splits:
            raise S2VTError(f"dataset {self.name!r} has no split {split!r}; it has {sorted(self.splits)}")
        return [(v, self.captions[v]) for v in self.splits[split]]

    def stats(self) -> dict:
        out = {"dataset": self.name, "root": str(self.root), "splits": {}}
        for s, ids in self.splits.items():
            out["splits"][s] = {"videos": len(ids), "captions": sum(len(self.captions[v]) for v in ids)}
        out["skipped"] = dict(self.skipped)
        return out


# ----------------------------------------------------------------------------- helpers

def read_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """Yield (1-based line number, text) of a UTF-8 file; a bad byte names its line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, f"not valid UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8", n)
            yield n, text.rstrip("\r\n")


def check_id(vid: str, path: Path, line: int) -> str:
    """Video ids become file names: refuse anything that could escape the dataset root."""
    if not vid or not _SAFE_ID.match(vid) or ".." in vid:
        raise DataError(path, f"invalid video id {vid!r} (allowed: letters, digits, '_', '-', '.'; no '/' or '..')", line)
    return vid


def _add_caption(captions: Dict[str, List[str]], skipped: Counter, vid: str, text: str) -> None:
    text = " ".join(text.split())
    if not text:
        skipped["empty caption"] += 1
        return
    captions.setdefault(vid, []).append(text)


def _split_file_lines(path: Path, ncols: int, sep: str = "\t"):
    for n, line in read_lines(path):
        if not line.strip():
            continue
        cols = line.split(sep)
        if len(cols) != ncols:
            raise DataError(path, f"expected {ncols} {'tab-' if sep == chr(9) else ''}separated columns, found {len(cols)}", n)
        yield n, cols


# ----------------------------------------------------------------------------- MSVD

def msvd_split_of(vid: str) -> str:
    """The standard MSVD split of ``vidN``: 1-1200 train, 1201-1300 val, 1301-1970 test."""
    m = re.fullmatch(r"vid(\d+)", vid)
    if not m or not 1 <= int(m.group(1)) <= 1970:
        raise ValueError(f"not an MSVD video id: {vid!r}")
    k = int(m.group(1))
    return "train" if k <= 1200 else "val" if k <= 1300 else "test"


def read_youtube_mapping(path: Path) -> Dict[str, str]:
    """``CLIP vidN`` lines -> {vidN: CLIP}; duplicates on either side are errors."""
    vid_to_clip: Dict[str, str] = {}
    clips = set()
    for n, line in read_lines(path):
        if not line.strip():
            continue
        cols = line.split()
        if len(cols) != 2:
            raise DataError(path, f"expected 'CLIPNAME vidN', found {len(cols)} fields", n)
        clip, vid = check_id(cols[0], path, n), cols[1]
        try:
            msvd_split_of(vid)
        except ValueError as e:
            raise DataError(path, str(e), n)
        if vid in vid_to_clip or clip in clips:
            raise DataError(path, f"duplicate entry for {vid if vid in vid_to_clip else clip}", n)
        vid_to_clip[vid] = clip
        clips.add(clip)
    return vid_to_clip


def load_msvd(root: Path) -> Corpus:
    root = Path(root)
    mapping_path = root / "youtube_mapping.txt"
    vid_to_clip = read_youtube_mapping(mapping_path)
    captions: Dict[str, List[str]] = {}
    skipped: Counter = Counter()
    s2vt_files = [root / f"sents_{s}_lc_nopunc.txt" for s in SPLITS]
    corpus_csv = root / "video_corpus.csv"
    if all(p.is_file() for p in s2vt_files):
        for split, path in zip(SPLITS, s2vt_files):
            for n, (vid, text) in _split_file_lines(path, 2):
                if vid not in vid_to_clip:
                    raise DataError(path, f"video id {vid!r} is not in {mapping_path.name}", n)
                if msvd_split_of(vid) != split:
                    raise DataError(path, f"{vid} belongs to the {msvd_split_of(vid)} split, not {split}", n)
                _add_caption(captions, skipped, vid, text)
    elif corpus_csv.is_file():
        clip_to_vid = {c: v for v, c in vid_to_clip.items()}
        text = "\n".join(line for _, line in read_lines(corpus_csv))
        rows = csv.reader(io.StringIO(text))
        header = next(rows, None)
        want = ["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"]
        if header is None or [h.strip() for h in header[:8]] != want:
            raise DataError(corpus_csv, f"header must be {','.join(want)}", 1)
        for n, row in enumerate(rows, 2):
            if not row:
                continue
            if len(row) != 8:
                raise DataError(corpus_csv, f"expected 8 comma-separated columns, found {len(row)}", n)
            if row[6].strip() != "English":
                skipped["non-English row"] += 1
                continue
            try:
                start, end = int(row[1]), int(row[2])
            except ValueError:
                raise DataError(corpus_csv, f"Start/End must be integers, found {row[1]!r}/{row[2]!r}", n)
            if start > end:
                raise DataError(corpus_csv, f"Start {start} is after End {end}", n)
            clip = f"{row[0]}_{start}_{end}"
            if clip not in clip_to_vid:
                skipped["clip not in youtube_mapping.txt"] += 1
                continue
            _add_caption(captions, skipped, clip_to_vid[clip], row[7])
    else:
        raise DataError(root, "no MSVD captions here: expected sents_{train,val,test}_lc_nopunc.txt "
                              "or video_corpus.csv beside youtube_mapping.txt")
    splits: Dict[str, List[str]] = {s: [] for s in SPLITS}
    for vid in sorted(captions, key=lambda v: int(v[3:])):
        splits[msvd_split_of(vid)].append(vid)
    return Corpus("msvd", root, captions, splits,
                  lambda v: root / "YouTubeClips" / f"{vid_to_clip[v]}.avi", skipped)


# ----------------------------------------------------------------------------- M-VAD

_TS = re.compile(r"^(\d{1,2})\.(\d{2})\.(\d{2})\.(\d{1,3})$")


def _seconds(ts: str, path: Path, line: int) -> float:
    m = _TS.match(ts.strip())
    if not m:
        raise DataError(path, f"bad timestamp {ts!r} (expected HH.MM.SS.mmm)", line)
    h, mi, s, ms = (int(x) for x in m.groups())
    if mi >= 60 or s >= 60:
        raise DataError(path, f"bad timestamp {ts!r} (minutes and seconds must be < 60)", line)
    return h * 3600 + mi * 60 + s + ms / 1000.0


def _mvad_movie(clip: str) -> str:
    # 3001_21_JUMP_STREET_00.00.32.170-00.00.34.049 -> 3001_21_JUMP_STREET
    return clip.rsplit("_", 1)[0]


def load_mvad(root: Path) -> Corpus:
    root = Path(root)
    names = {"train": "training", "val": "val", "test": "test"}
    captions: Dict[str, List[str]] = {}
    splits: Dict[str, List[str]] = {}
    skipped: Counter = Counter()
    owner: Dict[str, str] = {}
    for split, suffix in names.items():
        found = sorted(root.glob(f"*_{suffix}.csv"))
        if not found:
            raise DataError(root, f"no LSMDC annotation file *_{suffix}.csv for the {split} split")
        if len(found) > 1:
            raise DataError(root, f"several files match *_{suffix}.csv: {[p.name for p in found]}; keep one")
        path = found[0]
        ids: Dict[str, None] = {}  # insertion-ordered set
        for n, cols in _split_file_lines(path, 6):
            clip = check_id(cols[0].strip(), path, n)
            t = [_seconds(c, path, n) for c in cols[1:5]]
            if t[0] > t[1] or t[2] > t[3]:
                raise DataError(path, "start time is after end time", n)
            if not clip.startswith("3"):
                skipped["not an M-VAD clip (id does not start with 3)"] += 1
                continue
            if owner.setdefault(clip, split) != split:
                raise DataError(path, f"clip {clip} is also in the {owner[clip]} split", n)
            ids[clip] = None
            _add_caption(captions, skipped, clip, cols[5])
        splits[split] = [c for c in ids if c in captions]
    return Corpus("mvad", root, captions, splits,
                  lambda v: root / _mvad_movie(v) / f"{v}.avi", skipped)


# ----------------------------------------------------------------------------- generic

def find_video(folder: Path, vid: str) -> Path:
    """``folder/vid.<ext>`` for the first existing video extension (``.mp4`` if none)."""
    for ext in VIDEO_EXTENSIONS:
        p = folder / f"{vid}{ext}"
        if p.exists():
            return p
    return folder / f"{vid}.mp4"


def load_generic(root: Path, name: str = "generic") -> Corpus:
    root = Path(root)
    cap_path = root / "captions.tsv"
    captions: Dict[str, List[str]] = {}
    skipped: Counter = Counter()
    for n, (vid, text) in _split_file_lines(cap_path, 2):
        _add_caption(captions, skipped, check_id(vid.strip(), cap_path, n), text)
    splits: Dict[str, List[str]] = {}
    seen: Dict[str, str] = {}
    for split in SPLITS:
        path = root / f"{split}.txt"
        ids = []
        for n, line in read_lines(path):
            vid = line.strip()
            if not vid:
                continue
            check_id(vid, path, n)
            if vid in seen:
                raise DataError(path, f"duplicate video id {vid!r} (already in {seen[vid]}.txt)", n)
            if vid not in captions:
                raise DataError(path, f"video id {vid!r} has no caption in {cap_path.name}", n)
            seen[vid] = split
            ids.append(vid)
        splits[split] = ids
    orphans = set(captions) - set(seen)
    if orphans:
        skipped["captioned video in no split"] += len(orphans)
    return Corpus(name, root, captions, splits, lambda v: find_video(root / "videos", v), skipped)


LOADERS = {
    "msvd": load_msvd,
    "mvad": load_mvad,
    "generic": load_generic,
    "synthetic": lambda root: load_generic(root, "synthetic"),
}


def load_corpus(name: str, root) -> Corpus:
    """Load dataset ``name`` (msvd, mvad, generic, synthetic) from ``root``."""
    if name not in LOADERS:
        raise S2VTError(f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}")
    root = Path(root)
    if not root.exists():
        raise DataError(root, f"dataset root does not exist (see data/README.md for how to obtain {name})")
    return LOADERS[name](root)
