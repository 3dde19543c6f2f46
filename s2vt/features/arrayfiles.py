"""Arrays made elsewhere, inspected before they are read.

- ``.npy``: the header is parsed by numpy's own header reader (``numpy.lib.format``), then its
  dtype, rank and shape are checked, and shape x itemsize against the bytes the file really
  holds, before any data is read; only then is the array loaded (``allow_pickle`` stays off).
- ``.npz``: the zip's directory is read, the member is chosen (``features``, or the only one)
  and its ``.npy`` header checked the same way inside the zip, against the member's size,
  without extracting it.
- HDF5: a name is checked for what it is (a dataset, a group holding ``features``, a link to
  nothing, an external link, a named datatype), then the dataset's dtype (floats only; compound,
  string and integer types refused), rank and size, before it is read.

Every array must be (frames, D) float16/32/64 of at most :data:`MAX_ARRAY_BYTES`. A file that fails is
described by :class:`Unusable` (its ``reason`` is one line); nothing is allocated for it.
"""
from __future__ import annotations

import errno
import os
import zipfile
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import IO, Optional, Tuple

import numpy as np
from numpy.lib import format as npy_format

from s2vt.runtime.inputs import kind_problem
from s2vt.runtime.console import shown

FLOATS = ("float16", "float32", "float64")
MAX_ARRAY_BYTES = 4 * 2 ** 30  # one video's features: far more than any real (frames, D) array holds
NPY_MAGIC = b"\x93NUMPY"
_LOOKS_LIKE = ((b"PK\x03\x04", "a zip archive (an .npz)"), (b"PK\x05\x06", "an empty zip archive"),
               (b"\x89HDF\r\n\x1a\n", "an HDF5 file"), (NPY_MAGIC, "an .npy array"))


