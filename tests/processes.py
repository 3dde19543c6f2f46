"""Helpers for tests that kill runs: which processes are still alive."""
import time
from pathlib import Path


def processes_with(text: str) -> list:
    """PIDs of live processes whose command line contains ``text`` (workers are forks of their run;
    a zombie's command line is empty)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and text in (d / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(d.name))
        except OSError:
            pass
    return pids


def wait_until_gone(text: str, seconds: float = 20.0) -> list:
    """Wait up to ``seconds`` for every process naming ``text`` to end; those left."""
    t0 = time.time()
    while processes_with(text) and time.time() - t0 < seconds:
        time.sleep(0.05)
    return processes_with(text)
