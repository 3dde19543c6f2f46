"""The ``s2vt`` command line. Each subcommand parses its arguments and calls one function
of the package; ``s2vt COMMAND --help`` shows examples.

Training and decoding flags are made from the config dataclasses (their help is the
field's text); flags several commands share (``--device``, the decoding flags, ``--overwrite``)
are defined once. Errors print one line: exit 2 when the command or its input must
change, 1 for a failure while running, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from s2vt import __version__
from s2vt.cli.caption import add_caption
from s2vt.cli.common import RAW, examples, shared_flags
from s2vt.cli.data import add_dataset_info, add_synth
from s2vt.cli.demo import add_demo
from s2vt.cli.evaluation import add_benchmark, add_compare, add_evaluate, add_report
from s2vt.cli.features import add_extract, add_interop
from s2vt.cli.train import add_train
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.fileio import file_lock, folder_lock
from s2vt.runtime.hostmem import keep_freed_memory
from s2vt.runtime.console import SHOWN, escaped, shown


class Parser(argparse.ArgumentParser):
    """A usage error is one line, as every other error: what is wrong, and where the help is."""
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {escaped(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="s2vt", formatter_class=RAW, description=(
        "S2VT video captioning: extract CNN features, train the stacked LSTM, caption videos, benchmark METEOR."),
        epilog=examples("s2vt demo", "s2vt synth data/synthetic",
                         "s2vt extract data/synthetic/videos --stream rgb --out features/synth_rgb.h5",
                         "s2vt train --dataset synthetic --annotations data/synthetic --features features/synth_rgb.h5 --out runs/rgb",
                         "s2vt caption video.mp4 --checkpoint runs/rgb/best.pt"))

    p.add_argument("--version", action="version", version=f"s2vt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    shared = shared_flags()
    for add in (add_synth, add_dataset_info, add_extract, add_interop, add_train, add_caption, add_evaluate,
                add_compare, add_benchmark, add_report, add_demo):
        add(sub, shared)
    return p


INTERRUPTED = {"train": "last.pt holds the last finished epoch; add --resume to continue",
               "extract": "finished videos are kept; re-run the same command to resume",
               "demo": "finished stages are kept; re-run the same command to resume",
               "synth": "the dataset is incomplete; add --overwrite to the same command to write it again"}


def _after_interrupt(args) -> str:
    """What an interrupted command kept, and how to go on."""
    if args.command == "train" and not (Path(args.out) / "last.pt").is_file():
        return "no epoch was saved; re-run the same command with --overwrite to start again"
    return INTERRUPTED.get(args.command, "nothing was left half-written")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread is, so a stopped command ends as an interrupted one."""
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def _catch_stop_signals() -> None:
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _stop)


# the output each command owns while it runs: (argument, kind, its name in messages); train, extract,
# import-features and evaluate (whose default path depends on the checkpoint) lock theirs themselves
OUTPUTS = {"report": ("out", "file", "--out"), "merge-features": ("out", "file", "output"),
           "benchmark": ("out", "folder", "--out"), "export-features": ("out", "folder", "--out"),
           "synth": ("out_dir", "folder", "output folder"), "demo": ("workdir", "folder", "--workdir")}


def output_lock(args):
    """The lock of the command's output (fileio.file_lock / folder_lock), or a no-op."""
    arg, kind, flag = OUTPUTS.get(args.command, (None, None, None))
    out = getattr(args, arg, None) if arg else None
    if not out:
        return contextlib.nullcontext()
    return (file_lock if kind == "file" else folder_lock)(out, flag)


def _interrupted(args, e: KeyboardInterrupt) -> int:
    if isinstance(e, Stopped):
        name = signal.Signals(e.signum).name
        print(f"s2vt {args.command}: stopped by {name} ({_after_interrupt(args)})", file=sys.stderr)
        return 128 + e.signum
    print(f"s2vt {args.command}: interrupted ({_after_interrupt(args)})", file=sys.stderr)
    return 130


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"s2vt: warning: {escaped(str(message))}\n"


def main(argv=None) -> int:
    for name in ("stdout", "stderr"):  # started with that stream closed (2>&-): Python set it to None
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))
        with contextlib.suppress(AttributeError, ValueError):  # a file name's undecodable bytes print as \xNN
            getattr(sys, name).reconfigure(errors=SHOWN)
    warnings.formatwarning = _one_line_warning  # a warning is one line, without a source excerpt
    if os.environ.get("WORLD_SIZE", "1") != "1":  # c10d prints C++ stack traces for failed connections
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")  # before torch is imported; errors still raise
    try:
        args = build_parser().parse_args(argv)
        if argv is None and threading.current_thread() is threading.main_thread():  # the command is the process
            _catch_stop_signals()
        keep_freed_memory()  # a command is one process: reuse freed tensors rather than map fresh pages
        try:
            with output_lock(args):
                return args.fn(args)
        except S2VTError as e:
            print(f"s2vt {args.command}: error: {escaped(str(e))}", file=sys.stderr)
            return getattr(e, "exit_code", 2)
        except OSError as e:
            where = f" {shown(str(e.filename))}:" if e.filename else ""  # h5py's errors name no file
            reason = e.strerror or e
            if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename:
                reason = "a file stands where a folder is needed"  # an output path through a file
            print(f"s2vt {args.command}: error:{where} {escaped(str(reason))} "
                  "(check the path, its permissions and free space)", file=sys.stderr)
            return 1
        except KeyboardInterrupt as e:
            return _interrupted(args, e)
        except Exception as e:  # a bug: one line, the traceback on request
            if os.environ.get("S2VT_DEBUG"):
                raise
            first = escaped(str(e).splitlines()[0][:300]) if str(e) else ""
            print(f"s2vt {args.command}: internal error: {type(e).__name__}: {first} "
                  "(set S2VT_DEBUG=1 for the traceback)", file=sys.stderr)
            return 1
    except Stopped as e:
        return 128 + e.signum
    except KeyboardInterrupt:
        print("s2vt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
