"""The HDF5 feature store: per-video (T, D) CNN activations with a self-describing
signature, written crash-safely and resumably. Format: ``features/README.md``.

Writing (``FeatureWriter``) goes through a staging folder ``FILE.h5.parts/``:

* group commit: finished videos (and failures) collect in memory and are written
  together as one ``gNNNNNN.npz`` file (temporary name, one fsync, rename, fsync of the
  folder) every ``commit_seconds`` or every ``commit_videos`` videos. A video counts as
  done for a re-run only once its group file is durable; ``kill -9`` at any moment loses
  at most the last uncommitted group.
* after each commit the same videos are appended to a working HDF5 file
  ``FILE.h5.parts/work.h5`` (a byte copy of the previous ``FILE.h5`` when there is one),
  so ``finalize`` only closes it, fsyncs it and renames it over ``FILE.h5``: the file on
  disk is always a complete, readable store.
* the working file is never trusted after a crash: the next writer rebuilds it from the
  previous ``FILE.h5`` and the committed group files (appending is idempotent).
* one writer at a time: a writer holds an ``flock`` on ``FILE.h5.parts/lock`` from start to
  publish, and another (a second run on the same ``--out``) is refused at once, before it looks
  at, uses or removes anything in the folder.
* a writer made with ``replace=True`` builds a new store the same way and renames it over
  ``FILE.h5`` only in ``finalize``: until then the old file is untouched, and ``abandon`` leaves it
  as it was.

``BackgroundWriter`` runs a ``FeatureWriter`` on its own thread behind a bounded queue.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Iterable, List, Optional

import h5py
import numpy as np
from numpy.lib import format as npy_format

from s2vt.runtime.inputs import check_input_file, kind_problem
from s2vt.runtime.console import say
from s2vt.runtime.errors import S2VTError, SignatureMismatch
from s2vt.runtime.fileio import SCRATCH_SUFFIX, atomic_write, fsync_dir, hold_lock_file, scratch_file
from s2vt.data.ids import check_video_id, id_problem
from s2vt.features.signature import video_problem
FORMAT = "s2vt-features"
VERSION = 1
# signature fields that do not change what a feature means
_NOT_COMPARED = {"shard"}


def signature_diff(have: dict, want: dict) -> List[str]:
    """Human-readable differences between two signatures (empty when compatible)."""
    out = []
    for k in sorted(set(have) | set(want)):
        if k in _NOT_COMPARED:
            continue
        if have.get(k) != want.get(k):
            out.append(f"{k}: {have.get(k)!r} != {want.get(k)!r}")
    return out


def check_signature(have: dict, want: dict, what: str) -> None:
    diff = signature_diff(have, want)
    if diff:
        raise SignatureMismatch(f"{what} was extracted differently from what is expected: " + "; ".join(diff))


def stage_dir(path) -> Path:
    """The staging folder of the store at ``path``."""
    return Path(str(path) + ".parts")


def _read_group(p: Path) -> List[dict]:
    """Records of one committed group file: ``{kind, vid, ...}`` (+ ``features``/``frame_indices``)."""
    with np.load(p, allow_pickle=False) as z:
        index = json.loads(str(z["index"]))
        for i, r in enumerate(index):
            if r["kind"] == "video":
                r["features"], r["frame_indices"] = z[f"f{i}"], z[f"i{i}"]
    return index


def _member_header(z, name: str):
    """(shape, dtype) of the ``.npy`` member ``name`` of an open npz, from its header alone."""
    with z.zip.open(name + ".npy") as m:
        version = npy_format.read_magic(m)
        read = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}[version]
        shape, _, dtype = read(m)
    return shape, dtype


def _record_problem(z, i: int, r, dim: Optional[int]) -> Optional[str]:
    """Why record ``i`` of a group's index is not one a writer makes, or None."""
    if not isinstance(r, dict) or r.get("kind") not in ("video", "failed") or id_problem(r.get("vid")):
        return f"record {i} is not a video or failure with a valid id"
    if r["kind"] == "failed":
        return None if isinstance(r.get("reason"), str) else f"failure {r['vid']!r} has no reason"
    if not isinstance(r.get("meta"), dict) or not {f"f{i}", f"i{i}"} <= set(z.files):
        return f"video {r['vid']!r} has no meta or no arrays"
    (fshape, fdtype), (ishape, idtype) = _member_header(z, f"f{i}"), _member_header(z, f"i{i}")
    if (len(fshape) != 2 or fshape[0] < 1 or ishape != fshape[:1] or fdtype != np.float32
            or idtype != np.int64 or (dim is not None and fshape[1] != dim)):
        return f"video {r['vid']!r} has features {fshape} {fdtype} and frame indices {ishape} {idtype}"
    return None