class Unusable(ValueError):
    """An array file (or HDF5 entry) that cannot be a video's features; ``reason`` says why, in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ArrayInfo:
    """What a header promises: ``shape`` (frames, D), ``dtype`` and the order of its data."""

    shape: Tuple[int, ...]
    dtype: np.dtype
    fortran: bool = False


def _said(e: BaseException) -> str:
    """The first line of what an exception says (its type when it says nothing)."""
    return str(e).splitlines()[0][:120] if str(e).strip() else type(e).__name__


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.3g} GiB" if n >= 2 ** 30 else f"{n} bytes"


def header_problem(shape, dtype: np.dtype, data_bytes: Optional[int]) -> Optional[str]:
    """Why an array of ``shape`` and ``dtype`` cannot be a video's features, or None. ``data_bytes``:
    the bytes its file holds after the header (None: not known, as for an HDF5 dataset)."""
    if dtype.hasobject:
        return "holds Python objects (a pickle): only numeric arrays are read (allow_pickle stays off)"
    if dtype.names is not None or dtype.subdtype is not None:
        return f"a structured dtype ({dtype.descr}), not float16/32/64"
    if dtype.name not in FLOATS:
        return f"dtype {dtype} is not float16/32/64"
    if any(n < 0 for n in shape):
        return f"shape {shape} has a negative size"
    if len(shape) != 2:
        return f"shape {shape} is not 2-D (frames, D)"
    if 0 in shape:
        return f"shape {shape} is empty"
    need = prod(shape) * dtype.itemsize  # Python ints: no overflow
    if need > MAX_ARRAY_BYTES:
        return (f"shape {shape} of {dtype} takes {_gib(need)}: more than the {_gib(MAX_ARRAY_BYTES)} allowed for "
                "one video")
    if data_bytes is not None and data_bytes < need:
        return f"truncated: its header promises {need} bytes of data, the file holds {max(data_bytes, 0)}"
    return None


def looks_like(head: bytes, last: bytes = b"") -> str:
    """What a file that starts with ``head`` (and ends with ``last``) is, in words."""
    for magic, what in _LOOKS_LIKE:
        if head.startswith(magic):
            return what
    if not head:
        return "an empty file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and last == b".":
        return "a Python pickle (pickles are never loaded)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut at the end of ``head`` is still text
        cut = e.start >= len(head) - 3 and e.reason.startswith("unexpected end")
        text = head[:e.start].decode("utf-8") if cut else ""
    return "text" if text and "".join(text.split()).isprintable() else "not an array file (unknown bytes)"


def read_npy_header(f: IO[bytes], data_bytes) -> Tuple[ArrayInfo, int]:
    """The checked header of the ``.npy`` stream ``f`` (at its start) and the offset of its data;
    ``data_bytes(offset)`` is how many bytes follow the header. Unusable when it is not one."""
    head = f.read(8)
    if not head.startswith(NPY_MAGIC) or len(head) < 8:
        raise Unusable(f"not an .npy array: {looks_like(head + f.read(56), _last_byte(f))}")
    version = (head[6], head[7])
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    if version not in readers:
        raise Unusable(f".npy format version {version[0]}.{version[1]} is not one s2vt reads (1.0 or 2.0)")
    try:
        shape, fortran, dtype = readers[version](f)
    except Exception as e:  # numpy's parser of an untrusted header: any failure means "not a valid header"
        raise Unusable(f"its .npy header is not valid ({type(e).__name__})") from None
    offset = f.tell()
    problem = header_problem(tuple(shape), dtype, data_bytes(offset))
    if problem:
        raise Unusable(problem)
    return ArrayInfo(tuple(shape), dtype, fortran), offset


def _last_byte(f: IO[bytes]) -> bytes:
    """The last byte of a file on disk; nothing for a zip member (seeking to its end would inflate it all)."""
    if isinstance(f, zipfile.ZipExtFile):
        return b""
    try:
        f.seek(-1, os.SEEK_END)
        return f.read(1)
    except (OSError, ValueError):
        return b""


def open_regular(path: Path) -> Tuple[IO[bytes], int]:
    """``path`` opened for reading (never blocking) and its size; Unusable naming what it is when it
    is not a regular file (a FIFO, socket, device, folder, a link to nothing or a link loop)."""
    try:
        kind = kind_problem(os.stat(path).st_mode)
    except FileNotFoundError:
        raise Unusable("a symbolic link to nothing" if os.path.islink(path) else "it no longer exists") from None
    except OSError as e:
        loop = e.errno == errno.ELOOP
        raise Unusable("a symbolic link loop" if loop else f"cannot read it ({e.strerror or e})") from None
    if kind:  # a FIFO is never opened: opening it could wait for a writer
        raise Unusable(f"{kind}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise Unusable(f"cannot read it ({e.strerror or e})") from None
    st = os.fstat(fd)
    kind = kind_problem(st.st_mode)
    if kind:  # swapped since the check
        os.close(fd)
        raise Unusable(f"{kind}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st.st_size


def inspect_npy(path: Path) -> ArrayInfo:
    """The checked header of an ``.npy`` file; Unusable saying why it cannot be read."""
    f, size = open_regular(path)
    with f:
        return read_npy_header(f, lambda offset: size - offset)[0]


def load_npy(path: Path) -> np.ndarray:
    """The array of an ``.npy`` file, read only after its header passed :func:`read_npy_header`."""
    f, size = open_regular(path)
    with f:
        info, _ = read_npy_header(f, lambda offset: size - offset)
        return _read_data(f, info)


def _member(z: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The member of an ``.npz`` that holds the features: ``features``, or the only one."""
    members = z.infolist()
    named = [m for m in members if m.filename == "features.npy"]
    if named:
        return named[0]
    if len(members) == 1:
        return members[0]
    raise Unusable(f"holds {len(members)} arrays and none named 'features'" if members else "an empty .npz")


def _open_npz(path: Path, read):
    """``read(zipfile, member info, member stream)`` on the features member of the ``.npz`` at ``path``."""
    f, size = open_regular(path)
    with f:
        head = f.read(4)
        if not head.startswith(b"PK"):
            raise Unusable(f"not an .npz (zip) archive: {looks_like(head + f.read(60), _last_byte(f))}")
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as z:
                info = _member(z)
                if not info.filename.endswith(".npy"):
                    raise Unusable(f"its member {shown(info.filename)!r} is not an .npy array")
                with z.open(info) as m:
                    return read(m, info)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, RuntimeError, NotImplementedError) as e:
            raise Unusable(f"a damaged or truncated zip archive ({_said(e)})") from None


