"""Features made elsewhere, in and out: ``s2vt import-features`` turns a folder of per-video
``.npy`` / ``.npz`` arrays (or an HDF5 file of one (T, D) dataset per video) into a feature
store; ``s2vt export-features`` writes a store back as one ``.npy`` per video.

Video ids come from file names: the ``.npy`` / ``.npz`` suffix is dropped, then one video
extension (``.avi``, ``.mp4`` ... as in MSVD's ``-4wsuPCjDBc_5_15.avi.npy``), so ``vid1.npy``
is ``vid1``. ``--id-map FILE`` renames: each line is ``FILE_ID VIDEO_ID`` (white space between), and a
file whose id is FILE_ID gets VIDEO_ID; files on no line keep their id (MSVD's
``youtube_mapping.txt``, ``CLIP vidN``, works as it is). An HDF5 source gives one id per top-level (T, D) dataset, or per
top-level group holding a ``features`` dataset.

Every array is checked: 2-D, at least one row, the same D for all (the store's, or the most
common one), finite, float16/32/64 (stored as float32); ``allow_pickle`` stays off. A bad
array is named, recorded in the store's ``/failed`` group like a broken video, and skipped:
exit status 1, the rest imported. Writing goes through ``store.FeatureWriter``, so a re-run
resumes and a killed run loses nothing committed.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from s2vt.runtime.errors import S2VTError
from s2vt.video.reader import VIDEO_EXTENSIONS
from s2vt.runtime.fileio import atomic_write, fsync_dir
from s2vt.data.ids import check_video_id, id_problem
from s2vt.features.signature import IMPORTED, STREAMS
from s2vt.features.store import VERSION, FeatureStore, FeatureWriter, discard_stage, stage_dir

ARRAY_SUFFIXES = (".npy", ".npz")
FLOATS = ("float16", "float32", "float64")


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
    """``{file id: new id}`` from ``--id-map`` (``FILE_ID VIDEO_ID`` a line; lines of other files are ignored)."""
    from s2vt.runtime.inputs import read_lines

    ids, out = set(ids), {}
    for n, line in read_lines(path, "--id-map"):  # a regular UTF-8 file, size bounded, no control characters
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = line.split()
        if len(cols) != 2:
            raise S2VTError(f"{path}:{n}: expected two names (file id and video id), found {len(cols)}")
        if cols[0] in ids:
            out[cols[0]] = cols[1]
    return out


def check_array(x: np.ndarray, dim: Optional[int] = None) -> Optional[str]:
    """Why ``x`` cannot be a video's features, or None."""
    if x.dtype.name not in FLOATS:
        return f"dtype {x.dtype} is not float16/32/64"
    if x.ndim != 2:
        return f"shape {x.shape} is not 2-D (frames, D)"
    if x.shape[0] == 0 or x.shape[1] == 0:
        return f"shape {x.shape} is empty"
    if dim is not None and x.shape[1] != dim:
        return f"D = {x.shape[1]}, but the other features have D = {dim}"
    if not np.isfinite(x).all():
        return "holds NaN or inf"
    return None


def _load_file(p: Path) -> np.ndarray:
    """The array of one ``.npy`` / ``.npz`` file (pickles refused); ValueError/OSError saying why not."""
    if p.suffix.lower() == ".npy":
        return np.load(p, allow_pickle=False, mmap_mode="r")
    with np.load(p, allow_pickle=False) as z:
        keys = list(z.keys())
        key = "features" if "features" in keys else keys[0] if len(keys) == 1 else None
        if key is None:
            raise ValueError(f"holds {len(keys)} arrays and none named 'features'")
        return z[key]


@dataclass
class Source:
    """The videos of an import source: ``entries`` maps id -> where (file path or HDF5 name);
    ``bad`` maps id (or file name) -> why it cannot be imported."""

    path: Path
    entries: Dict[str, str] = field(default_factory=dict)
    bad: Dict[str, Tuple[str, str]] = field(default_factory=dict)  # key -> (reason, source)
    h5: bool = False

    def load(self, vid: str) -> np.ndarray:
        where = self.entries[vid]
        if not self.h5:
            return _load_file(Path(where))
        import h5py

        with h5py.File(self.path, "r") as f:
            return f[where][()]


def scan(src, id_map: Optional[str] = None) -> Source:
    """The videos of ``src`` (a folder of arrays or an HDF5 file), ids checked and unique."""
    src = Path(src)
    found: List[Tuple[str, str]] = []  # (file id, where)
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in ARRAY_SUFFIXES)
        if not files:
            raise S2VTError(f"{src}: no .npy or .npz files in this folder")
        found = [(file_id(p.name), str(p)) for p in files]
        out = Source(src)
    elif src.is_file():
        import h5py

        try:
            with h5py.File(src, "r") as f:
                for name, obj in f.items():
                    if isinstance(obj, h5py.Dataset):
                        found.append((name, name))
                    elif isinstance(obj.get("features"), h5py.Dataset):
                        found.append((name, f"{name}/features"))
        except OSError as e:
            raise S2VTError(f"{src}: not a folder of .npy/.npz files nor a readable HDF5 file ({e})")
        if not found:
            raise S2VTError(f"{src}: no top-level (T, D) dataset (or group with a 'features' dataset) in this HDF5 file")
        out = Source(src, h5=True)
    else:
        raise S2VTError(f"{src}: no such folder or file")
    rename = read_id_map(id_map, [i for i, _ in found]) if id_map else {}
    by_id: Dict[str, List[str]] = {}
    for fid, where in found:
        by_id.setdefault(rename.get(fid, fid), []).append(where)
    for vid, wheres in sorted(by_id.items()):
        if id_problem(vid):
            out.bad[os.path.basename(wheres[0])] = (f"{id_problem(vid)}; rename the file or map it with --id-map", wheres[0])
        elif len(wheres) > 1:
            out.bad[vid] = (f"several files give the id {vid!r}: {', '.join(os.path.basename(w) for w in wheres)}",
                            wheres[0])
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
        out = [f"imported {self.done} videos, skipped {self.skipped} already in the store, "
               f"refused {len(self.failed)} -> {self.out}"]
        return out + [f"  refused: {k}: {r}" for k, r in sorted(self.failed.items())]


