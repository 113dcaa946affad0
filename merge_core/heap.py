"""The C heap of a command-line merge: freed tensor buffers stay in the process for the next key.

Why: glibc serves an allocation of 128 KiB or more (a threshold it raises to at most 32 MiB as
blocks are freed) with fresh memory from the kernel, and gives free memory at the heap's top back
above twice that threshold; each thread that allocates gets an arena of its own, made of 64 MiB
heaps that are unmapped once free. A streamed merge allocates and frees a few tensors of 1-126 MB
for every key, on the reader thread and the merge thread, so many of its buffers were fresh memory,
each 4 KiB of it paying a page fault and the kernel's zeroing before the data was copied in. With
fixed thresholds of 64 MiB (fresh memory only above it) and 128 MiB (what free heap may stay), and
one arena for all threads, the heap serves the keys' buffers again: a cold full-size Flux fp8 weight
sum faulted about 300k times instead of 1033k, and took 27.4 s instead of 29.4 s (bench/RESULTS.md,
file merges against the physical floor of their I/O). The merge's buffer pool (io/buffers.py) still
keeps a few buffers above the heap's threshold; with positioned reads and no pool the same merge faulted 1.6M times
(the command line now maps its inputs: io/mapped_file.py).

Only the command line's file merges call this (cli/app.py, HEAP_COMMANDS): the program owns its
process. Inside ComfyUI the process is the host's, and its allocator is not ours to tune.
"""
from __future__ import annotations

import ctypes

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 128 << 20
ARENAS = 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's malloc.h


def keep_freed_buffers() -> bool:
    """Fix glibc's thresholds and arena count for this process; False where the C library has no ``mallopt``
    (not glibc: nothing is changed, merges only fault more)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows' ctypes wants a library name
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                mallopt(_M_ARENA_MAX, ARENAS)])
