"""Features made elsewhere, in and out: ``s2vt import-features`` turns a folder of per-video
``.npy`` / ``.npz`` arrays (or an HDF5 file of one (T, D) dataset per video) into a feature
store; ``s2vt export-features`` writes a store back as one ``.npy`` per video.

Video ids come from file names: the ``.npy`` / ``.npz`` suffix is dropped, then one video
extension (``.avi``, ``.mp4`` ... as in MSVD's ``-4wsuPCjDBc_5_15.avi.npy``), so ``vid1.npy``
is ``vid1``. ``--id-map FILE`` renames: each line is ``FILE_ID VIDEO_ID`` (white space between), and
a file whose id is FILE_ID gets VIDEO_ID; files on no line keep their id (MSVD's
``youtube_mapping.txt``, ``CLIP vidN``, works as it is); a map that gives one file id two video ids,
or one video id to two file ids, is refused. An HDF5 source gives one id per top-level (T, D)
dataset, or per top-level group holding a ``features`` dataset; any other top-level entry (a link
to nothing, an external link, a named datatype, a group without ``features``) is named and skipped.

Every source is inspected before it is read (``arrayfiles``): headers, dtypes, ranks and sizes are
checked before any data is allocated, and each array must be 2-D, non-empty, finite, float16/32/64
(stored as float32; values beyond float32's range are refused), with the same D for all (the store's,
or the most common one); ``allow_pickle`` stays off. A bad array, or a name ending in ``.npy``/``.npz``
that is not a regular file, is named, recorded in the store's ``/failed`` group like a broken video,
and skipped: exit status 1, the rest imported. When nothing can be imported nothing is written
(exit status 2). Writing goes through ``store.FeatureWriter``, so a re-run resumes and a killed run
loses nothing committed; ``--overwrite`` builds the new store beside the old one and renames it
over the old only when it is complete.

``export-features`` writes a manifest (``.s2vt-export``) before any array, listing the files it
writes: they, and only they, are what a later export into that folder may replace or remove.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from s2vt.runtime.errors import S2VTError
from s2vt.runtime.fileio import SCRATCH_SUFFIX, atomic_write, check_not_other_kind, fsync_dir
from s2vt.runtime.inputs import kind_problem
from s2vt.runtime.console import shown
from s2vt.video.reader import VIDEO_EXTENSIONS
from s2vt.data.ids import check_video_id, id_problem
from s2vt.features.arrayfiles import (ArrayInfo, Unusable, inspect_h5, inspect_npy, inspect_npz, load_h5, load_npy,
                                      load_npz)
from s2vt.features.signature import IMPORTED, STREAMS
from s2vt.features.store import FORMAT as STORE_FORMAT, VERSION, FeatureStore, FeatureWriter

ARRAY_SUFFIXES = (".npy", ".npz")


def file_id(name: str) -> str:
    """The video id of an array file's name: without ``.npy``/``.npz``, then without one video extension."""
    stem = name
    for suf in ARRAY_SUFFIXES:
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
            break
    for suf in VIDEO_EXTENSIONS:
        if stem.lower().endswith(suf) and len(stem) > len(suf):
            return stem[: -len(suf)]
    return stem


def read_id_map(path, ids) -> Dict[str, str]:
    """``{file id: new id}`` from ``--id-map`` (``FILE_ID VIDEO_ID`` a line; lines of other files are
    ignored). A file id given two video ids, or a video id given to two file ids, is refused."""
    from s2vt.runtime.inputs import read_lines

    ids, out = set(ids), {}
    given: Dict[str, Tuple[str, int]] = {}  # file id -> (video id, line)
    taken: Dict[str, Tuple[str, int]] = {}  # video id -> (file id, line)
    for n, line in read_lines(path, "--id-map"):  # a regular UTF-8 file, size bounded, no control characters
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = line.split()
        if len(cols) != 2:
            raise S2VTError(f"{path}:{n}: expected two names (file id and video id), found {len(cols)}")
        src, dst = cols
        if given.get(src, (dst,))[0] != dst:
            raise S2VTError(f"{path}:{n}: {src!r} is mapped to {given[src][0]!r} on line {given[src][1]} and to "
                            f"{dst!r} here; give each file id one video id")
        if taken.get(dst, (src,))[0] != src:
            raise S2VTError(f"{path}:{n}: video id {dst!r} is given to {taken[dst][0]!r} on line {taken[dst][1]} "
                            f"and to {src!r} here; one video id names one file")
        given.setdefault(src, (dst, n))
        taken.setdefault(dst, (src, n))
        if src in ids:
            out[src] = dst
    return out


