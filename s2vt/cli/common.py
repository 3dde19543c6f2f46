"""What every command shares: help layout, the flags several commands take, output checks, and the
decoding flags."""
from __future__ import annotations

import argparse
from pathlib import Path

from s2vt.data.corpora import DATASETS as CORPORA
from s2vt.decoding.search import DecodeConfig
from s2vt.runtime.config import add_arguments, overrides
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.inputs import read_json

RAW = argparse.RawDescriptionHelpFormatter


DATASETS = f"{', '.join(CORPORA[:-1])} or {CORPORA[-1]}"  # the formats --dataset takes, in words


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def check_output(out: Path, inputs=(), overwrite: bool = False, ours=lambda p: False) -> Path:
    """Refuse an output path that is one of the inputs, or an existing file this command did not write."""
    out = Path(out)
    for i in inputs:
        if i and Path(i).exists() and out.exists() and out.resolve() == Path(i).resolve():
            raise S2VTError(f"--out {out} is one of this command's inputs; choose another output path")
    if out.is_dir():
        raise S2VTError(f"--out {out} is a folder; give a file path")
    if out.exists() and not out.is_file():  # a FIFO, socket or device: telling whether it is ours would block
        raise S2VTError(f"--out {out} is not a regular file (a FIFO, socket or device); give a file path")
    if out.exists() and not overwrite and not ours(out):
        raise S2VTError(f"--out {out} exists and was not written by this command; pass --overwrite to replace it")
    return out


def is_evaluation(p: Path) -> bool:
    try:  # a FIFO, a huge or a deeply nested file is not one of ours (and is not read)
        d = read_json(p)
        return isinstance(d, dict) and "metrics" in d and "videos" in d
    except (OSError, ValueError, S2VTError):
        return False


def is_report(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return b"s2vt-report" in f.read(4096)
    except OSError:
        return False


def decode_flags(args) -> dict:
    """The decoding flags given (beam, max_len, len_penalty, alpha): they override each checkpoint's
    own decoding; checked here, before any work."""
    flags = overrides(args, DecodeConfig)
    DecodeConfig().given(**flags)
    return flags


def needs_flow(args, *flags) -> None:
    """Refuse fusion flags given without a flow model (they would be ignored)."""
    for f in flags:
        if getattr(args, f[2:].replace("-", "_"), None) is not None and not args.checkpoint_flow:
            raise S2VTError(f"{f} is for fusion: it needs --checkpoint-flow")


def shared_flags():
    """Parent parsers for flags several commands take, defined once."""
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    decode = argparse.ArgumentParser(add_help=False)
    add_arguments(decode.add_argument_group("decoding (default: each checkpoint's own, set when it was trained)"),
                  DecodeConfig)
    overwrite = argparse.ArgumentParser(add_help=False)
    overwrite.add_argument("--overwrite", action="store_true", help="replace an existing output this command did not write")
    return {"device": device, "decode": decode, "overwrite": overwrite}
