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
* ``msrvtt``: the official ``train_val_videodatainfo.json`` and ``test_videodatainfo.json``
  (both required), in ROOT or in any folder one level below it (e.g. ``ROOT/annotations/``).
  Each is an object with ``videos`` (``{video_id, split, ...}``, split ``train`` |
  ``validate`` | ``test`` -> train/val/test) and ``sentences`` (``{video_id, caption, ...}``).
  Videos: ``ROOT/TrainValVideo/ID.mp4`` and ``ROOT/TestVideo/ID.mp4``, else the file named
  ``ID.<ext>`` anywhere under ROOT.
* ``vatex``: ``vatex_training_v*.json`` (train) and ``vatex_validation_v*.json`` (val),
  both required, and the public test file with English captions
  (``vatex_public_test_english_v*.json`` or ``vatex_test_v*.json``; optional: when absent
  the test split is empty and counted in ``skipped``), in ROOT or one folder below. Each is
  a list of ``{videoID, enCap: [...], chCap: [...]}``; only ``enCap`` is read. Videos:
  ``ID.<ext>`` anywhere under ROOT (``ROOT/videos/ID.mp4`` when none is found).
* ``generic`` (and ``synthetic``, which ``s2vt synth`` writes in this form):
  ``captions.tsv`` (``video_id<TAB>caption``) with ``train.txt``/``val.txt``/``test.txt``
  id lists. Videos: ``ROOT/videos/ID.<ext>``.

Every video id obeys :func:`s2vt.data.ids.check_video_id` (so a path built from an id stays in
its folder). Bad lines or entries raise :class:`DataError` naming the file and the line or
JSON place (``videos[12].video_id``). Documented skips (empty captions, LSMDC clips that are
not M-VAD, captions of ids in no split or of unknown videos, videos without captions, a
missing VATEX test file) are counted in ``Corpus.skipped`` and shown by ``s2vt dataset-info``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from s2vt.runtime.errors import DataError, S2VTError
from s2vt.data.ids import check_video_id
from s2vt.runtime.inputs import MAX_DEPTH, check_input_file, json_depth, read_bytes
from s2vt.video.reader import VIDEO_EXTENSIONS

SPLITS = ("train", "val", "test")
ANNOTATION_MAX_BYTES = 2 ** 30  # caption and split files (the largest public ones are tens of MiB)


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
        """The video file of ``vid`` (inside ``root``: ids obey :mod:`s2vt.data.ids`)."""
        return self.path_of(check_video_id(vid, f"dataset {self.name}"))

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
    if not path.exists():
        raise DataError(path, "file not found")
    check_input_file(path, max_bytes=ANNOTATION_MAX_BYTES)  # a FIFO, socket, device or folder is named, never opened
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, f"not valid UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8", n)
            yield n, text.rstrip("\r\n")


def check_id(vid: str, path: Path, line) -> str:
    """``vid`` if it obeys :func:`s2vt.data.ids.check_video_id`, else DataError at ``path:line``
    (``line`` a line number or a JSON place). Ids become file names: none escapes its folder."""
    try:
        return check_video_id(vid)
    except S2VTError as e:
        raise DataError(path, str(e), line) from None


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
        clip, vid = check_id(cols[0], path, n), check_id(cols[1], path, n)
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
                check_id(vid, path, n)
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
            clip = check_id(f"{row[0]}_{start}_{end}", corpus_csv, n)
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


# ----------------------------------------------------------------------------- JSON annotation helpers

_JSON_KINDS = {dict: "an object", list: "a list", str: "text", int: "a number", float: "a number",
               bool: "true/false", type(None): "null"}


def _kind(value) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)


