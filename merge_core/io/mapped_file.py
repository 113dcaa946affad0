"""A model file's bytes read straight from the page cache (a private read mapping), for the command line's merges.

Why: a positioned read copies every tensor from the page cache into a buffer of the process; on a warm
SD1.5 merge that copy and the first touch of the buffers were about a third of the merge's system time,
and the buffers ahead of the math were a quarter of its resident memory (bench/RESULTS.md, file merges
against the physical floor). Mapped, a tensor is a view of the page cache: the read-ahead thread maps a
key's pages in (MADV_POPULATE_READ: read from disk if need be, without the math thread faulting on
them), the math reads them where they are, and once the key is done its pages are unmapped again
(MADV_DONTNEED: the page cache keeps them, the process's resident memory lets them go). Of a tensor larger
than ``POPULATE_BYTES`` only that much is mapped in ahead: the math maps the rest in as it reaches it and
lets go what it has passed (engine/linear.py), so a token embedding is never resident whole (its pages
are already on their way into the page cache: the engine asks for them a key ahead).

The mapping is private (copy on write): a tensor view that something wrote into would change this
process's copy only, never the file. Views stay valid after ``release``: touching released pages maps
them in again. So that a reader whose caller never releases (a pass over every key) does not come to
map the whole file, the oldest ranges are released once more than ``LIMIT_BYTES`` are mapped in.

Only the command line maps its inputs (``enable``, called where heap.py's policy is): a file shortened
before a key is mapped in is an error at the populate, but one shortened while the math reads its pages
makes the process fault, which a program run for one merge may risk and a host like ComfyUI must not.
Where the platform has no ``madvise``, readers keep positioned reads.
"""
from __future__ import annotations

import collections
import errno
import mmap
import os
import sys
import threading

import torch

POPULATE_READ = 22  # Linux 5.14+ (MADV_POPULATE_READ; Python's mmap module has no name for it)
LIMIT_BYTES = 512 << 20  # what one file may have mapped in before its oldest ranges are let go
POPULATE_BYTES = 32 << 20  # what a read maps in ahead of the math, at most (fp8 Flux's largest weights: 36 MiB)
_enabled = False


def enable(on: bool = True) -> bool:
    """Map the inputs of the readers opened from now on; False (and nothing changed) where the platform
    cannot release mapped pages."""
    global _enabled
    _enabled = on and sys.platform.startswith("linux") and hasattr(mmap.mmap, "madvise")
    return _enabled


def enabled() -> bool:
    return _enabled


class MappedFile:
    """One file's private read mapping: views of byte ranges, each mapped in on request and let go after."""

    def __init__(self, fd: int):
        self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        self._fd = fd  # the reader's, open as long as this mapping is used
        self._size = len(self._map)
        self._mapped: collections.OrderedDict[int, int] = collections.OrderedDict()  # begin -> end, oldest first
        self._mapped_bytes = 0
        self._populate = True  # False once the kernel refused POPULATE_READ (before 5.14): the math faults instead
        self._lock = threading.Lock()

    def tensor(self, begin: int, end: int) -> torch.Tensor:
        """The bytes [begin, end) as a uint8 tensor (a view of the mapping), mapped in."""
        self._map_in(begin, end)
        return torch.frombuffer(self._map, dtype=torch.uint8, count=end - begin, offset=begin)

    def view(self, begin: int, end: int) -> memoryview:
        """The bytes [begin, end) as a memoryview of the mapping, mapped in."""
        self._map_in(begin, end)
        return memoryview(self._map)[begin:end]

    def release(self, begin: int, end: int) -> None:
        """Unmap the pages of [begin, end) from this process (the page cache keeps them)."""
        with self._lock:
            if self._mapped.pop(begin, None) is not None:
                self._mapped_bytes -= end - begin
        self._advise(mmap.MADV_DONTNEED, begin, end)

    def release_within(self, begin: int, end: int) -> None:
        """Unmap the whole pages inside [begin, end), part of a range still in use (the bytes of a tensor the math
        has passed): a page it shares with the bytes around it stays, and the range stays counted until ``release``."""
        first, last = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
        self._advise(mmap.MADV_DONTNEED, first, last)

    def _map_in(self, begin: int, end: int) -> None:
        if end <= begin:
            return
        if self._populate:
            try:
                self._advise(POPULATE_READ, begin, min(end, begin + POPULATE_BYTES))
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EFAULT: the range is past the end of the file, which shrank
                    raise OSError(exc.errno, "the file is shorter than when it was opened") from None
                self._populate = False  # an older kernel: the first touch maps the pages in instead
        if end - begin > POPULATE_BYTES and os.fstat(self._fd).st_size < end:  # the part the math maps in
            raise OSError(errno.EFAULT, "the file is shorter than when it was opened")
        with self._lock:
            if begin not in self._mapped:
                self._mapped[begin] = end
                self._mapped_bytes += end - begin
            oldest = []
            while self._mapped_bytes > LIMIT_BYTES and len(self._mapped) > 1:
                first, last = self._mapped.popitem(last=False)
                self._mapped_bytes -= last - first
                oldest.append((first, last))
        for first, last in oldest:
            self._advise(mmap.MADV_DONTNEED, first, last)

    def _advise(self, option: int, begin: int, end: int) -> None:
        start = begin - begin % mmap.PAGESIZE  # madvise takes whole pages from an aligned start
        if end > start and start < self._size:
            self._map.madvise(option, start, min(end, self._size) - start)

    def close(self) -> None:
        """Let the mapping go: it is unmapped once no tensor views it (each view holds a reference to it;
        ``mmap.close`` would unmap it under a tensor's feet, as torch keeps no buffer export)."""
        self._map = None  # type: ignore[assignment]
