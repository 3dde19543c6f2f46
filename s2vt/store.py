"""The HDF5 feature store: per-video (T, D) CNN activations with a self-describing
signature, written crash-safely and resumably. Format: ``features/README.md``.

Writing goes through a staging folder ``FILE.h5.parts/``: each finished video is one
``.npz`` written to a temporary name and renamed (atomic), so ``kill -9`` at any moment
loses at most the videos in flight. ``finalize`` writes a new HDF5 file (the previous
file's videos plus the staged ones) to a temporary name and renames it over ``FILE.h5``,
so the store on disk is always a complete, readable file. A re-run reads both and skips
every finished video.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, List, Optional

import h5py
import numpy as np

from .errors import S2VTError, SignatureMismatch

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


def _stage_name(vid: str) -> str:
    return hashlib.sha1(vid.encode()).hexdigest()[:20]


class FeatureWriter:
    """Add videos (or failures) one at a time; ``finalize`` publishes the HDF5 file."""

    def __init__(self, path, signature: dict):
        self.path = Path(path)
        self.signature = signature
        self.stage = Path(str(self.path) + ".parts")
        self.existing: Optional[FeatureStore] = None
        if self.path.exists():
            self.existing = FeatureStore(self.path)
            check_signature(self.existing.signature, signature, str(self.path))
        self.stage.mkdir(parents=True, exist_ok=True)
        sig_file = self.stage / "signature.json"
        if sig_file.exists():
            check_signature(json.loads(sig_file.read_text()), signature, str(self.stage))
        else:
            _atomic_write_bytes(sig_file, json.dumps(signature, sort_keys=True).encode())

    def done_ids(self) -> set:
        """Videos already extracted (in the store or staged): a re-run skips them."""
        done = set(self.existing.ids) if self.existing else set()
        for p in self.stage.glob("*.npz"):
            try:
                with np.load(p, allow_pickle=False) as z:
                    done.add(str(z["vid"]))
            except Exception:  # a file cut short by a crash before its rename cannot exist; be safe anyway
                p.unlink(missing_ok=True)
        return done

    def add(self, vid: str, features: np.ndarray, frame_indices: np.ndarray, meta: dict) -> None:
        assert features.ndim == 2 and len(features) == len(frame_indices), \
            f"{vid}: features {features.shape} do not match {len(frame_indices)} frame indices"
        assert np.isfinite(features).all(), f"{vid}: non-finite features"
        p = self.stage / f"{_stage_name(vid)}.npz"
        tmp = p.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, vid=np.array(vid), features=features, frame_indices=np.asarray(frame_indices, np.int64),
                     meta=np.array(json.dumps(meta)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        (self.stage / f"{_stage_name(vid)}.failed.json").unlink(missing_ok=True)

    def add_failure(self, vid: str, reason: str, source: str = "") -> None:
        p = self.stage / f"{_stage_name(vid)}.failed.json"
        _atomic_write_bytes(p, json.dumps({"vid": vid, "reason": reason, "source": source}).encode())

    def finalize(self) -> Path:
        """Write the complete store (old + staged) to a temp file, rename it into place."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        staged = sorted(self.stage.glob("*.npz"))
        failed = {}
        if self.existing:
            failed.update(self.existing.failed)
        for p in sorted(self.stage.glob("*.failed.json")):
            d = json.loads(p.read_text())
            failed[d["vid"]] = {"reason": d["reason"], "source": d.get("source", "")}
        with h5py.File(tmp, "w") as out:
            _write_header(out, self.signature)
            written = set()
            for p in staged:
                with np.load(p, allow_pickle=False) as z:
                    vid = str(z["vid"])
                    _write_video(out, vid, z["features"], z["frame_indices"], json.loads(str(z["meta"])))
                written.add(vid)
            if self.existing:
                with h5py.File(self.existing.path, "r") as old:
                    for vid in old["videos"]:
                        if vid not in written:
                            old.copy(old["videos"][vid], out["videos"], name=vid)
                            written.add(vid)
            for vid, d in failed.items():
                if vid not in written:
                    g = out["failed"].create_group(vid)
                    g.attrs["reason"], g.attrs["source"] = d["reason"], d.get("source", "")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        shutil.rmtree(self.stage, ignore_errors=True)
        self.existing = FeatureStore(self.path)
        return self.path


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


class FeatureStore:
    """Read-only view of a feature file; opens the HDF5 file lazily once per process,
    so it can be handed to DataLoader workers."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise S2VTError(f"feature file not found: {self.path} (create it with `s2vt extract`)")
        try:
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise S2VTError(f"{self.path} is not an s2vt feature file (no '{FORMAT}' format attribute)")
                self.signature = json.loads(f.attrs["signature"])
                self.ids = sorted(f["videos"])
                self.failed = {v: {"reason": str(g.attrs["reason"]), "source": str(g.attrs.get("source", ""))}
                               for v, g in f["failed"].items()}
        except OSError as e:
            raise S2VTError(f"cannot read feature file {self.path}: {e}")
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
        """(T, D) float32 features of ``vid``."""
        if vid not in self._ids:
            reason = self.failed.get(vid, {}).get("reason")
            raise KeyError(f"{vid} not in {self.path}" + (f" (extraction failed: {reason})" if reason else ""))
        return self._h5()["videos"][vid]["features"][()].astype(np.float32, copy=False)

    def nbytes(self, vids: Iterable[str]) -> int:
        """Bytes the float32 features of ``vids`` take in memory (from shapes; reads no data)."""
        v = self._h5()["videos"]
        return sum(4 * int(np.prod(v[x]["features"].shape)) for x in vids if x in self._ids)

    def frame_indices(self, vid: str) -> np.ndarray:
        return self._h5()["videos"][vid]["frame_indices"][()]

    def meta(self, vid: str) -> dict:
        return dict(self._h5()["videos"][vid].attrs)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def merge_stores(out, inputs: Iterable) -> Path:
    """Join shard stores with identical signatures into one file (atomically)."""
    inputs = [FeatureStore(p) for p in inputs]
    if not inputs:
        raise S2VTError("nothing to merge")
    sig = inputs[0].signature
    for s in inputs[1:]:
        check_signature(s.signature, sig, str(s.path))
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    merged_sig = {k: v for k, v in sig.items() if k != "shard"}
    with h5py.File(tmp, "w") as f:
        _write_header(f, merged_sig)
        for s in inputs:
            with h5py.File(s.path, "r") as src:
                for vid in src["videos"]:
                    if vid in f["videos"]:
                        raise S2VTError(f"video {vid} is in more than one shard ({s.path})")
                    src.copy(src["videos"][vid], f["videos"], name=vid)
        for s in inputs:
            for vid, d in s.failed.items():
                if vid not in f["videos"] and vid not in f["failed"]:
                    g = f["failed"].create_group(vid)
                    g.attrs["reason"], g.attrs["source"] = d["reason"], d["source"]
    os.replace(tmp, out)
    return out
