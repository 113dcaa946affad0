"""How many threads merge_core's math uses: chosen per step, scoped to it, restored afterwards.

Why (bench/bench_busy.py measures it; bench/RESULTS.md has the figures): torch's default is one
OpenMP worker per core. Per-key merge math is memory-bound and runs in ~1 MiB
chunks, so every operation is a short parallel region that ends at a barrier.
When another process holds a core, the worker on that core is descheduled and
the others spin at the barrier until it gets a time slice back: a two-file
weight sum went from 5 s to 69 s with one busy core (63 s of it CPU). One math thread (with the
file read-ahead on its own thread) is as fast on a quiet machine, because the
step is bound by memory and I/O, and does not depend on the other cores at all.

Compute-bound steps (SVD, the smoothAdd filter, ASimilarity's matrix products)
do gain from more threads, so they take only the cores that are idle when the
step starts (``compute_threads``): all of them on a quiet machine, fewer when
other processes are running.

``torch_threads`` changes torch's setting only inside the ``with`` block and
restores it in ``finally``, so a ComfyUI server keeps its own setting for every
other node. torch's OpenMP setting is per thread; the first scope to open in the
process remembers the value from outside every scope, and each thread's
outermost scope puts that back, so scopes may nest and may overlap across threads.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Optional

import torch

MERGE_THREADS = 1  # per-key merge math, cosine statistics, analysis: memory-bound (see above)

_lock = threading.Lock()
_open = 0  # scopes open in the whole process
_outside: Optional[int] = None  # torch's thread count outside every scope
_local = threading.local()  # this thread's open scopes


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_cpus(path: str = "/proc/loadavg", tasks: str = "/proc/self/task") -> int:
    """Runnable tasks of other processes right now (Linux; 0 where unknown).

    This process's own running threads (the caller, the merge's read-ahead and writer) do not
    count: they are the work itself, and counting them gave smoothAdd's filter one thread on an
    idle machine while the read-ahead ran."""
    try:
        with open(path, encoding="ascii") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - max(1, own_running(tasks)))


def own_running(tasks: str = "/proc/self/task") -> int:
    """This process's threads in state R (running or runnable); 0 where unknown."""
    count = 0
    try:
        names = os.listdir(tasks)
    except OSError:
        return 0
    for name in names:
        try:
            with open(os.path.join(tasks, name, "stat"), encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        if stat[stat.rfind(")") + 2:][:1] == "R":
            count += 1
    return count


def compute_threads(limit: Optional[int] = None) -> int:
    """Threads for a compute-bound step: the allowed cores minus those other tasks hold now, at least 1."""
    n = max(1, available_cpus() - busy_cpus())
    return n if limit is None else max(1, min(n, limit))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with torch using ``n`` intra-op threads; restore the previous setting on any exit."""
    global _open, _outside
    n = max(1, int(n))
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    with _lock:
        if _open == 0:
            _outside = torch.get_num_threads()
        _open += 1
        stack.append(torch.get_num_threads())
        if n != stack[-1]:
            torch.set_num_threads(n)
    try:
        yield n
    finally:
        with _lock:
            before = stack.pop()
            _open -= 1
            restore = before if stack else _outside
            assert restore is not None  # _outside is set when the first scope opens
            if torch.get_num_threads() != restore:
                torch.set_num_threads(restore)
