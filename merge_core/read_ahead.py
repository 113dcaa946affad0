"""The engine's read-ahead: the keys after the one being computed, loaded in plan order on one thread.

Why more than one key: key sizes swing (a Flux block's 38M-value MLP weight next to its small
norms and biases). With one key ahead, the reader idled through a large key's math after
reading the small key after it, and the math then waited for the large key after that; on a
full-size fp8 Flux merge of three files each side waited about 18 s. A byte budget lets the
reader keep going through small keys, and still bounds memory (at least one key is always
ahead, however large).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
from typing import Callable, Sequence, TypeVar

K = TypeVar("K")

BUDGET_BYTES = 256 << 20  # what the loads ahead may read beyond the key being computed
MAX_KEYS = 16


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
