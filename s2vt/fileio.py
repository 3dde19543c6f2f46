"""Durable file writes: write to a temporary name beside the target, fsync, rename.

A crash at any moment leaves either the previous file or the new one, never a torn
file. Every file s2vt publishes (checkpoints, JSON results, store parts) goes through
``atomic_write``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, IO, Union

Writer = Union[bytes, str, Callable[[IO[bytes]], None]]


def atomic_write(path, data: Writer, fsync: bool = True) -> Path:
    """Write ``data`` (bytes, text, or a function given the open binary file) to ``path``.

    With ``fsync=False`` the rename is still atomic but durability is left to a later
    group commit (``fsync_dir`` / an fsync of the files by the caller).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def probe_writable(path) -> Path:
    """Fail now (OSError naming the file) if ``path`` could not be written later; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = path.with_name(path.name + ".tmp")
    with open(probe, "wb"):
        pass
    probe.unlink()
    return path


def write_json(obj, path, indent: int = 1) -> Path:
    """``obj`` as JSON at ``path`` (parent folders created), atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=True))


def fsync_dir(folder) -> None:
    """Make renames inside ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
