"""The allocator setting CPU decoding relies on: applied once, process-wide, harmless to call again."""

from __future__ import annotations

import platform
import subprocess
import sys


def test_keep_freed_memory_takes_effect_on_glibc_and_is_idempotent() -> None:
    # A fresh interpreter, so the answer is this call's and not an earlier test's.
    code = (
        "from gateway.codec.cpu_heap import keep_freed_memory as k\n"
        "first = k(); print(first, k() == first)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    first, same = out.stdout.split()
    assert same == "True"
    if platform.libc_ver()[0] == "glibc":
        assert first == "True"
