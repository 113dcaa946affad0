"""The engine's read-ahead and write-behind: the keys after the one being computed are loading, and the
keys before it are writing, each in plan order on one thread, within a byte budget.

Why more than one key each way: key sizes swing (a Flux block's 38M-value MLP weight next to its small
norms and biases). With one key ahead, the reader idled through a large key's math after
reading the small key after it, and the math then waited for the large key after that; on a
full-size fp8 Flux merge of three files each side waited about 18 s. A byte budget lets the
reader keep going through small keys, and still bounds memory (at least one key is always
ahead, however large). On the other side, a write that the kernel throttles (too many dirty
pages) held the math, which held the read-ahead: with writes pending up to a budget, the
math goes on.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
from typing import Callable, NamedTuple, Optional, Sequence, TypeVar

from .io.buffers import LIMIT_BYTES as POOL_BYTES

K = TypeVar("K")

BUDGET_BYTES = 256 << 20  # what the loads ahead may read beyond the key being computed
WRITE_BUDGET_BYTES = 256 << 20  # what may wait to be written
MAX_KEYS = 16


class Budgets(NamedTuple):
    """A streamed merge's memory beyond the key being computed, in bytes."""
    read_ahead: int  # the loads ahead
    write_behind: int  # the results waiting to be written
    pool: int  # free buffers kept for the next keys (io/buffers.py)


BUDGETS = Budgets(BUDGET_BYTES, WRITE_BUDGET_BYTES, POOL_BYTES)
# Inputs read through mappings (io/mapped_file.py, the command line's): no read buffer exists, so the pool only keeps
# result buffers, which the heap keeps as well (heap.py); a load ahead maps its pages in, and a page-cache hint for
# the key after it starts the disk. Smaller budgets then keep the peak under 1 GB at the same speed (bench/RESULTS.md,
# file merges against the physical floor).
MAPPED_BUDGETS = Budgets(64 << 20, 64 << 20, 32 << 20)


class ReadAhead:
    """``take()`` returns the loads of ``keys`` in order; up to ``budget`` bytes of later keys (by ``cost``)
    are loading meanwhile. ``load(key, after)`` also gets the key after it (None at the end), for hints."""

    def __init__(self, executor: cf.Executor, load: Callable, keys: Sequence[K], cost: Callable[[K], int],
                 budget: int = BUDGET_BYTES, max_keys: int = MAX_KEYS):
        self.executor, self.load, self.keys, self.cost = executor, load, keys, cost
        self.budget, self.max_keys = budget, max_keys
        self.queue: collections.deque = collections.deque()  # (future, cost) in plan order
        self.next = 0
        self.bytes = 0
        self._fill()

    def _fill(self) -> None:
        while self.next < len(self.keys) and len(self.queue) < self.max_keys:
            key = self.keys[self.next]
            cost = self.cost(key)
            if self.queue and self.bytes + cost > self.budget:
                return
            after = self.keys[self.next + 1] if self.next + 1 < len(self.keys) else None
            self.queue.append((self.executor.submit(self.load, key, after), cost))
            self.bytes += cost
            self.next += 1

    def take(self):
        """The next key's load (its error raised here); the reader moves on meanwhile."""
        future, cost = self.queue.popleft()
        self.bytes -= cost
        self._fill()
        return future.result()

    def cancel(self) -> None:
        """Drop the loads not started yet (on an error or a stop: the executor would run them all first)."""
        while self.queue:
            self.queue.popleft()[0].cancel()


class WriteBehind:
    """``put(fn, *args, nbytes=, release=)`` runs fn(*args) on the executor in order; the caller waits only
    while more than ``budget`` bytes are pending (or, with ``drain``, for all). ``release`` runs once
    its put is done (a buffer goes back to its pool). A failed put raises at the next call."""

    def __init__(self, executor: cf.Executor, budget: int = WRITE_BUDGET_BYTES):
        self.executor, self.budget = executor, budget
        self.queue: collections.deque = collections.deque()  # (future, nbytes, release)
        self.bytes = 0

    def put(self, fn: Callable, *args, nbytes: int, release: Optional[Callable[[], None]] = None) -> None:
        self.queue.append((self.executor.submit(fn, *args), nbytes, release))
        self.bytes += nbytes
        while self.queue and (self.bytes > self.budget or self.queue[0][0].done()):
            self._finish_one()

    def drain(self) -> None:
        while self.queue:
            self._finish_one()

    def cancel(self) -> None:
        """Drop the puts not started yet (after an error: the merge is aborted anyway)."""
        while self.queue:
            self.queue.popleft()[0].cancel()

    def _finish_one(self) -> None:
        future, nbytes, release = self.queue.popleft()
        self.bytes -= nbytes
        future.result()
        if release is not None:
            release()