def inspect_npz(path: Path) -> ArrayInfo:
    """The checked header of the features member of an ``.npz`` file (nothing extracted)."""
    return _open_npz(path, lambda m, info: read_npy_header(m, lambda offset: info.file_size - offset)[0])


def load_npz(path: Path) -> np.ndarray:
    """The features array of an ``.npz`` file, read only after its header passed the checks."""
    return _open_npz(path, lambda m, info: _read_data(m, read_npy_header(m, lambda o: info.file_size - o)[0]))


def _read_data(m: IO[bytes], info: ArrayInfo) -> np.ndarray:
    """The data after a checked header (its byte count bounded by :data:`MAX_ARRAY_BYTES`)."""
    need = prod(info.shape) * info.dtype.itemsize
    data = m.read(need)
    if len(data) != need:
        raise Unusable(f"truncated: {len(data)} of the {need} bytes its header promises")
    return np.frombuffer(data, info.dtype).reshape(info.shape, order="F" if info.fortran else "C")


def _h5_target(f, name: str):
    """The object ``name`` of the open HDF5 file ``f`` names, following soft links inside the file;
    Unusable for a link to nothing and for an external link (only this file is read)."""
    import h5py

    try:
        link = f.get(name, getlink=True)
    except (KeyError, OSError, TypeError, ValueError) as e:
        raise Unusable(f"cannot read this entry ({_said(e)})")
    if isinstance(link, h5py.ExternalLink):
        raise Unusable(f"an external link (to {link.filename}:{link.path}); only datasets in this file are read")
    try:
        obj = f.get(name)
    except (KeyError, OSError, TypeError, ValueError):
        obj = None
    if obj is None:
        raise Unusable(f"a soft link to {link.path!r}, which names nothing in this file"
                       if isinstance(link, h5py.SoftLink) else "a link to nothing in this file")
    return obj


def inspect_h5(f, name: str) -> Tuple[str, ArrayInfo]:
    """(dataset path, checked header) of the top-level entry ``name`` of the open HDF5 file ``f``: a
    (T, D) dataset, or a group holding a ``features`` dataset. Unusable saying why not; reads no data."""
    import h5py

    obj, where = _h5_target(f, name), name
    if isinstance(obj, h5py.Group):
        if "features" not in obj:
            raise Unusable("a group with no 'features' dataset")
        obj, where = _h5_target(obj, "features"), f"{name}/features"
    if isinstance(obj, h5py.Datatype):
        raise Unusable("a named datatype, not a dataset")
    if not isinstance(obj, h5py.Dataset):
        raise Unusable(f"a {type(obj).__name__}, not a dataset")
    try:
        shape, dtype = obj.shape, obj.dtype
    except (TypeError, ValueError, OSError) as e:
        raise Unusable(f"a dataset of a type h5py cannot read ({_said(e)})")
    if shape is None:
        raise Unusable("a dataset with no data (an empty dataspace)")
    if dtype.kind in "SUO" and not dtype.names:
        raise Unusable(f"{'a string' if obj.ndim == 0 else 'strings'} ({dtype}), not float16/32/64")
    problem = header_problem(tuple(shape), dtype, None)
    if problem:
        raise Unusable(problem)
    return where, ArrayInfo(tuple(shape), dtype)


def load_h5(f, where: str, info: ArrayInfo) -> np.ndarray:
    """The data of the dataset ``where``, after :func:`inspect_h5` passed it with header ``info``."""
    ds = f[where]
    if tuple(ds.shape) != info.shape or ds.dtype != info.dtype:
        raise Unusable(f"it changed while it was read (shape {ds.shape}, before {info.shape})")
    try:
        return ds[()]
    except (OSError, TypeError, ValueError) as e:
        raise Unusable(f"its data cannot be read ({_said(e)})")