def values_problem(x: np.ndarray) -> Optional[str]:
    """Why the values of ``x`` (float16/32/64) cannot be stored as float32 features, or None."""
    if not np.isfinite(x).all():
        return "holds NaN or inf"
    if x.dtype.itemsize > 4 and np.abs(x).max() > np.finfo(np.float32).max:
        return f"holds values beyond float32's range (|x| up to {float(np.abs(x).max()):.3g} > 3.4e38)"
    return None


@dataclass
class Source:
    """The videos of an import source: ``entries`` maps id -> where (file path or HDF5 name), ``info``
    id -> its checked header (after ``inspect``); ``bad`` maps id (or file name) -> (why it cannot be
    imported, where)."""

    path: Path
    entries: Dict[str, str] = field(default_factory=dict)
    bad: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    h5: bool = False
    info: Dict[str, ArrayInfo] = field(default_factory=dict)

    def inspect(self) -> None:
        """Check the header of every entry (no data read); an entry that fails moves to ``bad``."""
        with self._h5() as f:
            for vid, where in list(self.entries.items()):
                try:
                    if self.h5:
                        self.entries[vid], self.info[vid] = inspect_h5(f, where)
                    else:
                        self.info[vid] = (inspect_npy if where.lower().endswith(".npy") else inspect_npz)(Path(where))
                except Unusable as e:
                    del self.entries[vid]
                    self.bad[vid] = (f"{self.label(where)}: {e.reason}", where)

    def label(self, where: str) -> str:
        """How messages name an entry: its file name, or its HDF5 path."""
        return shown(where if self.h5 else os.path.basename(where))

    def _h5(self):
        if not self.h5:
            return contextlib.nullcontext()
        import h5py

        return h5py.File(self.path, "r")

    def load(self, vid: str) -> np.ndarray:
        """The array of ``vid`` (its header checked by ``inspect``); Unusable saying why it cannot be read."""
        where = self.entries[vid]
        if not self.h5:
            return (load_npy if where.lower().endswith(".npy") else load_npz)(Path(where))
        with self._h5() as f:
            return load_h5(f, where, self.info[vid])


def _source_kind(src: Path) -> str:
    """'folder' or 'file' (an HDF5 file to open); S2VTError naming what ``src`` is otherwise."""
    try:
        kind = kind_problem(os.stat(src).st_mode)
    except FileNotFoundError:
        raise S2VTError(f"{shown(str(src))}: " + ("a symbolic link to nothing" if os.path.islink(src)
                                                  else "no such folder or file")) from None
    except OSError as e:
        raise S2VTError(f"{shown(str(src))}: " + ("a symbolic link loop" if e.errno == errno.ELOOP
                                                  else f"cannot read it ({e.strerror or e})")) from None
    if kind == "a folder":
        return "folder"
    if kind:
        raise S2VTError(f"{shown(str(src))} is {kind}: give a folder of .npy/.npz files or an HDF5 file")
    return "file"


def _h5_names(src: Path) -> List[str]:
    """The top-level names of the HDF5 file ``src``."""
    import h5py

    try:
        with h5py.File(src, "r") as f:
            names = list(f.keys())
            is_store = f.attrs.get("format") == STORE_FORMAT
    except OSError as e:
        raise S2VTError(f"{shown(str(src))}: not a folder of .npy/.npz files nor a readable HDF5 file ({e})")
    if is_store:
        raise S2VTError(f"{shown(str(src))} is already an s2vt feature store: give it as --features as it is, or "
                        "combine stores with `s2vt merge-features`")
    if not names:
        raise S2VTError(f"{shown(str(src))}: no top-level (T, D) dataset (or group with a 'features' dataset) "
                        "in this HDF5 file")
    return names


def scan(src, id_map: Optional[str] = None) -> Source:
    """The videos of ``src`` (a folder of arrays or an HDF5 file), ids checked and unique. Every name
    ending in ``.npy``/``.npz`` is an entry, whatever it is: one that is not a regular file is named
    and skipped like a bad array."""
    src = Path(src)
    if _source_kind(src) == "folder":
        names = sorted(n for n in os.listdir(src) if n.lower().endswith(ARRAY_SUFFIXES))
        if not names:
            raise S2VTError(f"{shown(str(src))}: no .npy or .npz files in this folder")
        found = [(file_id(n), str(src / n)) for n in names]
        out = Source(src)
    else:
        found = [(n, n) for n in _h5_names(src)]
        out = Source(src, h5=True)
    rename = read_id_map(id_map, [i for i, _ in found]) if id_map else {}
    if id_map and not rename:
        warnings.warn(f"--id-map {shown(str(id_map))} names none of the {len(found)} files of {shown(str(src))}; "
                      "their own names are the video ids")
    by_id: Dict[str, List[str]] = {}
    for fid, where in found:
        by_id.setdefault(rename.get(fid, fid), []).append(where)
    for vid, wheres in sorted(by_id.items()):
        if id_problem(vid):
            out.bad[shown(os.path.basename(wheres[0]))] = (
                f"{id_problem(vid)}; rename the file or map it with --id-map", wheres[0])
        elif len(wheres) > 1:
            out.bad[vid] = (f"several files give the id {vid!r}: "
                            f"{', '.join(shown(os.path.basename(w)) for w in wheres)}", wheres[0])
        else:
            out.entries[vid] = wheres[0]
    return out


