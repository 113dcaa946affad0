"""Merged keys of a merge mode's own formula (calc mode "normal"): the native kernel where it applies, else
torch in float32 chunks; a large key's second half on a thread of its own.

Elementwise methods run over cache-sized chunks, which keeps float32 accuracy at close to native-dtype speed
(large float32 temporaries cost more in memory traffic than the arithmetic). The linear modes run in one
native pass per key where the kernel applies (``fused_merge``). Plain fp8 inputs are read as stored, and
keys the sink stores as plain fp8 are computed straight in fp8 (io/fp8.py says why: a whole float32 copy
per input and per result cost more than the merge itself on full-size fp8 Flux files). Per-tensor scaled fp8
inputs are read as stored too, their scale applied by the kernel, and keys the sink stores as scaled fp8 are
quantised by it in two passes (``fused_scaled_merge``; bench/RESULTS.md, Krea 2 full size).
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
from typing import Callable, Optional, cast

import torch

from .. import threads as thread_policy
from ..io.buffers import BufferPool
from ..io.fp8 import FP8, widened
from ..io.precision import EncodingSink, per_tensor_scale
from ..methods import fused_linear
from ..nonfinite import all_finite, check_result, count_inputs as count_nonfinite_inputs, may_leave_range
from ..plan import KeyPlan, MergeSettings
from .job import MergeJob, Put

CHUNK_ELEMENTS = 1 << 18  # 1 MiB of float32 per operand
SPLIT_ELEMENTS = 1 << 22  # tensors from 4M values up are worth a second thread (fp8 Flux: most of the file)
# the kernel's steps through a large key, after each of which the inputs' pages it passed are let go (mapped
# inputs: the key's result then grows while they shrink, instead of on top of them)
LET_GO_ELEMENTS = 1 << 22


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
                buffers: Optional[BufferPool] = None,
                scales: Optional[tuple[float, ...]] = None,
                let_go: Optional[Callable[[int, int], None]] = None) -> Optional[tuple[torch.Tensor, dict[str, int]]]:
    """``merge_tensor``'s result computed by the native kernel (methods/fused_linear.py), with the
    inputs' NaN/inf counts {input: n}; None where the kernel does not apply.
    buffers: the result goes into memory from this pool (the caller gives it back once written).
    scales: A's, B's and C's per-tensor scales (stored scaled fp8 weights; 1.0 for the others).
    let_go: called with each span [lo, hi) of values once merged (``MergeJob.let_go``), in steps of
    LET_GO_ELEMENTS."""
    if not fuses(kp, mode, out_dtype, a, b, c):
        return None
    nbytes = a.numel() * out_dtype.itemsize
    out = torch.empty(a.shape, dtype=out_dtype) if buffers is None else \
        buffers.take(nbytes).view(out_dtype).view(a.shape)
    flat_a, flat_b, flat_out = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    flat_c = None if c is None else c.reshape(-1)

    def span(first: int, last: int) -> list[int]:
        return fused_linear.merge_span(mode, kp.alpha, kp.beta, flat_a, flat_b, flat_c, flat_out, first, last,
                                       scales=scales)

    run = span if let_go is None else functools.partial(in_steps, span, let_go)
    parts = in_halves(run, out.numel(), chunk, helper)
    counts = {name: n for name, *found in zip(fused_linear.INPUTS, *parts) if (n := sum(found))}
    return out, counts


def fused_scaled_merge(kp: KeyPlan, mode: str, a: torch.Tensor, b: torch.Tensor, c: Optional[torch.Tensor],
                       dtype: torch.dtype, helper: Optional[cf.Executor] = None, chunk: int = CHUNK_ELEMENTS,
                       buffers: Optional[BufferPool] = None, scales: Optional[tuple[float, ...]] = None
                       ) -> Optional[tuple[torch.Tensor, torch.Tensor, dict[str, int]]]:
    """(fp8 values, float32 scale, NaN/inf counts): ``quantize_scaled`` of ``fused_merge``'s float32 result, bit
    for bit, for a key the sink stores as per-tensor scaled fp8 of ``dtype``. Two passes over the inputs: the
    merged values' max |x| (nothing stored), then the values divided by the scale and encoded. Why: the float32
    result, written once and read twice by the writer, was 0.9 GB and most of the memory traffic for a 226 M-value
    weight. None where the kernel does not apply or the result holds NaN/inf (the float32 path then runs)."""
    if not fuses(kp, mode, dtype, a, b, c):
        return None
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    flat_c = None if c is None else c.reshape(-1)

    def measure(first: int, last: int) -> tuple[list[int], int]:
        return fused_linear.abs_max_span(mode, kp.alpha, kp.beta, flat_a, flat_b, flat_c, first, last, scales=scales)

    parts = in_halves(measure, a.numel(), chunk, helper)
    top = max(bits for _, bits in parts)
    if top >= 0x7F800000:  # NaN/inf: quantize_scaled's own handling of them
        return None
    counts = {name: n for name, *found in zip(fused_linear.INPUTS, *(c for c, _ in parts)) if (n := sum(found))}
    scale = per_tensor_scale(torch.tensor([top], dtype=torch.int32).view(torch.float32).reshape(()), dtype)
    out = torch.empty(a.shape, dtype=dtype) if buffers is None else \
        buffers.take(a.numel() * dtype.itemsize).view(dtype).view(a.shape)
    flat_out = out.reshape(-1)

    def encode(first: int, last: int) -> list[int]:
        return fused_linear.merge_span(mode, kp.alpha, kp.beta, flat_a, flat_b, flat_c, flat_out, first, last,
                                       scales=scales, divisor=float(scale))

    in_halves(encode, a.numel(), chunk, helper)
    return out, scale, counts


def in_steps(span: Callable[[int, int], list[int]], let_go: Callable[[int, int], None], first: int,
             last: int) -> list[int]:
    """``span(first, last)``'s counts, run in steps of LET_GO_ELEMENTS, each step's values let go after it."""
    counts = [0, 0, 0]
    for lo in range(first, last, LET_GO_ELEMENTS):
        hi = min(lo + LET_GO_ELEMENTS, last)
        counts = [n + m for n, m in zip(counts, span(lo, hi))]
        let_go(lo, hi)
    return counts


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


def split_work(total: int, chunk: int = CHUNK_ELEMENTS) -> bool:
    """Whether to compute one key's halves on two threads: a large tensor, and two cores allowed.

    Why not torch's own threads: they meet at a barrier after every operation and spin there when
    another process holds a core (merge_core/threads.py). Two halves meet once per key, each thread
    running one torch thread, and a waiting thread sleeps: when the second core is taken, the halves
    simply take turns on the free one, at the speed of one thread. (Asking for idle cores first, as
    compute_threads does, said "busy" through most of a large file merge: the kernel's writeback of
    the output runs as other tasks.) Measured in bench/RESULTS.md (full-size Flux fp8)."""
    return total >= max(SPLIT_ELEMENTS, 2 * chunk) and thread_policy.available_cpus() > 1


def in_dtypes(*tensors) -> tuple:
    return tuple(t.dtype for t in tensors if t is not None)


class LinearKey:
    """The handler of merged keys under a merge mode's formula (the plan has no calc mode)."""

    def __init__(self, job: MergeJob):
        self.job = job
        settings = cast(MergeSettings, job.plan.settings)  # a two-model merge's plan
        self.mode, self.needs_c = settings.mode, settings.needs_c
        # a file sink keeps no result: each key's result memory serves a later key once written (fresh memory
        # costs a page fault per 4 KiB, and with the page cache full of the inputs, reclaiming a page for each)
        self.reuse_results = not job.sink.keeps_tensors

    @staticmethod
    def compact(kp: KeyPlan) -> bool:
        """Whether the key's result is the formula's alone (no Adjust, no inpainting channels): its inputs may
        then be read as stored, and its result computed in the sink's stored dtype."""
        return kp.adjust is None and kp.input_channels is None

    def target(self, kp: KeyPlan) -> torch.dtype:
        """The dtype this key's result is computed in: the sink's stored fp8 when it takes it."""
        direct = self.job.sink.encoded_dtype(kp.key) if self.compact(kp) else None
        return direct or self.job.dtypes[kp.key]

    def scaled_output(self, kp: KeyPlan) -> Optional[torch.dtype]:
        """The fp8 dtype of a key the sink writes as per-tensor scaled fp8 and takes quantised
        (``fused_scaled_merge``); None for every other key."""
        encoding = getattr(self.job.sink, "scaled_encoding", None)
        if encoding is None or not self.compact(kp) or self.job.move.device.type != "cpu":
            return None
        return encoding(kp.key)

    def reads(self, kp: KeyPlan) -> tuple[str, ...]:
        return ("a", "b", "c") if self.needs_c else ("a", "b")

    def read(self, name: str, kp: KeyPlan, scaled: bool) -> tuple[torch.Tensor, float]:
        """(tensor, scale): as stored where cheaper (plain fp8; with ``scaled``, a per-tensor scaled fp8
        weight's values and its scale, which only the fused kernel applies), else as ``get`` reads it."""
        source = self.job.sources[name]
        if self.compact(kp):
            stored_scaled = getattr(source, "stored_scaled", None) if scaled else None
            pair = stored_scaled(kp.key) if stored_scaled is not None else None
            if pair is not None:
                return pair
            tensor = source.stored(kp.key)
            if tensor is not None:
                return tensor, 1.0
        return source.get(kp.key), 1.0

    def load(self, kp: KeyPlan):
        """A, B (and C) as read, moved toward the math device, and their NaN/inf counts where counted here.

        A linear mode is checked on its result instead (one tensor, not two or three): its formula
        multiplies every input, so any NaN/inf in A, B or C makes the result non-finite there. Stored fp8
        inputs are the exception: their scan is cheap bit tests here, and a clean result lets the math
        thread widen them without looking for NaN. The fused kernel counts as it reads, and it alone applies
        a scaled fp8 weight's scale: such a weight read as stored is dequantised by ``get`` after all when the
        kernel does not take the key (another input's dtype or shape)."""
        move = self.job.move
        scaled = move.device.type == "cpu" and fused_linear.available()
        (a, sa), (b, sb) = self.read("a", kp, scaled), self.read("b", kp, scaled)
        c, sc = self.read("c", kp, scaled) if self.needs_c else (None, 1.0)
        fused = move.device.type == "cpu" and fuses(kp, self.mode.name, self.target(kp), a, b, c)
        if not fused and (sa, sb, sc) != (1.0, 1.0, 1.0):  # rare (another input's dtype): dequantised after all
            sources = self.job.sources
            a, b = (t if s == 1.0 else sources[n].get(kp.key) for n, t, s in (("a", a, sa), ("b", b, sb)))
            c = c if sc == 1.0 else sources["c"].get(kp.key)
            sa = sb = sc = 1.0
        inputs = {"A": a, "B": b, "C": c}
        checked = not fused and all(t is None or t.dtype in FP8 for t in inputs.values())
        nonfinite = count_nonfinite_inputs(inputs) if checked else None
        return move.prepare(a), move.prepare(b), move.prepare(c), (sa, sb, sc), nonfinite

    def compute(self, kp: KeyPlan, loaded) -> Put:
        job, mode = self.job, self.mode
        *inputs, scales, nonfinite = loaded
        a, b, c = job.move.inputs(*inputs)
        job.note_nonfinite(kp.key, nonfinite)
        into = job.pool if self.reuse_results and kp.adjust is None else None
        scaled = self.scaled_output(kp)
        quantised = None if scaled is None else \
            fused_scaled_merge(kp, mode.name, a, b, c, scaled, job.halves, buffers=into, scales=scales)
        if quantised is not None:
            values, scale, counted = quantised
            job.note_nonfinite(kp.key, counted)
            job.give_back(zip("abc", inputs), values)
            write = functools.partial(cast(EncodingSink, job.sink).put_scaled, scale=scale)  # scaled_output says so
            return Put(write, kp.key, values, values if into is not None else None)
        let_go = job.let_go(kp.key, zip("abc", (a, b, c))) if a.numel() >= 2 * LET_GO_ELEMENTS else None
        fused = fused_merge(kp, mode.name, a, b, c, self.target(kp), job.halves, buffers=into, scales=scales,
                            let_go=let_go)
        assert fused is not None or scales == (1.0, 1.0, 1.0), "scaled inputs read as stored need the kernel"
        if fused is not None:
            result, counted = fused
            job.note_nonfinite(kp.key, counted)
            # a scaled input's values are float32 (as ``get`` hands them out)
            dtypes = tuple(torch.float32 if s != 1.0 else t.dtype for t, s in zip((a, b, c), scales) if t is not None)
            if not counted and may_leave_range(mode.name, kp.alpha, kp.beta, dtypes, result.dtype):
                check_result(result, kp.key, mode.name, True, "mode", result.dtype)
            return job.merged_put(kp, inputs, result, release=result if into is not None else None)
        result = merge_tensor(kp, mode.fn, a, b, c, self.target(kp), helper=job.halves, finite=nonfinite == {})
        if nonfinite is None and not all_finite(result):  # rare: now count the inputs exactly
            nonfinite = count_nonfinite_inputs({"A": a, "B": b, "C": c})
            job.note_nonfinite(kp.key, nonfinite)
            if not nonfinite:  # finite inputs, non-finite result: the settings (nonfinite.py)
                check_result(result, kp.key, mode.name, True, "mode", result.dtype)
        elif nonfinite == {} and may_leave_range(mode.name, kp.alpha, kp.beta, in_dtypes(a, b, c), result.dtype):
            check_result(result, kp.key, mode.name, True, "mode", result.dtype)
        return job.merged_put(kp, inputs, result)
