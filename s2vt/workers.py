"""Worker processes that die with the run that started them.

A run killed with ``kill -9`` gets no chance to stop its workers. Decoding workers (a
DataLoader's) notice within seconds; a ``ProcessPoolExecutor``'s workers wait for their next
task for ever. :class:`DieWithParent`, called first thing in a worker, asks the Linux kernel to
kill the worker the moment the thread that started it dies (``PR_SET_PDEATHSIG``); elsewhere
it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


class DieWithParent:
    """Picklable worker initialiser (``worker_init_fn`` or ``initializer``); create it in the parent."""

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