def import_signature(name: str, stream: str, dim: int) -> dict:
    return {"format_version": VERSION, "stream": stream, "backbone": IMPORTED + name, "dim": int(dim)}


@dataclass
class ImportSummary:
    done: int = 0
    skipped: int = 0
    failed: Dict[str, str] = field(default_factory=dict)
    out: str = ""

    def lines(self) -> List[str]:
        """The counts (for stdout)."""
        return [f"imported {self.done} videos, skipped {self.skipped} already in the store, "
                f"refused {len(self.failed)} -> {shown(self.out)}"]

    def problems(self) -> List[str]:
        """One line per refused file (for stderr)."""
        return [f"refused: {k}: {r}" for k, r in sorted(self.failed.items())]


def _check_out(out: Path, src: Path, id_map: Optional[str]) -> None:
    """Refuse an ``--out`` that is a folder, a FIFO, socket or device, one of the inputs, or inside the source
    folder: nothing is written or removed before this passes."""
    if out.is_dir():
        raise S2VTError(f"--out {out} is a folder; give the HDF5 file to write (e.g. {out / 'features.h5'})")
    if out.exists() and not out.is_file():
        raise S2VTError(f"--out {out} is {kind_problem(os.stat(out).st_mode)}; give the HDF5 file to write")
    for given, what in ((src, "the source"), (id_map, "the --id-map file")):
        if given and out.exists() and Path(given).exists() and os.path.samefile(out, given):
            raise S2VTError(f"--out {out} is {what}; choose another output path")
    if src.is_dir():
        folder, parent = src.resolve(), out.absolute().parent.resolve()
        if parent == folder or folder in parent.parents:
            raise S2VTError(f"--out {out} is inside the source folder {src}; write the store elsewhere")


def _resumable(out: Path, overwrite: bool) -> Optional[FeatureStore]:
    """The store at ``out`` this run adds to (None: a new one, or ``overwrite`` replaces what is there)."""
    if overwrite or not out.exists():
        return None
    try:
        return FeatureStore(out)
    except S2VTError:
        raise S2VTError(f"--out {out} exists and is not a feature store; pass --overwrite to replace it "
                        "(it is replaced only once the new store is complete)") from None


