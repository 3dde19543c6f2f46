"""Every command's ``--help`` is a contract: flags, defaults and examples stay as recorded.

The snapshot was taken from the command line as users know it; a change to a flag shows here
as a diff. Regenerate on purpose with ``S2VT_UPDATE_SNAPSHOT=1 python -m pytest tests/cli/test_help_snapshot.py``.
"""
import os
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "help.txt"


def all_help() -> str:
    from s2vt.cli.app import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal's width
    parser = build_parser()
    parts = [parser.format_help()]
    for name, sub in sorted(parser._subparsers._group_actions[0].choices.items()):
        parts.append(f"===== s2vt {name} --help\n{sub.format_help()}")
    return "\n".join(parts)


def test_help_of_every_command_is_unchanged(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = all_help()
    if os.environ.get("S2VT_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), "--help changed; see the diff (S2VT_UPDATE_SNAPSHOT=1 to accept it)"
