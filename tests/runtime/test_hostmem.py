import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, sys
from s2vt.runtime import hostmem
if sys.argv[1] == "tuned":
    assert hostmem.keep_freed_memory() and hostmem.keep_freed_memory()  # idempotent
if sys.argv[1] == "opted out":
    assert not hostmem.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblkhd
p = libc.malloc(50 << 20)  # a 50 MiB block, like one layer's activations at batch 64
print(libc.mallinfo2().hblkhd - before)
libc.free(p)
"""


def _mapped_bytes(mode: str, **env) -> int:
    r = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                       env={**os.environ, **env})
    if r.returncode and "mallinfo2" in r.stderr:
        pytest.skip("not glibc >= 2.33")
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_large_blocks_come_from_the_heap_once_tuned():
    assert _mapped_bytes("default") >= 50 << 20  # glibc maps a fresh region (zero-filled pages) per block
    assert _mapped_bytes("tuned") == 0           # kept in the heap: freed and reused without the kernel
    assert _mapped_bytes("opted out", S2VT_KEEP_FREED_MEMORY="0") >= 50 << 20  # the environment keeps the defaults


RETURN_PROBE = r"""
import ctypes
from s2vt.runtime import hostmem
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
assert hostmem.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(8 << 20) for _ in range(16)]  # 128 MiB of activations, say
for b in blocks:
    ctypes.memset(b, 1, 8 << 20)  # touched: resident
guard = libc.malloc(1 << 20)  # keeps them below the top of the heap, where only a real trim reaches
for b in blocks:
    libc.free(b)
kept = resident()
assert hostmem.return_free_memory()
print(kept - resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_free_memory_kept_for_reuse_goes_back_before_a_fork():
    r = subprocess.run([sys.executable, "-c", RETURN_PROBE], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 100 << 20  # the freed 128 MiB were resident, and no longer are
