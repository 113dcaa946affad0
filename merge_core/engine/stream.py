"""run_merge: every key of a plan, in order, through the handler of its action, into the sink.

Three stages on three threads: read (and check) the keys ahead, compute key i, write the keys before it.
Reads ahead and writes pending hold a bounded number of bytes each (pipeline.py), so memory stays at a
few tensors; on a quiet machine reading, math and writing overlap, and on a busy one the threads simply
take turns on the free core.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import math
from typing import Mapping, Optional, cast

import torch

from .. import threads as thread_policy
from ..device import Transfer, math_device
from ..io.buffers import BufferPool
from ..io.file_source import FileSource
from ..io.key_source import KeySource
from ..io.sinks import Sink
from ..pipeline import BUDGETS, MAPPED_BUDGETS, Budgets, ReadAhead, WriteBehind
from ..plan import Action, KeyPlan, MergePlan, MergeSettings
from .calc import CalcKey
from .copied import CopyKey
from .job import KeyHandler, MergeJob, source_of
from .linear import LinearKey
from .nmodel import CombineKey, is_compute_bound
from .progress import ProgressFn, StopFn, stop_if_asked


def output_layout(plan: MergePlan, sources: Mapping[str, KeySource],
                  out_dtype: Optional[torch.dtype]) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(key, dtype, shape) of every output tensor, in write order.

    Merged keys take out_dtype, or A's dtype by default. Kept keys keep their
    own dtype unless an output dtype was chosen, which casts float tensors only.
    """
    shapes = {name: src.shapes() for name, src in sources.items()}
    layout = []
    for kp in plan.keys:
        src = source_of(kp)
        own = sources[src].dtype(kp.key)
        dtype = out_dtype if out_dtype is not None and own.is_floating_point else own
        layout.append((kp.key, dtype, tuple(shapes[src][kp.key])))
    return layout


def run_merge(plan: MergePlan, sources: Mapping[str, KeySource], sink: Sink,
              out_dtype: Optional[torch.dtype] = None,
              progress: Optional[ProgressFn] = None,
              should_stop: Optional[StopFn] = None, device: torch.device | str = "cpu"):
    """Stream every key of the plan into the sink; returns what the sink commits.

    device: where the per-key math runs (merge_core/device.py; resolve "auto" with resolve_device).
    The math runs on one torch thread, scoped to the merge (merge_core/threads.py says why); a compute-bound n-model
    method's (nmodel.is_compute_bound) on the idle cores."""
    files = [src for src in sources.values() if isinstance(src, FileSource)]
    budgets = MAPPED_BUDGETS if files and all(src.mapped for src in files) else BUDGETS
    if is_compute_bound(plan):  # nothing to gain from reading ahead or from reused buffers
        budgets = budgets._replace(read_ahead=0, pool=0)
    pool = BufferPool(limit_bytes=budgets.pool)
    pooled = [src for src in files if src.buffers is None and not src.mapped]
    for src in pooled:
        src.buffers = pool
    try:
        with thread_policy.torch_threads(thread_policy.MERGE_THREADS):
            return _stream(plan, sources, sink, out_dtype, progress, should_stop, device, pool, budgets)
    finally:
        for src in pooled:
            src.buffers = None


def merge_handler(job: MergeJob, should_stop: Optional[StopFn]) -> KeyHandler:
    """The handler of the plan's merged keys: n-model combine when the plan names models, else the calc
    mode's (a cosine mode's statistics computed first), else the merge mode's formula."""
    if job.plan.models:
        return CombineKey(job)
    if cast(MergeSettings, job.plan.settings).calc is not None:
        return CalcKey.with_statistics(job, should_stop)
    return LinearKey(job)


def _stream(plan, sources, sink, out_dtype, progress, should_stop, device, pool, budgets):
    move = Transfer(math_device(torch.device(device), plan.settings))
    layout = output_layout(plan, sources, out_dtype)
    with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-half") as halves:
        job = MergeJob(plan, sources, sink, pool, move, layout, halves)
        merged, copied = merge_handler(job, should_stop), CopyKey(job)
        sink.begin(layout)
        try:
            stream_keys(job, lambda kp: merged if kp.action is Action.MERGE else copied, progress, should_stop,
                        budgets)
        except BaseException:
            sink.abort()  # after the reader and the writer have finished their task in flight
            raise
    return sink.commit()


def stream_keys(job: MergeJob, handler_of, progress: Optional[ProgressFn], should_stop: Optional[StopFn],
                budgets: Budgets = BUDGETS) -> None:
    """Each key loaded ahead by its handler, computed by it here, and written behind, in plan order (at least one
    key ahead, more while they fit in the read-ahead budget; writes pending within the write-behind's)."""
    keys, sources = job.plan.keys, job.sources

    def load(kp: KeyPlan, after: Optional[KeyPlan]):
        if after is not None:  # the key after this one starts coming from disk while this one is read
            for name in handler_of(after).reads(after):
                sources[name].prefetch(after.key)
        return handler_of(kp).load(kp)

    def read_bytes(kp: KeyPlan) -> int:
        """About what loading this key reads (its shape in each source's stored dtype)."""
        numel = math.prod(job.shapes[kp.key])
        return sum(numel * sources[name].dtype(kp.key).itemsize for name in handler_of(kp).reads(kp))

    with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-read") as reader, \
            cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-write") as writer:
        ahead = ReadAhead(reader, load, keys, read_bytes, budgets.read_ahead)
        behind = WriteBehind(writer, budgets.write_behind)
        try:
            for i, kp in enumerate(keys):
                stop_if_asked(should_stop)
                loaded = ahead.take()
                put = handler_of(kp).compute(kp, loaded)
                read = [sources[name] for name in handler_of(kp).reads(kp)]
                written = put.data is loaded  # stored bytes copied as they are: the writer still reads them
                if not written:
                    release_reads(read, kp.key)
                del loaded
                # keys reach the sink in plan order; a write error stops the merge at the next key
                behind.put(put.write, put.key, put.data, nbytes=put.nbytes,
                           release=functools.partial(done_writing, job.pool, put.release, read if written else [],
                                                     kp.key))
                del put  # the writer holds the only reference: written, the memory can go
                if progress is not None:
                    progress(i + 1, len(keys))
            behind.drain()
        finally:
            ahead.cancel()  # loads not started yet: the executors would run them all before closing
            behind.cancel()


def release_reads(sources, key: str) -> None:
    """A key's inputs are done with: mapped sources let its pages go (io/mapped_file.py)."""
    for source in sources:
        source.release(key)


def done_writing(pool: BufferPool, pooled, sources, key: str) -> None:
    """A key is written: its pooled memory goes back to the pool, and the sources it was copied from let its
    pages go."""
    if pooled is not None:
        pool.give(pooled)
    release_reads(sources, key)