def _read_staged_group(p: Path) -> List[dict]:
    """``_read_group`` of a group an interrupted run left; S2VTError naming it when its data is damaged
    (its index and headers were checked when the writer opened: only the bytes of an array get here)."""
    try:
        records = _read_group(p)
    except Exception as e:
        records, why = None, f"{type(e).__name__}: {e}"
    if records is not None:
        bad = [r["vid"] for r in records if r["kind"] == "video" and not np.isfinite(r["features"]).all()]
        why = f"non-finite features of {bad[0]}" if bad else None
    if why:
        raise S2VTError(f"{p} is damaged ({why}); delete it and re-run: its videos are extracted again")
    return records


def _group_vids(p: Path, dim: Optional[int] = None) -> List[tuple]:
    """(kind, vid) of each record of a group file, from its index and its members' headers (no
    array is read); ValueError when the group is not one a writer makes (a damaged disk, an edit)."""
    with np.load(p, allow_pickle=False) as z:
        index = json.loads(str(z["index"]))
        if not isinstance(index, list):
            raise ValueError("its index is not a list")
        for i, r in enumerate(index):
            problem = _record_problem(z, i, r, dim)
            if problem:
                raise ValueError(problem)
        return [(r["kind"], r["vid"]) for r in index]


def staged_ids(path) -> set:
    """Videos whose features are durable in the staging folder of the store at ``path``."""
    out = set()
    for p in sorted(stage_dir(path).glob("g*.npz")):
        out.update(v for kind, v in _group_vids(p) if kind == "video")
    return out


def _env_number(name: str, default: float, integer: bool = False) -> float:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 < value < float("inf")) or (integer and value != int(value)):
        raise S2VTError(f"{name}={text!r} must be a positive {'whole ' if integer else ''}number")
    return int(value) if integer else value


def published_store(path, signature: dict) -> Optional["FeatureStore"]:
    """The store at ``path`` if there is one, after checking it was made with ``signature``;
    None if there is none yet."""
    path = Path(path)
    if path.is_dir():
        raise S2VTError(f"--out {path} is a folder; give the HDF5 file to write (e.g. {path / 'features.h5'})")
    if not path.exists():
        return None
    store = FeatureStore(path)
    try:
        check_signature(store.signature, signature, str(path))
    except SignatureMismatch as e:
        raise SignatureMismatch(f"{e}. To extract with these settings, choose another --out "
                                "(or delete the store to replace it)")
    return store


def already_complete(path, signature: dict, ids) -> bool:
    """True when the published store at ``path`` (same signature, no run in progress) holds every one of
    ``ids`` with finite features: a re-run has nothing to do and need not write anything (the folder
    may be read-only)."""
    store = published_store(path, signature)
    if store is None or stage_dir(path).exists() or not set(ids) <= set(store.ids):
        return False
    return not store.nonfinite_ids()


