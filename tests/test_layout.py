"""The code's shape: short functions, and every extraction and decoding option declared once."""
import ast
from dataclasses import fields
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "s2vt"


def test_no_function_is_longer_than_60_lines():
    long = []
    for p in sorted(PKG.rglob("*.py")):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60:
                long.append(f"{p.name}:{n.name} ({n.end_lineno - n.lineno + 1} lines)")
    assert not long, long


def test_extraction_and_decoding_flags_come_from_their_configs():
    """Each flag is its field's: the help text is the field's own (made by config.add_arguments)."""
    from s2vt.cli.app import build_parser
    from s2vt.runtime.config import flag
    from s2vt.decoding.search import DecodeConfig
    from s2vt.features.config import ExtractConfig

    sub = build_parser()._subparsers._group_actions[0].choices
    uses = {ExtractConfig: ["extract"], DecodeConfig: ["caption", "evaluate", "benchmark", "train"]}
    for cls, commands in uses.items():
        for command in commands:
            helps = {a.option_strings[0]: a.help for a in sub[command]._actions if a.option_strings}
            for f in fields(cls):
                if not f.metadata.get("cli", True) or (command == "train" and f.name == "alpha"):
                    continue
                assert helps[flag(f.name)].startswith(f.metadata["help"]), (command, f.name)