def _store_dim(existing: Optional[FeatureStore], source: Source, src) -> int:
    """The feature width: the resumed store's, else the most common D among the headers (the smaller on ties);
    S2VTError when no array can be imported (nothing is written then)."""
    dims = Counter(info.shape[1] for info in source.info.values())
    if existing is not None:
        return existing.signature.get("dim")
    if dims:
        return max(dims.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    raise _nothing({k: reason for k, (reason, _) in source.bad.items()}, src)


def _nothing(failed: Dict[str, str], src) -> S2VTError:
    first = min(failed.items(), default=None)
    return S2VTError(f"{shown(str(src))}: no array can be imported (e.g. {first[0]}: {first[1]}); nothing "
                     "was written" if first else f"{shown(str(src))}: nothing to import")


def _one(source: Source, vid: str, dim: int) -> np.ndarray:
    """The (T, D) float32 features of ``vid``; Unusable saying why they cannot be imported."""
    if source.info[vid].shape[1] != dim:
        raise Unusable(f"D = {source.info[vid].shape[1]}, but the other features have D = {dim}")
    x = source.load(vid)
    problem = values_problem(x)
    if problem:
        raise Unusable(problem)
    return np.asarray(x, np.float32)


def _write(writer: FeatureWriter, source: Source, dim: int, summary: "ImportSummary") -> None:
    """Stage every entry of ``source`` not already done, and every failure."""
    done = writer.done_ids()
    for key, (reason, where) in source.bad.items():
        summary.failed[key] = reason
        if not id_problem(key) and key not in done:
            writer.add_failure(key, reason, shown(where))
    for vid, where in source.entries.items():
        if vid in done:
            summary.skipped += 1
            continue
        try:
            x = _one(source, vid, dim)
        except Unusable as e:
            reason = f"{source.label(where)}: {e.reason}"
            summary.failed[vid] = reason
            writer.add_failure(vid, reason, shown(where))
            continue
        writer.add(vid, x, np.arange(len(x), dtype=np.int64),
                   {"fps": 0.0, "decoded_frames": int(len(x)), "source": shown(str(where))})
        summary.done += 1


def import_features(src, out, name: str, stream: str = "rgb", id_map: Optional[str] = None,
                    overwrite: bool = False) -> ImportSummary:
    """Import the arrays of ``src`` into the store ``out`` (resumable; see the module notes). With
    ``overwrite`` a new store replaces ``out`` only once it is complete; until then ``out`` is untouched,
    and a run that fails, or finds nothing to import, leaves it as it was."""
    check_video_id(name, "--name")
    if stream not in STREAMS:
        raise S2VTError(f"--stream must be rgb or flow, not {stream!r}")
    out, src = Path(out), Path(src)
    _check_out(out, src, id_map)
    source = scan(src, id_map)
    source.inspect()
    existing = _resumable(out, overwrite)
    dim = _store_dim(existing, source, src)
    summary = ImportSummary(out=str(out))
    writer = FeatureWriter(out, import_signature(name, stream, dim), replace=overwrite)
    try:
        _write(writer, source, dim, summary)
        if not summary.done and not summary.skipped and writer.existing is None:
            writer.abandon()  # every array failed as it was read: no store, and the one at --out untouched
            raise _nothing(summary.failed, src)
        writer.finalize()
    except BaseException:
        writer.close()  # what was committed stays for the re-run
        raise
    return summary


MANIFEST = ".s2vt-export"  # written before any array: the folder's files export-features may replace


def _read_manifest(out: Path) -> Optional[dict]:
    """``{"store": path, "files": [names]}`` of an earlier export into ``out``; None when there was none
    (or its manifest cannot be read: then nothing in the folder counts as written by it)."""
    from s2vt.runtime.inputs import read_json

    if not (out / MANIFEST).exists():
        return None
    try:
        m = read_json(out / MANIFEST)
    except S2VTError:
        return None
    ok = isinstance(m, dict) and isinstance(m.get("store"), str) and isinstance(m.get("files"), list)
    return {"store": m["store"], "files": [f for f in m["files"] if isinstance(f, str) and f.endswith(".npy")
                                           and "/" not in f and not f.startswith(".")]} if ok else None


def _check_export_folder(out: Path, store: FeatureStore, names: set, overwrite: bool) -> set:
    """The files of an earlier export in ``out`` (its manifest's); S2VTError when ``out`` holds files
    export-features did not write, or another store's export, and ``overwrite`` is not set."""
    check_not_other_kind(out)
    if not out.is_dir():
        return set()
    earlier = _read_manifest(out)
    ours = set(earlier["files"]) if earlier else set()
    present = [n for n in os.listdir(out) if n != MANIFEST and not n.endswith(SCRATCH_SUFFIX)]
    foreign = sorted(shown(n) for n in present if n not in ours)
    if earlier and earlier["store"] != str(store.path.resolve()) and not overwrite:
        raise S2VTError(f"--out {out} holds an export of another store ({earlier['store']}); pass --overwrite "
                        "to replace it (only the files its manifest lists are removed), or choose another folder")
    if foreign and not overwrite:
        raise S2VTError(f"--out {out} is not empty and holds files export-features did not write (e.g. "
                        f"{foreign[0]}); give an empty or new folder, or pass --overwrite (files of the same "
                        "names are replaced, others kept)")
    blocked = sorted(n for n in names if (out / n).exists() and not (out / n).is_file())
    if blocked:  # a folder or FIFO of that name: never replaced
        raise S2VTError(f"--out {out}: {shown(blocked[0])} is {kind_problem(os.stat(out / blocked[0]).st_mode)}, "
                        "not a file; move it away")
    return {n for n in ours if (out / n).is_file() or (out / n).is_symlink()}


def export_features(store_path, out_dir, overwrite: bool = False) -> int:
    """One ``ID.npy`` (float32, (T, D)) per video of the store. The folder's manifest (written first)
    lists the files an export wrote: a re-export of the same store replaces them; files it did not
    write, or another store's export, are replaced only with ``overwrite``, and then only the files
    the earlier manifest lists (and those of the names written now) are removed. Returns the count."""
    store = FeatureStore(store_path)
    out = Path(out_dir)
    names = {f"{v}.npy" for v in store.ids}
    earlier = _check_export_folder(out, store, names, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, store, names | earlier)  # a crash from here leaves every file it may touch listed
    for name in sorted(earlier - names):
        (out / name).unlink(missing_ok=True)
    for vid in store.ids:
        x = np.ascontiguousarray(store.features(vid), np.float32)
        atomic_write(out / f"{vid}.npy", lambda f, x=x: np.save(f, x, allow_pickle=False))
    _write_manifest(out, store, names)
    fsync_dir(out)
    return len(store.ids)


def _write_manifest(out: Path, store: FeatureStore, names: set) -> None:
    atomic_write(out / MANIFEST, json.dumps({"written_by": "s2vt export-features", "store": str(store.path.resolve()),
                                             "files": sorted(names)}, indent=1, ensure_ascii=False) + "\n")
