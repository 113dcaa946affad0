"""What the engine reads from: a source hands out one tensor at a time by key.

Every source has shapes, dtypes and tensors. The abilities some have (stored fp8 bytes, read hints,
a buffer pool to read into, pages to let go) have defaults here that do nothing, so that the engine calls them on
any source; a source that has one overrides it."""
from __future__ import annotations

from typing import Optional, Protocol

import torch

from .buffers import BufferPool


class KeySource(Protocol):
    name: str
    # the pool reads go into while a merge streams (run_merge sets it on the sources it pools); None: fresh memory
    buffers: Optional[BufferPool] = None

    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    def dtype(self, key: str) -> torch.dtype: ...

    def get(self, key: str) -> torch.Tensor: ...

    def raw(self, key: str) -> Optional[bytes | bytearray | memoryview]:
        """The stored bytes, for byte-exact copies; None when not available."""
        return None

    def stored(self, key: str) -> Optional[torch.Tensor]:
        """The tensor as stored where that differs from ``get`` and the linear modes read it more cheaply
        (plain fp8, widened chunk by chunk as the math goes); None otherwise."""
        return None

    # The two bodies below return explicitly: a protocol method with an empty body is abstract to type checkers,
    # and these are defaults every source inherits.
    def prefetch(self, key: str) -> None:
        """A hint that ``key`` is read soon (a file source starts reading it from disk)."""
        return None

    def release(self, key: str, part: Optional[tuple[int, int]] = None) -> None:
        """Done with ``key`` for now: a mapped file source lets its pages go (io/mapped_file.py); ``part``: only
        those of the stored bytes [lo, hi), which the math has passed."""
        return None

    def close(self) -> None:
        """Release what the source holds open."""
        return None
