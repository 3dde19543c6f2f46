"""What a command prints about the files it names: one line each, whatever the bytes of a name.

A file name that is not UTF-8 shows its undecodable bytes as ``\\xNN`` (the :data:`SHOWN` encoding
error handler, which the command line installs on stdout and stderr), and control characters are
escaped, so a report stays one line and a TSV row one row. Per-file failures and warnings go to
stderr (:func:`say`), apart from a command's results on stdout.
"""
from __future__ import annotations

import codecs
import re
import sys

_ANY_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # Unicode's Cc, Zl, Zp

SHOWN = "s2vt.shown"  # an encoding error handler: a file name's undecodable byte 0xNN is written as \\xNN


def _show_bytes(e: UnicodeError):
    if not isinstance(e, UnicodeEncodeError):
        raise e
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c.encode("ascii", "backslashreplace")
                   .decode() for c in e.object[e.start:e.end]), e.end


codecs.register_error(SHOWN, _show_bytes)


def escaped(text: str) -> str:
    """``text`` on one line: each control character (a line break, a tab, an escape) written as Python
    writes it in a string literal (``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``)."""
    return _ANY_CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def shown(name: str) -> str:
    """``name`` printable whatever its bytes, on one line: a file name that is not UTF-8 shows its bytes as
    ``\\xNN``, and its control characters are escaped (:func:`escaped`)."""
    return escaped(name.encode("utf-8", SHOWN).decode("utf-8"))


def say(line: str) -> None:
    """``line`` as one line on stderr (control characters escaped): a per-file failure or a warning, kept
    apart from a command's results on stdout."""
    print(escaped(line), file=sys.stderr, flush=True)


def print_summary(summary, command: str) -> int:
    """An extraction's or import's counts on stdout and each failed file as one line on stderr
    (``s2vt COMMAND: failed: ...``); the exit status: 1 when any failed, else 0."""
    print("\n".join(summary.lines()), flush=True)
    for line in summary.problems():
        say(f"s2vt {command}: {line}")
    return 1 if summary.failed else 0
