"""Durable file writes, and who may write where.

``atomic_write`` writes to a scratch file beside the target, fsyncs and renames: a crash at
any moment leaves either the previous file or the new one, never a torn file. Every file
s2vt publishes (checkpoints, JSON results, store parts) goes through it. Scratch files are
made by ``tempfile.mkstemp`` (``.NAME.XXXXXXXX.s2vt-tmp``): a name no file of the user's can
have, so cleaning up after a failed write removes only what this write created. A full disk
or any other failed write raises an OSError naming the target, and leaves no file that looks
complete.

``folder_lock`` makes one process the only writer of an output folder (``s2vt train --out``,
``benchmark --out``, ``synth``, ``demo --workdir``), ``file_lock`` of an output file
(``evaluate --out``, ``report``, ``merge-features``): a second run on the same output stops at
once instead of mixing its files with the first's.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator, Union

from s2vt.runtime.errors import S2VTError
from s2vt.runtime.inputs import kind_problem

Writer = Union[bytes, str, Callable[[IO[bytes]], None]]


SCRATCH_SUFFIX = ".s2vt-tmp"


def scratch_file(path) -> Path:
    """A new empty scratch file beside ``path``, named so no user file can have its name."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=SCRATCH_SUFFIX)
    os.close(fd)
    return Path(tmp)


def _named(e: OSError, path: Path) -> OSError:
    """``e`` naming ``path`` (the target, not the scratch file): 'No space left on device: OUT'."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def atomic_write(path, data: Writer, fsync: bool = True) -> Path:
    """Write ``data`` (bytes, text, or a function given the open binary file) to ``path``.

    With ``fsync=False`` the rename is still atomic but durability is left to a later
    group commit (``fsync_dir`` / an fsync of the files by the caller).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_file(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a published file gets the usual mode
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _named(e, path) from e
    except RuntimeError as e:  # torch.save's C++ writer reports a full disk so ("unexpected pos ...")
        tmp.unlink(missing_ok=True)
        first = " ".join(str(e).split())[:200]
        raise OSError(errno.EIO, f"could not write it (is the disk full?): {first}", str(path)) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def probe_writable(path) -> Path:
    """Fail now (OSError naming the file) if ``path`` could not be written later; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        scratch_file(path).unlink()
    except OSError as e:
        raise _named(e, path) from e
    return path


def check_not_other_kind(folder: Path, flag: str = "--out") -> None:
    """S2VTError naming what ``folder`` is when it exists and is not a folder (a file, a FIFO, a device)."""
    if folder.exists() and not folder.is_dir():
        raise S2VTError(f"{flag + ' ' if flag else ''}{folder} is {kind_problem(folder.stat().st_mode) or 'a file'}, "
                        "not a folder")


@contextlib.contextmanager
def folder_lock(folder, flag: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if absent) while the block runs; S2VTError at
    once when another process holds it. The lock is ``flock`` on the folder itself, so it adds
    no file, and the kernel releases it however the process ends (``kill -9`` included). A
    folder this call created is removed again if the block leaves it empty."""
    folder = Path(folder)
    check_not_other_kind(folder, flag)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise S2VTError(f"another run is writing {folder} (it holds the folder's lock): wait for it to finish, "
                            f"or choose another {flag}") from None
        try:
            yield folder
        finally:
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: the run wrote nothing
    finally:
        os.close(fd)


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


LOCK_SUFFIX = ".s2vt-lock"


def hold_lock_file(lock: Path, busy: str, prepare: Callable[[], None] = lambda: None, output=None) -> int:
    """A descriptor holding an exclusive ``flock`` on the file ``lock`` (created if missing; ``prepare``
    runs before each try, e.g. to make its folder); S2VTError(``busy``) at once when another process
    holds it. A lock file its previous holder removed as it finished is not ours: the new one is taken.
    An OSError making it (a read-only folder, a full disk) names ``output``, the path the user gave."""
    for _ in range(5):
        try:
            prepare()
            fd = os.open(str(lock), os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # its folder was removed by the run that held it
            continue
        except OSError as e:
            raise _named(e, Path(output if output is not None else lock)) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise S2VTError(busy) from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd  # the lock file still in place: ours
        except FileNotFoundError:
            pass
        os.close(fd)  # locked a file the previous holder removed as it finished: lock the new one
    raise S2VTError(f"cannot lock {lock}: other runs keep taking and releasing it")


@contextlib.contextmanager
def file_lock(path, flag: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on the output file ``path`` while the block runs; S2VTError at once when
    another process holds it. The lock is ``flock`` on ``.NAME.s2vt-lock`` beside the file (a name no
    user file has), removed when the block ends; the kernel releases it however the process ends."""
    path = Path(path)
    lock = path.with_name(f".{path.name}{LOCK_SUFFIX}")
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]  # folders this lock creates
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = hold_lock_file(lock, f"another run is writing {path} (it holds {lock.name}): wait for it to finish, "
                                  f"or choose another {flag}", output=path)
    except BaseException:
        _remove_empty(made)
        raise
    try:
        yield path
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
        _remove_empty(made)  # a command that wrote nothing leaves no new folder behind


def _remove_empty(folders) -> None:
    """Remove ``folders`` (innermost first) that are still empty; any that is not stays."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return
