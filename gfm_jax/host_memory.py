"""Keep freed host memory in the process (glibc), so a CPU train step does not page-fault.

XLA:CPU allocates a step's temporary buffers with malloc. glibc serves large requests with
fresh mmap'd pages and returns freed memory to the OS, so every step touches brand-new pages:
on this project's CPU runs the kernel's page faults cost more than some of the arithmetic
(writing a 67 MB buffer took 33 ms instead of 6). Turning off mmap for large blocks and heap
trimming makes freed buffers reusable by the next step; the process keeps its peak footprint.

That alone is not enough: XLA runs the step on worker threads, and glibc gives each such thread
its own arena, whose heaps are capped at 64 MB, so a larger request there is mmap'd whatever
M_MMAP_MAX says and unmapped when freed. The CPU benchmark's step takes its 613 MB of
temporaries in one such block: 170,000 page faults and 0.45 s of kernel time per step (strace
and getrusage). One arena, the main one, serves every thread from a heap that only grows.
Set GFM_JAX_MALLOC_DEFAULTS=1 to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1  # mallopt parameters from glibc's malloc.h
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1


def retain_freed_memory() -> bool:
    """Applies the settings where glibc is the allocator; returns whether it did."""
    if os.environ.get("GFM_JAX_MALLOC_DEFAULTS") == "1":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl without mallopt)
        return False
    # Before jax starts its thread pools: a thread keeps the arena it was first given.
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM), (_M_ARENA_MAX, 1))
    return all([bool(mallopt(param, value)) for param, value in settings])
