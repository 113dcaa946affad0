"""Reusable read buffers for one streamed merge.

Why: a tensor read into fresh memory pays a page fault (and the kernel's zeroing) for
every 4 KiB before the data is copied in; reading into memory the process already
touched is about 3x cheaper (bench/RESULTS.md, busy-machine section). A merge reads
every merged key of two or three files, so while ``run_merge`` streams, its file
sources read into buffers from here, and the engine gives a merged key's input buffers
back once that key's result exists (never a buffer the result itself lives in).

A pool lives for one merge, holds at most ``limit`` buffers of ``limit_bytes`` in all, and only buffers of at
least ``MIN_BYTES`` (malloc recycles smaller allocations by itself).
"""
from __future__ import annotations

import threading
from typing import Optional

import torch

MIN_BYTES = 1 << 20
# What the free buffers may hold in all: a key's buffers only fit keys of about its size, so the buffers of a few
# large keys (SDXL's token embeddings: 4 x 126 MB in a 4-file combine) would otherwise stay unused to the end.
LIMIT_BYTES = 256 << 20


class BufferPool:
    def __init__(self, limit: int = 12, limit_bytes: int = LIMIT_BYTES):
        self.limit, self.limit_bytes = limit, limit_bytes
        self._free: list[torch.Tensor] = []  # 1-D uint8 tensors, each spanning its whole storage, oldest first
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        """A uint8 tensor of exactly nbytes: a view of a pooled buffer when one fits (at most twice as big)."""
        if nbytes >= MIN_BYTES:
            with self._lock:
                fits = [i for i, buf in enumerate(self._free) if nbytes <= buf.numel() <= 2 * nbytes]
                if fits:
                    return self._free.pop(min(fits, key=lambda i: self._free[i].numel()))[:nbytes]
        return torch.empty(nbytes, dtype=torch.uint8)

    def give(self, tensor: Optional[torch.Tensor], result: Optional[torch.Tensor] = None) -> None:
        """Take back the buffer under ``tensor``, which came from ``take`` and which nothing will use again,
        unless ``result`` lives in the same memory."""
        if tensor is None or tensor.device.type != "cpu":
            return
        storage = tensor.untyped_storage()
        if storage.nbytes() < MIN_BYTES:
            return
        if result is not None and result.device.type == "cpu" and \
                result.untyped_storage().data_ptr() == storage.data_ptr():
            return
        with self._lock:
            if storage.nbytes() > self.limit_bytes or any(b.data_ptr() == storage.data_ptr() for b in self._free):
                return
            self._free.append(torch.empty(0, dtype=torch.uint8).set_(storage))
            # the oldest buffers go first: the keys just merged are the likeliest to match the next ones in size
            while len(self._free) > self.limit or sum(b.numel() for b in self._free) > self.limit_bytes:
                self._free.pop(0)
