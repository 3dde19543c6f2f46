"""Worker processes that die with the run that started them.

A run killed with ``kill -9`` gets no chance to stop its workers. Decoding workers (a
DataLoader's) notice within seconds; a ``ProcessPoolExecutor``'s workers wait for their next
task for ever; a METEOR JVM still loading runs on for seconds, growing to 1 GB. Both helpers
ask the Linux kernel to kill the process the moment the thread that started it dies
(``PR_SET_PDEATHSIG``): :class:`DieWithParent` first thing in a Python worker, and
:func:`child_dies_with_us` for a program started with ``subprocess``. Elsewhere they do nothing.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from typing import Callable, Optional

PR_SET_PDEATHSIG = 1


def worker_context():
    """The multiprocessing context for worker processes: ``fork`` on Linux, so a worker is a
    child of the run itself (what :class:`DieWithParent` and the workers' own checks of their
    parent rely on) whatever the interpreter's default (``forkserver`` from Python 3.14, whose
    workers are children of a server process). Elsewhere the platform's default."""
    import multiprocessing

    return multiprocessing.get_context("fork") if sys.platform.startswith("linux") else multiprocessing.get_context()


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class DieWithParent:
    """Picklable worker initialiser (``worker_init_fn`` or ``initializer``); create it in the parent,
    and start the workers from :func:`worker_context` (a worker must be the parent's child)."""

    def __init__(self):
        self.parent = os.getpid()

    def __call__(self, *_) -> None:
        if not sys.platform.startswith("linux"):
            return
        try:
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return
        if os.getppid() != self.parent:  # the parent died before the call above
            os._exit(1)


def child_dies_with_us() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the program is killed when this process dies.
    None off Linux, and off the main thread (whose exit, not the process's, would kill it)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the forked child: no imports, no locks
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec
