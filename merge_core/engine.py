"""The per-key streaming engine: plan in, one tensor at a time through a method, out to a sink.

At any moment it holds the input tensors of one key (plus the next key's, read
ahead on a helper thread while this one computes) and one output tensor. Inputs
are read-only: every result is a new tensor. Elementwise methods run over
cache-sized chunks, which keeps float32 accuracy at close to native-dtype speed
(large float32 temporaries cost more in memory traffic than the arithmetic).
The math runs on one torch thread, scoped to the merge (merge_core/threads.py
says why: many short parallel regions collapse when another process holds a core);
a large key's second half runs on a thread of its own (``split_work``). The linear
modes run in one native pass per key where the kernel applies (``fused_merge``).
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import math
from typing import Callable, Mapping, Optional, Protocol

import torch

from . import threads as thread_policy
from .architectures import fused_tensor_of
from .device import Transfer, math_device
from .io.buffers import BufferPool
from .io.fp8 import FP8, widened
from .io.sources import FileSource, KeySource
from .methods import fused_linear
from .methods.adjust import apply_adjust
from .methods.calcmodes import KeyContext, column_sums, cosine_stats, similarities_from_sums
from .methods.nway import combine_key
from .nonfinite import all_finite, check_result, count_inputs as count_nonfinite_inputs, may_leave_range
from .plan import FROM_B, MERGE, KeyPlan, MergePlan, MergeSettings
from .pipeline import ReadAhead, WriteBehind

CHUNK_ELEMENTS = 1 << 18  # 1 MiB of float32 per operand

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


class MergeCancelled(RuntimeError):
    """Raised between keys when the caller's stop check says so."""


