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

The read-ahead into this process is kept small (its buffers are resident memory); further ahead, the kernel
is asked to read the keys into its page cache (``hints``), which costs the process nothing: on cold files the
disk stays busy through runs of large keys, and the process's peak memory stays near 1 GB (bench/RESULTS.md,
memory speed).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
from typing import Callable, Optional, Sequence, TypeVar

K = TypeVar("K")

BUDGET_BYTES = 64 << 20  # what the loads ahead may read into memory beyond the key being computed
HINT_BYTES = 256 << 20  # what the kernel is asked to read ahead into its page cache, beyond the loads
WRITE_BUDGET_BYTES = 128 << 20  # what may wait to be written
MAX_KEYS = 16


class ReadAhead:
    """``take()`` returns the loads of ``keys`` in order; up to ``budget`` bytes of later keys (by ``cost``)
    are loading meanwhile. ``load(key, hints)`` also gets the keys to hint before it reads (in order, each key
    once, never one already loading): beyond the loads, at least the next key, more within ``hint_budget``."""

    def __init__(self, executor: cf.Executor, load: Callable, keys: Sequence[K], cost: Callable[[K], int],
                 budget: int = BUDGET_BYTES, max_keys: int = MAX_KEYS, hint_budget: int = HINT_BYTES):
        self.executor, self.load, self.keys, self.cost = executor, load, keys, cost
        self.budget, self.max_keys, self.hint_budget = budget, max_keys, hint_budget
        self.queue: collections.deque = collections.deque()  # (future, cost) in plan order
        self.next = 0
        self.bytes = 0
        self.hinted = 0  # keys before this index are hinted or loading
        self.hint_bytes = 0  # the cost of keys[next:hinted]: hinted, not loading yet
        self._fill()

    def _fill(self) -> None:
        while self.next < len(self.keys) and len(self.queue) < self.max_keys:
            key = self.keys[self.next]
            cost = self.cost(key)
            if self.queue and self.bytes + cost > self.budget:
                return
            if self.hinted > self.next:
                self.hint_bytes -= cost
            else:
                self.hinted = self.next + 1  # loaded now: no hint
            self.next += 1
            self.queue.append((self.executor.submit(self.load, key, self._hints()), cost))
            self.bytes += cost

    def _hints(self) -> list:
        """The keys that join the hinted ones: the next key if none is hinted, more while within the budget."""
        hints = []
        while self.hinted < len(self.keys):
            cost = self.cost(self.keys[self.hinted])
            if self.hinted > self.next and self.hint_bytes + cost > self.hint_budget:
                break
            hints.append(self.keys[self.hinted])
            self.hint_bytes += cost
            self.hinted += 1
        return hints

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
