"""The C heap of a command-line merge: freed tensor buffers stay in the process for the next key.

Why: glibc serves an allocation of 128 KiB or more (a threshold it raises to at most 32 MiB as
blocks are freed) with fresh memory from the kernel, and gives free memory at the heap's top back
above twice that threshold. A streamed merge allocates and frees a few tensors of 1-126 MB for every
key, so most of its buffers were fresh memory, each 4 KiB of it paying a page fault and the kernel's
zeroing before the data was copied in: about 460k faults in a warm 2 GB SD1.5 merge. With fixed
thresholds of 64 MiB (fresh memory only above it) and 128 MiB (what free heap may stay), the heap
serves the keys' buffers again (bench/RESULTS.md, SD1.5 warm weight sum).

Only the command line calls this: it owns its process. Inside ComfyUI the process is the host's, and
its allocator is not ours to tune.
"""
from __future__ import annotations

import ctypes

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_applied = False


def keep_freed_buffers() -> bool:
    """Fix glibc's thresholds for this process; False where the C library has no ``mallopt`` (not glibc:
    nothing is changed, merges only fault more)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows' ctypes wants a library name
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    global _applied
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


def applied() -> bool:
    """Whether this process's heap keeps freed buffers: a merge's own buffer pool then only adds memory."""
    return _applied