def _shapes(source: Source) -> Iterator[Tuple[str, Optional[tuple], Optional[str]]]:
    """(id, shape or None, load error or None) of every entry, reading headers where possible."""
    for vid in source.entries:
        try:
            x = source.load(vid)
            yield vid, tuple(x.shape), None
        except (ValueError, OSError, KeyError, EOFError) as e:
            why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            if "object" in why.lower() or "pickle" in why.lower():
                why = "holds Python objects (a pickle): only numeric arrays are read (allow_pickle stays off)"
            yield vid, None, why


def _open_target(out: Path, src, overwrite: bool) -> Optional[FeatureStore]:
    """The store being resumed at ``out`` (None: a new one); with ``overwrite``, what was there is removed."""
    if out.is_dir():
        raise S2VTError(f"--out {out} is a folder; give the HDF5 file to write (e.g. {out / 'features.h5'})")
    if out.exists() and src and Path(src).exists() and out.resolve() == Path(src).resolve():
        raise S2VTError(f"--out {out} is the source; choose another output path")
    existing = None
    if out.exists():
        try:
            existing = FeatureStore(out)
        except S2VTError:
            if not overwrite:
                raise S2VTError(f"--out {out} exists and is not a feature store; pass --overwrite to replace it")
        if overwrite:
            out.unlink()
            existing = None
    if overwrite and stage_dir(out).exists():
        discard_stage(out)
    return existing


def _store_dim(existing: Optional[FeatureStore], shapes, source, src) -> int:
    """The feature width: the resumed store's, else the most common D among the arrays (the smaller on ties)."""
    dims = Counter(s[1] for _, s, err in shapes if err is None and len(s) == 2 and s[1] > 0)
    if existing is not None:
        dim = existing.signature.get("dim")
    elif dims:
        dim = max(dims.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    else:
        dim = None
    if dim is None:
        first = next(iter(source.bad.items()), None) or next(((v, (e or f"shape {s}", "")) for v, s, e in shapes), None)
        raise S2VTError(f"{src}: no array can be imported (e.g. {first[0]}: {first[1][0]})" if first
                        else f"{src}: nothing to import")
    return dim


def import_features(src, out, name: str, stream: str = "rgb", id_map: Optional[str] = None,
                    overwrite: bool = False) -> ImportSummary:
    """Import the arrays of ``src`` into the store ``out`` (resumable; see the module notes)."""
    check_video_id(name, "--name")
    if stream not in STREAMS:
        raise S2VTError(f"--stream must be rgb or flow, not {stream!r}")
    out = Path(out)
    existing = _open_target(out, src, overwrite)
    source = scan(src, id_map)
    summary = ImportSummary(out=str(out))
    shapes = list(_shapes(source))
    dim = _store_dim(existing, shapes, source, src)
    writer = FeatureWriter(out, import_signature(name, stream, dim))
    try:
        done = writer.done_ids()
        for key, (reason, where) in source.bad.items():
            summary.failed[key] = reason
            if not id_problem(key) and key not in done:
                writer.add_failure(key, reason, where)
        for vid, shape, err in shapes:
            where = source.entries[vid]
            if vid in done:
                summary.skipped += 1
                continue
            if err is None:
                x = source.load(vid)
                err = check_array(x, dim)
            if err is not None:
                reason = f"{os.path.basename(where)}: {err}"
                summary.failed[vid] = reason
                writer.add_failure(vid, reason, where)
                continue
            x = np.asarray(x, np.float32)
            writer.add(vid, x, np.arange(len(x), dtype=np.int64),
                       {"fps": 0.0, "decoded_frames": int(len(x)), "source": str(where)})
            summary.done += 1
        writer.finalize()
    except BaseException:
        writer.close()  # what was committed stays for the re-run
        raise
    return summary


def export_features(store_path, out_dir) -> int:
    """One ``ID.npy`` (float32, (T, D)) per video of the store; refuses a non-empty folder that
    holds anything but such files of this store (an earlier export). Returns the count."""
    store = FeatureStore(store_path)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise S2VTError(f"--out {out} is a file; give a folder to write one .npy per video into")
    if out.is_dir():
        ours = {f"{v}.npy" for v in store.ids}
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if foreign:
            raise S2VTError(f"--out {out} is not empty and holds files that are not this store's exports "
                            f"(e.g. {foreign[0]}); give an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    for vid in store.ids:
        x = np.ascontiguousarray(store.features(vid), np.float32)
        atomic_write(out / f"{vid}.npy", lambda f, x=x: np.save(f, x, allow_pickle=False))
    fsync_dir(out)
    return len(store.ids)
