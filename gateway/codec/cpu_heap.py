"""Keep large freed tensor buffers in the process heap instead of handing them back to the kernel.

glibc serves every allocation above its mmap threshold (at most 32 MB, often
far less) with a fresh ``mmap`` and returns it with ``munmap`` when the tensor
dies, so each full-resolution activation of a CPU decoder is paid for again in
page faults: a Kodak-size VAE decode spends about a third of its time there
(0.86 s against 0.57 s with the buffers kept, bit-identical output; 2 cores,
2026-12-02, ``tools/bench_codec.py``).  Raising the mmap and trim thresholds
lets freed buffers be reused by the next layer.  The cost is that the heap
keeps up to ``trim`` bytes above what is in use instead of returning them at
once, so a process's resident size stays near its peak between pictures.

Process-wide and idempotent; a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger(__name__)

#: mallopt parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Allocations up to this size come from the heap (a 12 MP decode's largest tile activation is ~50 MB).
MMAP_THRESHOLD = 256 << 20
#: Free memory at the top of the heap kept for reuse before it is returned to the kernel.
TRIM_THRESHOLD = 512 << 20

_lock = threading.Lock()
_state: bool | None = None


def keep_freed_memory() -> bool:
    """Set the process's allocator to reuse large freed buffers (once); True where it took effect."""
    global _state
    with _lock:
        if _state is None:
            _state = _apply()
        return _state


def _apply() -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt here: CPU decoding keeps the allocator's defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the thresholds: CPU decoding keeps the allocator's defaults")
    return ok