class FeatureWriter:
    """Add videos (or failures); ``commit`` makes them durable as one group; ``finalize``
    publishes the HDF5 file. Not thread-safe: one thread (see ``BackgroundWriter``) calls it."""

    def __init__(self, path, signature: dict, commit_seconds: Optional[float] = None,
                 commit_videos: Optional[int] = None, commit_bytes: int = 256 << 20, replace: bool = False):
        """``replace``: start a new store whatever ``path`` holds now (a store of another signature, or a
        file that is not a store) and put it in its place only when ``finalize`` publishes; what an
        interrupted run staged is dropped once this writer holds the lock."""
        self.path, self.signature, self.replace = Path(path), signature, replace
        self.stage = stage_dir(self.path)
        # a group is committed after commit_seconds or commit_videos, whichever comes first;
        # S2VT_COMMIT_SECONDS / S2VT_COMMIT_VIDEOS override the defaults (0.5 s, 256 videos)
        self.commit_seconds = commit_seconds if commit_seconds is not None else _env_number("S2VT_COMMIT_SECONDS", 0.5)
        self.commit_videos = commit_videos if commit_videos is not None else _env_number("S2VT_COMMIT_VIDEOS", 256, integer=True)
        self.commit_bytes = commit_bytes
        _check_stage_kind(self.stage, self.path)
        created = not self.stage.exists()
        lock_made = not (self.stage / LOCK_FILE).exists()
        self._lock: Optional[int] = _lock_stage(self.stage, self.path)
        try:  # what the folder holds is looked at only while this writer holds its lock
            _check_stage_is_ours(self.stage, self.path)
            self._open(signature)
        except BaseException:
            if lock_made and not created:
                (self.stage / LOCK_FILE).unlink(missing_ok=True)
            self._unlock(drop_stage=created)
            raise

    def _open(self, signature: dict) -> None:
        if self.replace:  # nothing of the previous store or of an interrupted run is kept
            self.existing = None
            for p in _own_files(self.stage)[:-1]:
                p.unlink(missing_ok=True)
        else:
            self.existing = published_store(self.path, signature)
        sig_file = self.stage / "signature.json"
        if sig_file.exists():
            try:
                staged_sig = json.loads(sig_file.read_text())
            except (ValueError, UnicodeDecodeError):
                staged_sig = None
            if not isinstance(staged_sig, dict):
                raise S2VTError(f"{sig_file} is damaged; delete {self.stage} to extract afresh (the videos "
                                "staged there are lost)")
            try:
                check_signature(staged_sig, signature, str(self.stage))
            except SignatureMismatch as e:
                raise SignatureMismatch(f"{e}. It holds the videos an interrupted run with other settings "
                                        "staged: re-run with those settings to finish it, write to another "
                                        f"--out, or delete {self.stage} to start over") from None
        else:
            atomic_write(sig_file, json.dumps(signature, sort_keys=True))
            fsync_dir(self.stage)
        for p in _scratch(self.stage) + [self.stage / "work.h5"]:  # never trusted after a crash
            p.unlink(missing_ok=True)
        self._groups = self._readable_groups()
        self._seq = max((int(p.stem[1:]) for p in self._groups), default=0)
        self._pending: List[dict] = []
        self._pending_bytes, self._since = 0, 0.0
        self._work: Optional[h5py.File] = None
        self._built = False  # work.h5 holds the previous store and every committed group

    def _readable_groups(self) -> List[Path]:
        out = []
        for p in sorted(self.stage.glob("g*.npz")):
            if not p.is_file() or p.is_symlink():
                kind = "a symbolic link" if p.is_symlink() else kind_problem(os.stat(p).st_mode)
                raise S2VTError(f"{p} is not a group file s2vt wrote ({kind}); move it away")
            try:
                _group_vids(p, self.signature.get("dim"))
                out.append(p)
            except Exception:  # renamed only after its fsync, so only a damaged disk gets here: redo those videos
                p.unlink(missing_ok=True)
        return out

    def done_ids(self) -> set:
        """Videos already extracted (in the store with finite features, or durably staged): a re-run
        skips them. A stored video whose features are not finite is not done: it is computed again
        and replaces the stored one."""
        done = set(self.existing.ids) - set(self.existing.nonfinite_ids()) if self.existing else set()
        for p in self._groups:
            done.update(v for kind, v in _group_vids(p) if kind == "video")
        return done

    def check(self, vid: str, features: np.ndarray, frame_indices: np.ndarray) -> None:
        """S2VTError unless ``vid`` is a valid id and ``features`` (T, D) finite with T >= 1
        rows matching the T ``frame_indices`` (and D the signature's ``dim``)."""
        check_video_id(vid, f"{self.path}: video id")
        f, idx = np.asarray(features), np.asarray(frame_indices)
        dim = self.signature.get("dim")
        if f.ndim != 2 or idx.ndim != 1 or len(f) != len(idx) or (dim is not None and f.shape[1] != dim):
            raise S2VTError(f"{self.path}: video {vid}: features {f.shape} must be (T, {dim or 'D'}) with one row "
                            f"per frame index ({idx.shape})")
        if len(f) == 0:
            raise S2VTError(f"{self.path}: video {vid} has no frames; record it with add_failure instead")
        if not np.isfinite(f).all():
            raise S2VTError(f"{self.path}: video {vid} has non-finite features (NaN or inf)")

    def add(self, vid: str, features: np.ndarray, frame_indices: np.ndarray, meta: dict) -> None:
        """Stage one video: ``features`` (T, D) float32, ``frame_indices`` (T,) int64, ``meta``
        (fps, decoded_frames, source). Durable after the next ``commit``."""
        self.check(vid, features, frame_indices)
        f = np.ascontiguousarray(features, np.float32)
        self._stage({"kind": "video", "vid": vid, "meta": meta, "features": f,
                     "frame_indices": np.asarray(frame_indices, np.int64)}, f.nbytes)

    def add_failure(self, vid: str, reason: str, source: str = "") -> None:
        check_video_id(vid, f"{self.path}: video id")
        self._stage({"kind": "failed", "vid": vid, "reason": str(reason), "source": str(source)}, 256)

    def _stage(self, record: dict, nbytes: int) -> None:
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(record)
        self._pending_bytes += nbytes
        if len(self._pending) >= self.commit_videos or self._pending_bytes >= self.commit_bytes:
            self.commit()

    def commit_due_in(self) -> Optional[float]:
        """Seconds until the pending group is due (0: now), None when nothing is pending."""
        if not self._pending:
            return None
        return max(0.0, self._since + self.commit_seconds - time.monotonic())

    def commit(self) -> None:
        """Make every pending record durable: one group file, one fsync, one rename, one folder
        fsync; then append the group to the working HDF5 file."""
        if not self._pending:
            return
        records, self._pending, self._pending_bytes = self._pending, [], 0
        self._seq += 1
        p = self.stage / f"g{self._seq:06d}.npz"
        index, arrays = [], {}
        for i, r in enumerate(records):
            index.append({k: v for k, v in r.items() if k not in ("features", "frame_indices")})
            if r["kind"] == "video":
                arrays[f"f{i}"], arrays[f"i{i}"] = r["features"], r["frame_indices"]
        atomic_write(p, lambda f: np.savez(f, index=np.array(json.dumps(index)), **arrays))
        fsync_dir(self.stage)
        self._groups.append(p)
        _apply(self._working(), records)

    def _working(self) -> h5py.File:
        """The working HDF5 file: the previous store (byte copy) plus every committed group."""
        work = self.stage / "work.h5"
        if self._work is None and self._built:  # closed by this writer, complete: reopen
            self._work = h5py.File(work, "a")
        if self._work is None:
            if self.existing:
                shutil.copyfile(self.existing.path, work)
                self._work = h5py.File(work, "a")
            else:
                self._work = h5py.File(work, "w")
                _write_header(self._work, self.signature)
            for p in self._groups:  # left by an interrupted run, or committed before this file existed
                _apply(self._work, _read_staged_group(p))
            self._built = True
        return self._work

    def finalize(self) -> Path:
        """Commit, then publish the working file as ``FILE.h5`` (fsync, atomic rename)."""
        self.commit()
        if self._work is None and self.existing and not self._groups:
            self._unlock(drop_stage=True)  # nothing new: the store is already complete
            return self.path
        work = self._working()
        work.close()
        self._work = None
        with open(self.stage / "work.h5", "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.stage / "work.h5", self.path)
        fsync_dir(self.path.parent)
        self._unlock(drop_stage=True)
        self._groups, self._built = [], False
        self.existing = FeatureStore(self.path)
        return self.path

    def abandon(self) -> None:
        """Publish nothing and drop what this writer staged (the store at ``path`` stays as it was)."""
        self._pending, self._pending_bytes = [], 0
        if self._work is not None:
            self._work.close()
            self._work = None
        self._unlock(drop_stage=True)

    def close(self) -> None:
        """Commit what is pending and release the working file (no publish: a re-run resumes)."""
        self.commit()
        if self._work is not None:
            self._work.close()
            self._work = None
        self._unlock()

    def __del__(self):  # an abandoned writer lets the next one in (a re-run in the same process)
        if getattr(self, "_lock", None) is not None:
            self._unlock()

    def _unlock(self, drop_stage: bool = False) -> None:
        if self._lock is None:
            return
        if drop_stage:  # only the files a writer makes: anything else stays, and so does the folder
            for p in _own_files(self.stage):
                p.unlink(missing_ok=True)
            try:
                self.stage.rmdir()
            except OSError:
                pass
        os.close(self._lock)  # closing the descriptor releases the lock
        self._lock = None


LOCK_FILE = "lock"
GROUP_FILE = re.compile(r"g\d{6,}\.npz$")


def _scratch(stage: Path) -> List[Path]:
    return list(stage.glob(f".*{SCRATCH_SUFFIX}"))


def _own_files(stage: Path) -> List[Path]:
    """The files a writer puts in its staging folder (the lock last: it is released after)."""
    if not stage.is_dir():
        return []
    groups = [stage / n for n in os.listdir(stage) if GROUP_FILE.fullmatch(n)]
    return groups + _scratch(stage) + [stage / "work.h5", stage / "signature.json", stage / LOCK_FILE]


def _is_own(name: str) -> bool:
    """A name a writer gives the files of its staging folder."""
    return (bool(GROUP_FILE.fullmatch(name)) or name in ("work.h5", "signature.json", LOCK_FILE)
            or (name.startswith(".") and name.endswith(SCRATCH_SUFFIX)))


def _check_stage_kind(stage: Path, store: Path) -> None:
    """S2VTError when ``stage`` exists but is not a folder (a file, a link): it is neither used nor removed."""
    if (stage.exists() or stage.is_symlink()) and (not stage.is_dir() or stage.is_symlink()):
        raise S2VTError(f"{stage} exists and is not the staging folder of {store}: move it away, or write to "
                        "another --out")


def _check_stage_is_ours(stage: Path, store: Path) -> None:
    """S2VTError when the folder ``stage`` holds a file no writer makes (the caller holds its lock, so
    no other run adds files while it is read): it is not a staging folder s2vt made, and nothing in it
    is used or removed."""
    foreign = sorted(n for n in os.listdir(stage) if not _is_own(n)) if stage.is_dir() else []
    if foreign:
        raise S2VTError(f"{stage} holds files s2vt did not write ({', '.join(foreign[:3])}"
                        f"{' ...' if len(foreign) > 3 else ''}): it is not the staging folder of {store}; move it "
                        "away, or write to another --out")


def _lock_stage(stage: Path, store: Path) -> int:
    """Create ``stage`` if needed and lock it for this process (``flock``: the kernel releases
    it when the process ends, however it ends); S2VTError if another process holds it."""
    return hold_lock_file(stage / LOCK_FILE, f"another run is writing {store} (its staging folder {stage} is "
                          "locked): wait for it to finish, or write to another --out",
                          prepare=lambda: stage.mkdir(parents=True, exist_ok=True), output=store)


def _apply(f: h5py.File, records: List[dict]) -> None:
    """Write a group's records into an open store (idempotent: a replayed record replaces itself)."""
    videos, failed = f["videos"], f["failed"]
    for r in records:
        vid = r["vid"]
        if r["kind"] == "video":
            if vid in videos:
                del videos[vid]
            if vid in failed:
                del failed[vid]
            _write_video(f, vid, r["features"], r["frame_indices"], r["meta"])
        else:  # only a video that was not done is tried again: what failed now replaces what is stored
            if vid in videos:
                del videos[vid]
            if vid in failed:
                del failed[vid]
            g = failed.create_group(vid)
            g.attrs["reason"], g.attrs["source"] = r["reason"], r.get("source", "")


class BackgroundWriter:
    """A ``FeatureWriter`` driven by its own thread behind a bounded queue, so the caller never
    waits on the disk (only when ``max_queue`` items are already waiting). Arguments are
    checked in the caller (S2VTError at once); an error on the thread is raised by the next
    call, or by ``finish``. Pending groups are committed on time even while no video arrives."""

    def __init__(self, writer: FeatureWriter, max_queue: int = 64):
        self.writer = writer
        self._q: "queue.Queue" = queue.Queue(max_queue)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="s2vt-store-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        w, item = self.writer, ()
        try:
            while item is not None:
                try:
                    item = self._q.get(timeout=w.commit_due_in())
                except queue.Empty:
                    w.commit()
                    continue
                if item is not None:
                    getattr(w, item[0])(*item[1:])
                if item is None or w.commit_due_in() == 0:
                    w.commit()
        except BaseException as e:  # surfaced in the caller's thread
            self._error = e
            while item is not None:  # keep draining until the stop sentinel, so no put blocks
                item = self._q.get()

    def _put(self, item) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(item)

    def add(self, vid: str, features: np.ndarray, frame_indices: np.ndarray, meta: dict) -> None:
        self.writer.check(vid, features, frame_indices)
        self._put(("add", vid, features, frame_indices, meta))

    def add_failure(self, vid: str, reason: str, source: str = "") -> None:
        check_video_id(vid, f"{self.writer.path}: video id")
        self._put(("add_failure", vid, reason, source))

    def _join(self) -> None:
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()

    def stop(self) -> None:
        """Commit everything queued, stop the thread and release the store (not published: a re-run resumes)."""
        self._join()
        try:
            self.writer.close()
        finally:
            if self._error is not None:
                raise self._error

    def finish(self) -> Path:
        """Commit everything queued, stop the thread, then publish the store (still holding its lock)."""
        self._join()
        if self._error is not None:
            self.writer.close()
            raise self._error
        return self.writer.finalize()


def _write_header(f: h5py.File, signature: dict) -> None:
    f.attrs["format"], f.attrs["version"] = FORMAT, VERSION
    f.attrs["signature"] = json.dumps(signature, sort_keys=True)
    f.create_group("videos")
    f.create_group("failed")


def _write_video(f: h5py.File, vid: str, feats, idx, meta: dict) -> None:
    g = f["videos"].create_group(vid)
    g.create_dataset("features", data=feats)
    g.create_dataset("frame_indices", data=np.asarray(idx, np.int64))
    for k, v in meta.items():
        g.attrs[k] = v


def _read_index(f: h5py.File, path: Path):
    """(signature, sorted ids, failed) of an open store; S2VTError naming ``path`` when the
    file is not an s2vt store, has no readable signature or holds an invalid video id."""
    def bad(why: str):
        return S2VTError(f"{path} is not a usable s2vt feature file: {why} (re-create it with `s2vt extract`)")

    if f.attrs.get("format") != FORMAT:
        raise bad(f"no '{FORMAT}' format attribute")
    try:
        signature = json.loads(f.attrs["signature"])
    except (KeyError, TypeError, ValueError):
        raise bad("no readable signature attribute")
    if not isinstance(signature, dict):
        raise bad("its signature is not a JSON object")
    for group in ("videos", "failed"):
        if not isinstance(f.get(group), h5py.Group):
            raise bad(f"no /{group} group (an empty group when there is nothing in it; see features/README.md)")
    ids = sorted(f["videos"])
    for vid in ids + list(f["failed"]):
        if id_problem(vid):
            raise bad(f"group name {vid!r}: {id_problem(vid)}")
    for vid in ids:
        problem = video_problem(f["videos"][vid], vid, signature.get("dim"))
        if problem:
            raise bad(problem)
    failed = {v: {"reason": str(g.attrs.get("reason", "")), "source": str(g.attrs.get("source", ""))}
              for v, g in f["failed"].items()}
    return signature, ids, failed


class FeatureStore:
    """Read-only view of a feature file; opens the HDF5 file lazily once per process,
    so it can be handed to DataLoader workers."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            if self.path.exists():  # a FIFO, socket, device or folder: named as what it is, never opened
                check_input_file(self.path, "feature file", max_bytes=None)
            raise S2VTError(f"feature file not found: {self.path} (create it with `s2vt extract`)")
        try:
            with h5py.File(self.path, "r") as f:
                self.signature, self.ids, self.failed = _read_index(f, self.path)
        except OSError as e:
            raise S2VTError(f"{self.path}: cannot read this feature file: not an HDF5 file, or damaged ({e})")
        self._ids = set(self.ids)
        self._file = None
        self._pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __contains__(self, vid: str) -> bool:
        return vid in self._ids

    def __len__(self) -> int:
        return len(self.ids)

    def features(self, vid: str) -> np.ndarray:
        """(T, D) float32 features of ``vid``; S2VTError if they are not all finite."""
        if vid not in self._ids:
            reason = self.failed.get(vid, {}).get("reason")
            raise KeyError(f"{vid} not in {self.path}" + (f" (extraction failed: {reason})" if reason else ""))
        x = self._h5()["videos"][vid]["features"][()].astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise S2VTError(f"{self.path}: video {vid} has non-finite features (NaN or inf); delete the file "
                            "and extract again")
        return x

    def nbytes(self, vids: Iterable[str]) -> int:
        """Bytes the float32 features of ``vids`` take in memory (from shapes; reads no data)."""
        v = self._h5()["videos"]
        return sum(4 * int(np.prod(v[x]["features"].shape)) for x in vids if x in self._ids)

    def frame_indices(self, vid: str) -> np.ndarray:
        return self._h5()["videos"][vid]["frame_indices"][()]

    def meta(self, vid: str) -> dict:
        return dict(self._h5()["videos"][vid].attrs)

    def nonfinite_ids(self) -> List[str]:
        """The videos whose features hold NaN or inf (reads every feature once: a run resuming onto
        this store trusts nothing it did not verify)."""
        f = self._h5()["videos"]
        return [vid for vid in self.ids if not _finite(f[vid]["features"])]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _finite(ds, rows: int = 4096) -> bool:
    """All values of the (T, D) dataset ``ds`` finite, read ``rows`` rows at a time."""
    return all(np.isfinite(ds[i:i + rows]).all() for i in range(0, ds.shape[0], rows))


def missing_shards(shards: List[Optional[str]]) -> List[str]:
    """The 'I/N' shards absent from ``shards`` (signature values; None for a store that is not a shard)."""
    given = [s for s in shards if isinstance(s, str) and "/" in s]
    worlds = {s.split("/")[1] for s in given}
    if len(worlds) != 1:
        return []
    n = next(iter(worlds))
    return [f"{i}/{n}" for i in range(int(n)) if f"{i}/{n}" not in given] if n.isdigit() else []


def merge_stores(out, inputs: Iterable) -> Path:
    """Join shard stores with identical signatures into one file (atomically)."""
    inputs = [FeatureStore(p) for p in inputs]
    if not inputs:
        raise S2VTError("nothing to merge")
    sig = inputs[0].signature
    for s in inputs[1:]:
        check_signature(s.signature, sig, str(s.path))
    missing = missing_shards([s.signature.get("shard") for s in inputs])
    if missing:
        say(f"[s2vt] warning: merging without shard(s) {', '.join(missing)}: their videos will be absent")
    out = Path(out)
    if out.is_dir():
        raise S2VTError(f"{out} is a folder; give the merged HDF5 file's path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_file(out)
    try:
        _merge_into(tmp, inputs, {k: v for k, v in sig.items() if k != "shard"})
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return out


def _merge_into(tmp: Path, inputs: List["FeatureStore"], merged_sig: dict) -> None:
    with h5py.File(tmp, "w") as f:
        _write_header(f, merged_sig)
        for s in inputs:
            with h5py.File(s.path, "r") as src:
                for vid in src["videos"]:
                    if vid in f["videos"]:
                        raise S2VTError(f"video {vid} is in more than one shard ({s.path})")
                    if not _finite(src["videos"][vid]["features"]):
                        raise S2VTError(f"{s.path}: video {vid} has non-finite features (NaN or inf); nothing was "
                                        "merged: re-extract that shard (delete it, then run its extraction again)")
                    src.copy(src["videos"][vid], f["videos"], name=vid)
        for s in inputs:
            for vid, d in s.failed.items():
                if vid not in f["videos"] and vid not in f["failed"]:
                    g = f["failed"].create_group(vid)
                    g.attrs["reason"], g.attrs["source"] = d["reason"], d["source"]
