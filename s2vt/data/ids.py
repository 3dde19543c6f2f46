"""The one rule for video ids, whatever their source (dataset files, ``--list``, folder
scans): an id names an HDF5 group and, in reports, a file beside others, so it must not
be empty, hold a path separator or a control character, or start with a dot (which
also rules out ``.`` and ``..``).
"""
from __future__ import annotations

from typing import Optional

from s2vt.runtime.errors import S2VTError

MAX_LEN = 255


def id_problem(vid: object) -> Optional[str]:
    """Why ``vid`` is not a valid video id, or None when it is."""
    if not isinstance(vid, str):
        return f"a video id must be text, not {type(vid).__name__}"
    if not vid:
        return "the video id is empty"
    if len(vid) > MAX_LEN:
        return f"the video id is longer than {MAX_LEN} characters"
    if "/" in vid or "\\" in vid:
        return f"video id {vid!r} contains a path separator"
    if vid.startswith("."):
        return f"video id {vid!r} starts with a dot"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in vid):
        return f"video id {vid!r} contains a control character"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in vid):  # bytes of a file name or argument that are not UTF-8
        return f"video id {vid!r} is not UTF-8 text"
    return None


def check_video_id(vid: object, where: str = "") -> str:
    """``vid`` unchanged when valid; else S2VTError naming ``where`` (e.g. ``file:line``)."""
    problem = id_problem(vid)
    if problem:
        raise S2VTError(f"{where + ': ' if where else ''}{problem} (ids may not be empty, contain '/' or '\\', "
                        "control characters, or start with '.')")
    return vid  # type: ignore[return-value]