class Sink(Protocol):
    def begin(self, layout: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> None: ...

    def put(self, key: str, tensor: torch.Tensor) -> None: ...

    def put_raw(self, key: str, data) -> None:
        """Stored bytes, copied or written before the call returns (the engine reuses the buffer)."""

    # Optional: False when ``put`` keeps no reference to its tensor once it returns (a file sink writes it);
    # the engine then computes later keys into the same memory. Sinks without the attribute keep them.
    keeps_tensors: bool

    def commit(self): ...

    def abort(self) -> None: ...


class DictSink:
    """Collects results in memory (tests and small models)."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def begin(self, layout) -> None:
        self.layout = {k: (d, s) for k, d, s in layout}

    def put(self, key: str, tensor: torch.Tensor) -> None:
        self.tensors[key] = tensor

    def put_raw(self, key: str, data) -> None:
        dtype, shape = self.layout[key]
        self.tensors[key] = torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)

    def commit(self):
        return self.tensors

    def abort(self) -> None:
        self.tensors.clear()


def _is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def output_layout(plan: MergePlan, sources: Mapping[str, KeySource],
                  out_dtype: Optional[torch.dtype]) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(key, dtype, shape) of every output tensor, in write order.

    Merged keys take out_dtype, or A's dtype by default. Kept keys keep their
    own dtype unless an output dtype was chosen, which casts float tensors only.
    """
    shapes = {name: src.shapes() for name, src in sources.items()}
    layout = []
    for kp in plan.keys:
        src = "b" if kp.action == FROM_B else "a"
        own = sources[src].dtype(kp.key)
        dtype = own
        if out_dtype is not None and _is_float(own):
            dtype = out_dtype
        layout.append((kp.key, dtype, tuple(shapes[src][kp.key])))
    return layout


def merge_tensor(kp: KeyPlan, fn, a: torch.Tensor, b: torch.Tensor, c: Optional[torch.Tensor],
                 out_dtype: torch.dtype, chunk: int = CHUNK_ELEMENTS,
                 helper: Optional[cf.Executor] = None, finite: bool = False) -> torch.Tensor:
    """Apply one elementwise merge method to one key in float32, chunk by chunk.

    helper: a one-thread executor that takes the second half of a large tensor (``split_work``); the
    result is the same bits either way (every value is computed alone).
    finite: the inputs are known to hold no NaN/inf (fp8 widening then skips its own search)."""
    if kp.input_channels is not None:
        n = kp.input_channels
        out = a.to(out_dtype, copy=True)
        part = fn(a[:, :n].float(), b.float(), None if c is None else c.float(), kp.alpha, kp.beta)
        out[:, :n] = part.to(out_dtype)
        return out
    out = torch.empty(a.shape, dtype=out_dtype, device=a.device)
    fa, fb, fo = a.reshape(-1), b.reshape(-1), out.view(-1)
    fc = None if c is None else c.reshape(-1)
    total = fa.numel()
    top = torch.finfo(out_dtype).max if out_dtype in FP8 else None  # fp8 saturates (io/precision.py)

    inference = torch.is_inference_mode_enabled()  # thread-local: the helper takes the caller's (ComfyUI's)

    def run(first: int, last: int) -> None:
        with thread_policy.torch_threads(thread_policy.MERGE_THREADS), torch.inference_mode(inference):
            for start in range(first, last, chunk):
                end = min(start + chunk, last)
                r = fn(widened(fa[start:end], "a", finite), widened(fb[start:end], "b", finite),
                       None if fc is None else widened(fc[start:end], "c", finite), kp.alpha, kp.beta)
                fo[start:end].copy_(r if top is None else r.clamp_(-top, top))

    in_halves(run, total, chunk, helper if a.device.type == "cpu" else None)
    return out


def fused_merge(kp: KeyPlan, mode: str, a: torch.Tensor, b: torch.Tensor, c: Optional[torch.Tensor],
                out_dtype: torch.dtype, helper: Optional[cf.Executor] = None, chunk: int = CHUNK_ELEMENTS,
                buffers: Optional[BufferPool] = None) -> Optional[tuple[torch.Tensor, dict[str, int]]]:
    """``merge_tensor``'s result computed by the native kernel (methods/fused_linear.py), with the
    inputs' NaN/inf counts {input: n}; None where the kernel does not apply.
    buffers: the result goes into memory from this pool (the caller gives it back once written)."""
    if not fuses(kp, mode, out_dtype, a, b, c):
        return None
    nbytes = a.numel() * out_dtype.itemsize
    out = torch.empty(a.shape, dtype=out_dtype) if buffers is None else \
        buffers.take(nbytes).view(out_dtype).view(a.shape)
    flat = [None if t is None else t.reshape(-1) for t in (a, b, c, out)]

    def run(first: int, last: int) -> list[int]:
        return fused_linear.merge_span(mode, kp.alpha, kp.beta, *flat, first, last)

    parts = in_halves(run, out.numel(), chunk, helper)
    counts = {name: n for name, *found in zip(fused_linear.INPUTS, *parts) if (n := sum(found))}
    return out, counts


def fuses(kp: KeyPlan, mode: str, out_dtype: torch.dtype, a, b, c) -> bool:
    """Whether ``fused_merge`` takes this key (the read-ahead then leaves the NaN/inf count to the kernel)."""
    return kp.input_channels is None and fused_linear.applies(mode, out_dtype, a, b, c) and fused_linear.available()


def in_halves(run: Callable[[int, int], object], total: int, chunk: int, helper: Optional[cf.Executor]) -> list:
    """run(0, total), or run(0, middle) here and run(middle, total) on ``helper`` when ``split_work``
    says so (middle on a chunk boundary); their results in order. Returns or raises only once both
    halves have stopped, since both write into the caller's output."""
    if helper is None or not split_work(total, chunk):
        return [run(0, total)]
    middle = (total // 2 + chunk - 1) // chunk * chunk
    second = helper.submit(run, middle, total)
    try:
        first = run(0, middle)
    finally:
        cf.wait([second])  # it writes into out: never return (or raise) while it runs
    return [first, second.result()]


SPLIT_ELEMENTS = 1 << 22  # tensors from 4M values up are worth a second thread (fp8 Flux: most of the file)


def split_work(total: int, chunk: int = CHUNK_ELEMENTS) -> bool:
    """Whether to compute one key's halves on two threads: a large tensor, and two cores allowed.

    Why not torch's own threads: they meet at a barrier after every operation and spin there when
    another process holds a core (merge_core/threads.py). Two halves meet once per key, each thread
    running one torch thread, and a waiting thread sleeps: when the second core is taken, the halves
    simply take turns on the free one, at the speed of one thread. (Asking for idle cores first, as
    compute_threads does, said "busy" through most of a large file merge: the kernel's writeback of
    the output runs as other tasks.) Measured in bench/RESULTS.md (full-size Flux fp8)."""
    return total >= max(SPLIT_ELEMENTS, 2 * chunk) and thread_policy.available_cpus() > 1


def key_context(kp: KeyPlan, settings: MergeSettings, stats=None, fallbacks: Optional[list] = None) -> KeyContext:
    """stats: cosine modes' ((s_min, s_max), {key: combined similarity}) from cosine_statistics;
    fallbacks: a list the calc mode appends to where its documented fallback applied."""
    bounds, combined = stats if stats is not None else (None, {})
    return KeyContext(kp.key, kp.alpha, kp.beta, settings.gamma, settings.seed, bounds,
                      settings.tensor2_corrected, combined.get(kp.key), fallbacks)


def apply_calc(kp: KeyPlan, settings: MergeSettings, a: torch.Tensor, b: torch.Tensor,
               c: Optional[torch.Tensor], stats=None, fallbacks: Optional[list] = None) -> Optional[torch.Tensor]:
    """One key through the plan's calc mode, in float32; None means "keep A".

    For an inpainting A (kp.input_channels set) only A[:, :n] takes part and the
    result covers those channels only.
    """
    n = kp.input_channels
    a32 = a.float() if n is None else a[:, :n].float()
    return settings.calc.fn(a32, b.float(), None if c is None else c.float(),
                            key_context(kp, settings, stats, fallbacks))


def calc_tensor(kp: KeyPlan, settings: MergeSettings, a, b, c, out_dtype, stats=None,
                chunk: int = CHUNK_ELEMENTS, fallbacks: Optional[list] = None) -> torch.Tensor:
    """One key through the calc mode into a new tensor of out_dtype, chunked where the mode allows."""
    calc = settings.calc
    chunking = calc.chunking if kp.input_channels is None else ""
    if chunking == "rows" and (a.dim() < 2 or (calc.needs_stats and stats is None)):
        chunking = ""  # cosine rows need the key's similarity from stage 0; 1-D extract is one row
    if chunking:
        ctx = key_context(kp, settings, stats)
        out = torch.empty(a.shape, dtype=out_dtype, device=a.device)
        if chunking == "flat":
            views = [a.reshape(-1), b.reshape(-1), None if c is None else c.reshape(-1), out.view(-1)]
            step = chunk
        else:
            views = [a, b, c, out]
            step = max(1, chunk // max(1, a[0].numel()))
        va, vb, vc, vo = views
        for start in range(0, va.shape[0], step):
            part_a = va[start:start + step].float()
            r = calc.fn(part_a, vb[start:start + step].float(),
                        None if vc is None else vc[start:start + step].float(), ctx)
            vo[start:start + step].copy_(part_a if r is None else r)
        return out
    result = apply_calc(kp, settings, a, b, c, stats, fallbacks)
    if result is None:
        return a.to(out_dtype, copy=True)
    if kp.input_channels is None:
        return result.to(out_dtype)
    out = a.to(out_dtype, copy=True)
    out[:, :kp.input_channels] = result.to(out_dtype)
    return out


def combine_tensor(kp: KeyPlan, settings: MergeSettings, base: torch.Tensor, models: list, out_dtype: torch.dtype,
                   fallbacks: Optional[list] = None) -> torch.Tensor:
    """One key through the n-model method: base + alpha * delta, whole tensors (the methods rank, trim
    and take norms over the whole key). An inpainting base merges its first input channels only."""
    n = kp.input_channels
    part = combine_key(settings.method, settings.method_params, kp.key, kp.alpha,
                       base if n is None else base[:, :n], models, fallbacks)
    if n is None:
        return part.to(out_dtype)
    out = base.to(out_dtype, copy=True)
    out[:, :n] = part.to(out_dtype)
    return out


def cosine_statistics(plan: MergePlan, fetch: Callable[[str], tuple[torch.Tensor, torch.Tensor]],
                      progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None,
                      also: tuple = ()):
    """Stage 0 of cosineA/B: similarity statistics over every merged key, streamed.

    ``fetch(key)`` returns A's and B's tensors of one key. Kept: per-column sums (far
    smaller than the weights) per checkpoint tensor, a tensor that ComfyUI splits into
    parts being summed over its parts (fused_tensor_of), which give (s_min, s_max) and
    each key's combined similarity, which stage 1 reuses. ``also``: more (plan, fetch)
    pairs sharing the statistics, as a checkpoint's U-Net and text encoder do in SuperMerger.
    """
    with thread_policy.torch_threads(thread_policy.MERGE_THREADS):
        return _cosine_statistics(plan, fetch, progress, should_stop, also)


def _cosine_statistics(plan, fetch, progress, should_stop, also):
    variant = plan.settings.calc.name
    jobs = [(kp, f) for p, f in ((plan, fetch), *also) for kp in p.merged()]
    sums, members = {}, {}
    for i, (kp, fetch_key) in enumerate(jobs):
        if should_stop is not None and should_stop():
            raise MergeCancelled("merge cancelled")
        a, b = fetch_key(kp.key)
        if kp.input_channels is not None:
            a = a[:, :kp.input_channels]
        whole = fused_tensor_of(kp.key)
        part = column_sums(a, b)
        sums[whole] = part if whole not in sums else tuple(x + y for x, y in zip(sums[whole], part))
        members.setdefault(whole, []).append(kp.key)
        if progress is not None:
            progress(i + 1, len(jobs))
    values, combined = [], {}
    for whole, total in sums.items():
        stage0, similarity = similarities_from_sums(*total, variant)
        values.append(stage0.detach().reshape(-1).to(torch.float64))
        combined.update((key, similarity) for key in members[whole])
    return cosine_stats(torch.cat(values) if values else torch.empty(0, dtype=torch.float64)), combined


def run_merge(plan: MergePlan, sources: Mapping[str, KeySource], sink: Sink,
              out_dtype: Optional[torch.dtype] = None,
              progress: Optional[ProgressFn] = None,
              should_stop: Optional[StopFn] = None, device: torch.device | str = "cpu"):
    """Stream every key of the plan into the sink; returns what the sink commits.

    device: where the per-key math runs (merge_core/device.py; resolve "auto" with resolve_device)."""
    pool = BufferPool()
    pooled = [src for src in sources.values() if isinstance(src, FileSource) and src.buffers is None]
    for src in pooled:
        src.buffers = pool
    try:
        with thread_policy.torch_threads(thread_policy.MERGE_THREADS):
            return _run_merge(plan, sources, sink, out_dtype, progress, should_stop, device, pool)
    finally:
        for src in pooled:
            src.buffers = None


def _run_merge(plan, sources, sink, out_dtype, progress, should_stop, device, pool):
    settings = plan.settings
    mode = settings.mode
    needs_c = settings.needs_c
    move = Transfer(math_device(torch.device(device), settings))
    stats = None
    if settings.calc is not None and settings.calc.needs_stats:
        def pair(k):
            return move.inputs(move.prepare(sources["a"].get(k)), move.prepare(sources["b"].get(k)))
        stats = cosine_statistics(plan, pair, should_stop=should_stop)
    layout = output_layout(plan, sources, out_dtype)
    dtypes = {k: d for k, d, _ in layout}
    shapes = {k: shape for k, _, shape in layout}
    sink.begin(layout)
    total = len(plan.keys)

    # Linear modes on plain fp8 inputs read the stored bytes, and write keys the sink stores as plain
    # fp8 straight in fp8 (io/fp8.py says why: a whole float32 copy per input and per result cost more
    # than the merge itself on full-size fp8 Flux files); the native kernel (fused_merge) decodes,
    # merges and encodes in one pass, the torch path (merge_tensor) widens chunk by chunk.
    encoded_dtype = getattr(sink, "encoded_dtype", None)
    # A file sink keeps no result: each key's result memory serves a later key once written (fresh memory
    # costs a page fault per 4 KiB, and with the page cache full of the inputs, reclaiming a page for each).
    results_reusable = not getattr(sink, "keeps_tensors", True)

    def compact(kp: KeyPlan) -> bool:
        return settings.calc is None and kp.adjust is None and kp.input_channels is None

    def target(kp: KeyPlan) -> torch.dtype:
        """The dtype a linear mode computes this key's result in: the sink's stored fp8 when it takes it."""
        direct = encoded_dtype(kp.key) if encoded_dtype is not None and compact(kp) else None
        return direct or dtypes[kp.key]

    def read(name: str, kp: KeyPlan):
        stored = getattr(sources[name], "stored", None) if compact(kp) else None
        tensor = None if stored is None else stored(kp.key)
        return sources[name].get(kp.key) if tensor is None else tensor

    def reads(kp: KeyPlan) -> tuple:
        """The sources one key's work reads."""
        if kp.action != MERGE:
            return ("b",) if kp.action == FROM_B else ("a",)
        if settings.method is not None:
            return ("a", *plan.models)
        return ("a", "b", "c") if needs_c else ("a", "b")

    def read_bytes(kp: KeyPlan) -> int:
        """About what loading this key reads (its shape in each source's stored dtype)."""
        numel = math.prod(shapes[kp.key])
        return sum(numel * sources[name].dtype(kp.key).itemsize for name in reads(kp))

    def load(kp: KeyPlan, ahead: Optional[KeyPlan] = None):
        if ahead is not None:  # the key after this one starts coming from disk while this one is read
            for name in reads(ahead):
                prefetch = getattr(sources[name], "prefetch", None)
                if prefetch is not None:
                    prefetch(ahead.key)
        if kp.action == MERGE and settings.method is not None:  # combine: base and n models, on the host
            base, models = sources["a"].get(kp.key), [sources[name].get(kp.key) for name in plan.models]
            return base, models, count_nonfinite_inputs({"base": base} | {f"M{j + 1}": m for j, m in enumerate(models)})
        if kp.action == MERGE:
            a, b = read("a", kp), read("b", kp)
            c = read("c", kp) if needs_c else None
            # Calc modes are counted here, on the read-ahead thread (overlapping the previous key's math).
            # A linear mode is checked on its result instead (one tensor, not two or three): its formula
            # multiplies every input, so any NaN/inf in A, B or C makes the result non-finite there.
            # Stored fp8 inputs are the exception: their scan is cheap bit tests here, and a clean result
            # lets the math thread widen them without looking for NaN. The fused kernel counts as it reads.
            inputs = {"A": a, "B": b, "C": c}
            fused = settings.calc is None and move.device.type == "cpu" and fuses(kp, mode.name, target(kp), a, b, c)
            checked = settings.calc is not None or (
                not fused and all(t is None or t.dtype in FP8 for t in inputs.values()))
            nonfinite = count_nonfinite_inputs(inputs) if checked else None
            return move.prepare(a), move.prepare(b), move.prepare(c), nonfinite
        src = sources["b" if kp.action == FROM_B else "a"]
        if dtypes[kp.key] == src.dtype(kp.key):
            raw = src.raw(kp.key)
            if raw is not None:
                return ("raw", raw)
        return ("tensor", src.get(kp.key))

    try:
        # Three stages on three threads: read (and check) the keys ahead, compute key i, write the keys
        # before it. Reads ahead and writes pending hold a bounded number of bytes each (pipeline.py), so
        # memory stays at a few tensors; on a quiet machine reading, math and writing overlap, and on a
        # busy one the threads simply take turns on the free core.
        with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-read") as reader, \
                cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-write") as writer, \
                cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-half") as halves:
            ahead, behind = ReadAhead(reader, load, plan.keys, read_bytes), WriteBehind(writer)
            try:
                reusable = None  # stored bytes or a pooled result, reusable once the sink has them
                for i, kp in enumerate(plan.keys):
                    if should_stop is not None and should_stop():
                        raise MergeCancelled("merge cancelled")
                    loaded = ahead.take()
                    if kp.action == MERGE and settings.method is not None:
                        base, models, nonfinite = loaded
                        if nonfinite:
                            plan.nonfinite[kp.key] = nonfinite
                        notes: list = []
                        result = combine_tensor(kp, settings, base, models, dtypes[kp.key], notes)
                        if notes:
                            plan.fallbacks[kp.key] = notes[0]
                        check_result(result, kp.key, settings.method.name, not nonfinite, "method", result.dtype)
                        give_back(pool, zip(("a", *plan.models), (base, *models)), result, sources)
                        put = (sink.put, kp.key, result)
                    elif kp.action == MERGE:
                        *inputs, nonfinite = loaded
                        a, b, c = move.inputs(*inputs)
                        if nonfinite:
                            plan.nonfinite[kp.key] = nonfinite
                        into = pool if results_reusable and kp.adjust is None else None
                        fused = fused_merge(kp, mode.name, a, b, c, target(kp), halves, buffers=into) \
                            if settings.calc is None else None
                        if fused is not None:
                            result, counted = fused
                            if counted:
                                plan.nonfinite[kp.key] = counted
                            elif may_leave_range(mode.name, kp.alpha, kp.beta, in_dtypes(a, b, c), result.dtype):
                                check_result(result, kp.key, mode.name, True, "mode", result.dtype)
                            if into is not None:
                                reusable = result  # its memory goes back to the pool once the sink has written it
                        elif settings.calc is None:
                            result = merge_tensor(kp, mode.fn, a, b, c, target(kp), helper=halves,
                                                  finite=nonfinite == {})
                            if nonfinite is None and not all_finite(result):  # rare: now count the inputs exactly
                                nonfinite = count_nonfinite_inputs({"A": a, "B": b, "C": c})
                                if nonfinite:
                                    plan.nonfinite[kp.key] = nonfinite
                                else:  # finite inputs, non-finite result: the settings (nonfinite.py)
                                    check_result(result, kp.key, mode.name, True, "mode", result.dtype)
                            elif nonfinite == {} and may_leave_range(mode.name, kp.alpha, kp.beta, in_dtypes(a, b, c),
                                                                     result.dtype):
                                check_result(result, kp.key, mode.name, True, "mode", result.dtype)
                        else:
                            notes = []
                            result = calc_tensor(kp, settings, a, b, c, dtypes[kp.key], stats, fallbacks=notes)
                            if notes:
                                plan.fallbacks[kp.key] = notes[0]
                            check_result(result, kp.key, settings.calc.name, not nonfinite, "calcmode", result.dtype)
                        result = move.output(result)  # Adjust touches a few small keys: on the host
                        give_back(pool, zip("abc", inputs), result, sources)
                        del inputs, a, b, c
                        if kp.adjust is not None:
                            result = apply_adjust(result, kp.adjust)
                            check_result(result, kp.key, "adjust", not plan.nonfinite.get(kp.key), "adjust",
                                         result.dtype)
                        put = (sink.put, kp.key, result)
                    elif loaded[0] == "raw":
                        put = (sink.put_raw, kp.key, loaded[1])
                        if getattr(sources["b" if kp.action == FROM_B else "a"], "buffers", None) is pool:
                            reusable = torch.frombuffer(loaded[1], dtype=torch.uint8) if len(loaded[1]) else None
                    else:
                        put = (sink.put, kp.key, loaded[1].to(dtypes[kp.key]))
                    del loaded
                    # keys reach the sink in plan order; a write error stops the merge at the next key
                    behind.put(*put, nbytes=put_bytes(put[2]),
                               release=None if reusable is None else functools.partial(pool.give, reusable))
                    reusable = None
                    del put
                    if progress is not None:
                        progress(i + 1, total)
                behind.drain()
            finally:
                ahead.cancel()  # loads not started yet: the executors would run them all before closing
                behind.cancel()
    except BaseException:
        sink.abort()  # after both pools have finished their task in flight (the with block waits for them)
        raise
    return sink.commit()


def in_dtypes(*tensors) -> tuple:
    return tuple(t.dtype for t in tensors if t is not None)


def put_bytes(data) -> int:
    """The size of what one put hands the sink (a tensor, or stored bytes)."""
    return data.numel() * data.element_size() if isinstance(data, torch.Tensor) else memoryview(data).nbytes


def give_back(pool: BufferPool, inputs, result: torch.Tensor, sources: Mapping[str, KeySource]) -> None:
    """A merged key's input buffers go back to the pool for the next reads, once its result exists:
    (source name, tensor) pairs, of which only those read through the pool (a FileSource's fresh
    buffer, this key's alone) are taken; never a caller's own tensor (a DictSource's)."""
    for name, tensor in inputs:
        if tensor is not None and getattr(sources.get(name), "buffers", None) is pool:
            pool.give(tensor, result)


class FileSink:
    """Streams into a safetensors file through a temporary name."""

    keeps_tensors = False  # each tensor is written before put returns

    def __init__(self, path, metadata=None, overwrite: bool = False, inputs=(), input_name: str = "output"):
        self.path, self.metadata, self.overwrite = path, metadata, overwrite
        self.inputs, self.input_name = inputs, input_name  # the output may never be one of the inputs
        self.writer = None

    def begin(self, layout) -> None:
        from .io.safetensors_file import SafetensorsWriter
        self.writer = SafetensorsWriter(self.path, layout, self.metadata, self.overwrite, self.inputs, self.input_name)

    def put(self, key, tensor) -> None:
        self.writer.write(key, tensor)

    def put_raw(self, key, data) -> None:
        self.writer.write_raw(key, data)

    def commit(self):
        return self.writer.commit()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