def read_json(path: Path):
    """The parsed JSON of ``path``; a bad byte or syntax error is a DataError with its place."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    try:  # a regular file of bounded size (s2vt.runtime.inputs), read without blocking
        text = read_bytes(path, max_bytes=ANNOTATION_MAX_BYTES).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not valid UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8")
    if json_depth(text) > MAX_DEPTH:
        raise DataError(path, f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON (line {e.lineno}, column {e.colno}): {e.msg}",
                        f"{e.lineno}:{e.colno}") from None
    except RecursionError:
        raise DataError(path, "malformed JSON: nested too deeply") from None


def _get(obj, key: str, kind: type, path: Path, place: str = ""):
    """``obj[key]`` checked to be a JSON ``kind``; else DataError naming ``path`` and ``place``."""
    if not isinstance(obj, dict):
        raise DataError(path, f"expected an object, found {_kind(obj)}", place or None)
    if key not in obj:
        raise DataError(path, f"missing field {key!r}", place or None)
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DataError(path, f"expected {_JSON_KINDS[kind]}, found {_kind(value)}",
                        f"{place}.{key}" if place else key)
    return value


def find_annotation(root: Path, patterns: Sequence[str]) -> Optional[Path]:
    """The one file matching any of ``patterns`` in ``root`` or a folder one level below it
    (None when there is none; DataError when there are several)."""
    found = sorted({p for pat in patterns for g in (pat, f"*/{pat}") for p in root.glob(g) if p.is_file()})
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in found)
        raise DataError(root, f"several files match {' or '.join(patterns)}: {names}; keep one")
    return found[0] if found else None


def index_videos(root: Path) -> Dict[str, Path]:
    """``{stem: path}`` of every video file under ``root``, in one walk that follows
    symlinked folders (each real folder once). On a name clash ``.mp4`` wins, then path order."""
    index: Dict[str, Path] = {}
    seen = set()
    for d, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(d)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for f in sorted(files, key=lambda f: (not f.lower().endswith(".mp4"), f)):
            stem, ext = os.path.splitext(f)
            if ext.lower() in VIDEO_EXTENSIONS and stem not in index:
                index[stem] = Path(d) / f
    return index


def _video_finder(root: Path, default: Callable[[str], Path]) -> Callable[[str], Path]:
    """``path_of``: ``default(vid)`` when that file exists, else the video of that name found
    under ``root`` (indexed once, on the first miss), else ``default(vid)``."""
    index: Optional[Dict[str, Path]] = None

    def path_of(vid: str) -> Path:
        nonlocal index
        p = default(vid)
        if p.exists():
            return p
        if index is None:
            index = index_videos(root)
        return index.get(vid, p)
    return path_of


def _splits_with_captions(split_of: Dict[str, str], captions: Dict[str, List[str]],
                          skipped: Counter) -> Dict[str, List[str]]:
    """Split lists in ``split_of`` order; videos with no caption are counted, not kept."""
    splits: Dict[str, List[str]] = {s: [] for s in SPLITS}
    for vid, split in split_of.items():
        if vid in captions:
            splits[split].append(vid)
        else:
            skipped["video without captions"] += 1
    return splits


# ----------------------------------------------------------------------------- MSR-VTT

MSRVTT_FILES = ("train_val_videodatainfo.json", "test_videodatainfo.json")
MSRVTT_SPLITS = {"train": "train", "validate": "val", "test": "test"}


def _msrvtt_videos(videos: list, path: Path, split_of: Dict[str, str], first: Dict[str, str]) -> None:
    for i, v in enumerate(videos):
        place = f"videos[{i}]"
        vid = check_id(_get(v, "video_id", str, path, place), path, f"{place}.video_id")
        split = _get(v, "split", str, path, place)
        if split not in MSRVTT_SPLITS:
            raise DataError(path, f"unknown split {split!r} (expected train, validate or test)", f"{place}.split")
        if vid in split_of:
            raise DataError(path, f"duplicate video id {vid!r} (first at {first[vid]})", f"{place}.video_id")
        split_of[vid] = MSRVTT_SPLITS[split]
        first[vid] = f"{path.name}:{place}"


def _msrvtt_sentences(sentences: list, path: Path, split_of: Dict[str, str],
                      captions: Dict[str, List[str]], skipped: Counter) -> None:
    for i, s in enumerate(sentences):
        place = f"sentences[{i}]"
        vid = _get(s, "video_id", str, path, place)
        text = _get(s, "caption", str, path, place)
        if vid not in split_of:
            check_id(vid, path, f"{place}.video_id")
            skipped["caption of an unknown video"] += 1
            continue
        _add_caption(captions, skipped, vid, text)


def load_msrvtt(root: Path) -> Corpus:
    """MSR-VTT from its two official JSON files (see the module docstring)."""
    root = Path(root)
    split_of: Dict[str, str] = {}  # every video of both files, in file order
    first: Dict[str, str] = {}
    documents = []
    for name in MSRVTT_FILES:
        path = find_annotation(root, [name])
        if path is None:
            raise DataError(root, f"MSR-VTT annotation file {name} is neither here nor one folder below "
                                  "(see data/README.md)")
        doc = read_json(path)
        if not isinstance(doc, dict):
            raise DataError(path, f"the top level must be an object with 'videos' and 'sentences', found {_kind(doc)}")
        _msrvtt_videos(_get(doc, "videos", list, path), path, split_of, first)
        documents.append((path, _get(doc, "sentences", list, path)))
    captions: Dict[str, List[str]] = {}
    skipped: Counter = Counter()
    for path, sentences in documents:
        _msrvtt_sentences(sentences, path, split_of, captions, skipped)
    splits = _splits_with_captions(split_of, captions, skipped)
    folder = {"train": "TrainValVideo", "val": "TrainValVideo", "test": "TestVideo"}
    path_of = _video_finder(root, lambda v: root / folder[split_of[v]] / f"{v}.mp4")
    return Corpus("msrvtt", root, captions, splits, path_of, skipped)


# ----------------------------------------------------------------------------- VATEX

VATEX_FILES = {"train": ("vatex_training_v*.json",), "val": ("vatex_validation_v*.json",),
               "test": ("vatex_public_test_english_v*.json", "vatex_test_v*.json")}
VATEX_OPTIONAL = ("test",)


def _vatex_entries(entries: list, path: Path, split: str, split_of: Dict[str, str], first: Dict[str, str],
                   captions: Dict[str, List[str]], skipped: Counter) -> None:
    for i, e in enumerate(entries):
        place = f"[{i}]"
        vid = check_id(_get(e, "videoID", str, path, place), path, f"{place}.videoID")
        if vid in split_of:
            raise DataError(path, f"duplicate video id {vid!r} (first at {first[vid]})", f"{place}.videoID")
        split_of[vid], first[vid] = split, f"{path.name}:{place}"
        for j, text in enumerate(_get(e, "enCap", list, path, place)):
            if not isinstance(text, str):
                raise DataError(path, f"a caption must be text, found {_kind(text)}", f"{place}.enCap[{j}]")
            _add_caption(captions, skipped, vid, text)


def load_vatex(root: Path) -> Corpus:
    """VATEX (English captions) from its JSON files (see the module docstring)."""
    root = Path(root)
    split_of: Dict[str, str] = {}
    first: Dict[str, str] = {}
    captions: Dict[str, List[str]] = {}
    skipped: Counter = Counter()
    for split, patterns in VATEX_FILES.items():
        path = find_annotation(root, patterns)
        if path is None and split in VATEX_OPTIONAL:
            skipped[f"{split} split empty: no {' or '.join(patterns)} file"] += 1
            continue
        if path is None:
            raise DataError(root, f"VATEX {split} annotation file {' or '.join(patterns)} is neither here "
                                  "nor one folder below (see data/README.md)")
        entries = read_json(path)
        if not isinstance(entries, list):
            raise DataError(path, f"the top level must be a list of {{videoID, enCap}} objects, found {_kind(entries)}")
        _vatex_entries(entries, path, split, split_of, first, captions, skipped)
    splits = _splits_with_captions(split_of, captions, skipped)
    return Corpus("vatex", root, captions, splits, _video_finder(root, lambda v: root / "videos" / f"{v}.mp4"),
                  skipped)


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
    empty_at: Dict[str, int] = {}  # first line of an empty caption, per video
    for n, (vid, text) in _split_file_lines(cap_path, 2):
        vid = check_id(vid.strip(), cap_path, n)
        if not text.strip():
            empty_at.setdefault(vid, n)
        _add_caption(captions, skipped, vid, text)
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
                why = (f"its only captions in {cap_path} are empty (first at line {empty_at[vid]})"
                       if vid in empty_at else f"it has no caption in {cap_path.name}")
                raise DataError(path, f"video id {vid!r}: {why}", n)
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
    "msrvtt": load_msrvtt,
    "vatex": load_vatex,
    "generic": load_generic,
    "synthetic": lambda root: load_generic(root, "synthetic"),
}
DATASETS = tuple(LOADERS)  # the formats --dataset names


def load_corpus(name: str, root) -> Corpus:
    """Load dataset ``name`` (a key of ``LOADERS``: msvd, mvad, msrvtt, vatex, generic, synthetic)
    from ``root``."""
    if name not in LOADERS:
        raise S2VTError(f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}")
    root = Path(root)
    if not root.exists():
        raise DataError(root, f"dataset root does not exist (see data/README.md for how to obtain {name})")
    if not root.is_dir():
        raise DataError(root, "the dataset root must be a folder (of caption and split files), not a file")
    return LOADERS[name](root)
