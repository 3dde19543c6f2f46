"""Reading a file a user names on the command line, safely: one place for the checks every
input file gets before its contents are trusted.

- it must be a regular file: a FIFO, socket, device or folder is refused by name at once
  (a FIFO would block the read forever), opened without blocking and checked on the open
  descriptor, so nothing can be swapped in between;
- its size is bounded (:data:`MAX_BYTES` for JSON and text inputs), so a huge file gives a
  line, not an out-of-memory kill;
- text must be UTF-8; JSON may nest at most :data:`MAX_DEPTH` levels (deeper JSON would hit
  Python's recursion limit in the parser or in the code that walks it);
- lines of a list file may hold no control characters (a NUL byte would reach file names and
  the HDF5 store).

Every refusal is an :class:`InputError` (an ``S2VTError``): one line naming the file.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any, List, Optional, Tuple

from s2vt.runtime.errors import S2VTError

MAX_BYTES = 64 * 2 ** 20   # JSON and text inputs
MAX_DEPTH = 64             # JSON nesting
MAX_INT_DIGITS = 4300      # digits of a JSON integer (Python's own default bound on str -> int)
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")  # Unicode's Cc, Zl, Zp but the tab
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class InputError(S2VTError):
    """An input file that cannot be read as what it should be; the message names it."""


class NotText(InputError):
    """A regular file whose bytes are not UTF-8 text, or not JSON where JSON is read."""


def _name(what: str, path) -> str:
    return f"{what} {path}" if what else f"{path}"


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.0f} MiB" if n >= 2 ** 20 else f"{n} bytes"


def kind_problem(mode: int) -> Optional[str]:
    """What a file of ``mode`` is when it is not a regular file, else None."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def check_input_file(path, what: str = "", max_bytes: Optional[int] = MAX_BYTES) -> Path:
    """``path`` if it is an existing regular file of at most ``max_bytes``; else InputError.
    Does not open the file (for inputs a library opens itself)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{_name(what, path)} does not exist")
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise InputError(f"{_name(what, path)}: cannot read it ({getattr(e, 'strerror', None) or e})")
    _check_stat(st, path, what, max_bytes)
    return Path(path)


def _check_stat(st: os.stat_result, path, what: str, max_bytes: Optional[int]) -> None:
    kind = kind_problem(st.st_mode)
    if kind:
        raise InputError(f"{_name(what, path)} is {kind}, not a regular file"
                         + ("; give a file in it" if stat.S_ISDIR(st.st_mode) else ""))
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputError(f"{_name(what, path)} is {_mib(st.st_size)}: larger than the {_mib(max_bytes)} an input "
                         "of this kind may have")


def read_bytes(path, what: str = "", max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked on the open file: no FIFO blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise InputError(f"{_name(what, path)} does not exist")
    except (OSError, ValueError) as e:
        raise InputError(f"{_name(what, path)}: cannot read it ({getattr(e, 'strerror', None) or e})")
    try:
        _check_stat(os.fstat(fd), path, what, max_bytes)
    except InputError:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise InputError(f"{_name(what, path)}: cannot read it ({e.strerror or e})")
    if len(data) > max_bytes:  # grew since the check
        raise InputError(f"{_name(what, path)} is larger than the {_mib(max_bytes)} an input of this kind may have")
    return data


def read_text(path, what: str = "", max_bytes: int = MAX_BYTES) -> str:
    """A UTF-8 text file (a byte-order mark is dropped)."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise NotText(f"{_name(what, path)}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); "
                      "re-encode the file as UTF-8")


def json_depth(text: str) -> int:
    """How deep the arrays and objects of a JSON text nest (strings skipped; malformed text gives
    some number, and the parser then names the problem)."""
    depth = deepest = 0
    for b in _BRACKETS.findall(_STRINGS.sub("", text)):
        depth += 1 if b in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(text: str, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """JSON of at most ``max_depth`` levels; InputError naming ``where`` otherwise."""
    if json_depth(text) > max_depth:
        raise InputError(f"{where}: JSON nested deeper than {max_depth} levels; no s2vt input needs that")
    try:
        return json.loads(text, parse_int=_bounded_int)
    except _LongInteger:
        raise InputError(f"{where} holds an integer of more than {MAX_INT_DIGITS} digits; no s2vt input needs that")
    except json.JSONDecodeError as e:
        raise NotText(f"{where} is not valid JSON: {e}")
    except (ValueError, RecursionError) as e:
        raise InputError(f"{where} is not JSON s2vt can read: {str(e).splitlines()[0][:200]}")


class _LongInteger(Exception):
    """An integer literal longer than :data:`MAX_INT_DIGITS` (never converted: that takes quadratic time)."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _LongInteger
    return int(text)


def read_json(path, what: str = "", max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of a regular UTF-8 file of at most ``max_bytes``, nested at most ``max_depth``."""
    return parse_json(read_text(path, what, max_bytes), _name(what, path), max_depth)


def control_problem(text: str) -> Optional[str]:
    """The first control character of ``text`` other than a tab, described; None when there is none."""
    m = _CONTROLS.search(text)
    if not m:
        return None
    ch = m.group()
    return "holds a NUL byte" if ch == "\0" else f"holds the control character U+{ord(ch):04X}"


def read_lines(path, what: str = "", max_bytes: int = MAX_BYTES, controls: bool = False) -> List[Tuple[int, str]]:
    """(1-based line number, text) of each line of a UTF-8 file (``\\n`` or ``\\r\\n`` ends a line).
    Unless ``controls``, a line holding a control character is refused as ``FILE:LINE``."""
    lines = read_text(path, what, max_bytes).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = []
    for n, line in enumerate(lines, 1):
        line = line[:-1] if line.endswith("\r") else line
        problem = None if controls else control_problem(line)
        if problem:
            raise InputError(f"{what + ' ' if what else ''}{path}:{n}: the line {problem}; "
                             "a line is text (tabs allowed)")
        out.append((n, line))
    return out
