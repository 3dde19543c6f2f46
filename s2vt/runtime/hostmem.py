"""Host memory allocation for CNN and LSTM work on the CPU.

glibc's malloc serves every block above its mmap threshold (128 KiB at start, raised
only after such a block is freed) with fresh pages from the kernel and returns them on
free. A CNN forward pass allocates and frees activations of several MiB per layer, so on
the CPU each call paid for mapping, zero-filling and unmapping them: EfficientNet-Lite0
ran 1.45x slower per image at batch 8, and about 2x slower at batch 32-64, than with
the blocks kept for reuse (scripts/bench_cnn.py, BENCHMARKS.md).

:func:`keep_freed_memory` raises both thresholds, so freed activations stay in the
process and the next call reuses them. The cost: the process keeps its peak memory
until it exits. It changes nothing on other C libraries (musl, macOS, Windows), nor when
the environment sets ``S2VT_KEEP_FREED_MEMORY=0`` (glibc's defaults, e.g. to compare).

:func:`return_free_memory` hands the kept pages back before the process forks workers:
a page the parent holds at a fork is shared copy-on-write with every child, so the
parent's next write to it costs a fault, a copy and a TLB flush on every thread (the
CNN's). A page given back costs only a fresh zero-filled page on its next use.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 256 << 20  # blocks below this come from the heap, and go back to it
TRIM_THRESHOLD = 1 << 30    # free memory kept at the top of the heap before it is returned

_applied = None


def _glibc(name: str):
    """The C library's function ``name`` on Linux with glibc; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # not glibc
        return None


def keep_freed_memory() -> bool:
    """Tune glibc malloc for repeated large allocations (once per process); True if applied."""
    global _applied
    if _applied is None:
        _applied = False
        if os.environ.get("S2VT_KEEP_FREED_MEMORY", "1") != "0":
            mallopt = _glibc("mallopt")
            if mallopt is None:
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                                       TRIM_THRESHOLD))
    return _applied


def return_free_memory() -> bool:
    """Give the heap's free pages back to the kernel (glibc's ``malloc_trim(0)``, a few ms);
    True if called. Call it just before forking worker processes (see the module's notes)."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
