"""The four linear merge modes in one pass per key: decode the stored inputs, merge, encode (linear.c).

Why: the torch path widens every operand to float32, runs one pass per operation and clamps
before the cast back; on fp8 Flux files that was 5 ns per merged value against about 1 ns
here, and it made the full-size merge CPU-bound. The values are torch's, bit for bit
(tests/unit/test_fused_linear.py), and the kernel counts each input's NaN/inf values as it
decodes them, so the inputs need no scan of their own.

Where the kernel does not apply (no compiler, MERGE_SUITE_NATIVE=0, a tensor off the CPU or of
another dtype, not contiguous), ``engine.fused_merge`` returns None and the engine uses the torch path.
"""
from __future__ import annotations

import ctypes
from typing import Optional, Sequence

import torch

from .native import library

MODE_CODES = {"weight_sum": 0, "add_difference": 1, "triple_sum": 2, "sum_twice": 3}
KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float8_e4m3fn: 3, torch.float8_e5m2: 4}
INPUTS = ("A", "B", "C")


def applies(mode: str, out_dtype: torch.dtype, *tensors: Optional[torch.Tensor]) -> bool:
    """Whether ``merge_span`` takes this key: a linear mode, and every tensor a contiguous CPU tensor of
    one of the five float kinds, all of one shape (decided before the kernel is loaded)."""
    present = [t for t in tensors if t is not None]
    return (mode in MODE_CODES and out_dtype in KINDS and len(present) == 2 + (MODE_CODES[mode] > 0)
            and all(t.device.type == "cpu" and t.dtype in KINDS and t.is_contiguous()
                    and t.shape == present[0].shape for t in present))


def merge_span(mode: str, alpha: float, beta: float, a: torch.Tensor, b: torch.Tensor,
               c: Optional[torch.Tensor], out: torch.Tensor, first: int, last: int,
               portable: bool = False, scales: Optional[Sequence[float]] = None, divisor: float = 1.0) -> list[int]:
    """Values [first, last) of ``out`` from the flat positions of a, b, c; the NaN/inf counts of
    A, B, C in that span. ``applies`` must hold and the library must be loaded.
    portable: the plain C loops even where AVX2 is there (the tests compare both).
    scales: each input's per-tensor float32 scale (1.0: none), applied to its decoded values as
    ``widen(x) * scale`` is (its counts are then those of the products).
    divisor: every merged value divided by it (one float32 division) before the encoding, as a scaled fp8
    output's ``narrow(result / scale)`` does."""
    counts = (ctypes.c_int64 * 3)()
    _run(mode, alpha, beta, a, b, c, out, first, last, portable, scales, divisor, counts, None)
    return list(counts)


def abs_max_span(mode: str, alpha: float, beta: float, a: torch.Tensor, b: torch.Tensor,
                 c: Optional[torch.Tensor], first: int, last: int, portable: bool = False,
                 scales: Optional[Sequence[float]] = None) -> tuple[list[int], int]:
    """``merge_span``'s NaN/inf counts and the float32 bits of max |merged value| over [first, last), nothing
    written (above 0x7F800000: a NaN among them): the first pass of a scaled fp8 output, whose scale must be
    known before any value is encoded; the second is ``merge_span`` with that scale as divisor."""
    counts, top = (ctypes.c_int64 * 3)(), ctypes.c_uint32(0)
    _run(mode, alpha, beta, a, b, c, a, first, last, portable, scales, 1.0, counts, ctypes.byref(top))
    return list(counts), top.value


def _run(mode, alpha, beta, a, b, c, out, first, last, portable, scales, divisor, counts, amax) -> None:
    lib = library()
    assert lib is not None, "merge_span without the native library"
    factors = None if scales is None or all(s == 1.0 for s in scales) else \
        (ctypes.c_float * 3)(*(list(scales) + [1.0] * 3)[:3])
    code = (lib.merge_linear_portable if portable else lib.merge_linear)(
        MODE_CODES[mode], float(alpha), float(beta), a.data_ptr(), KINDS[a.dtype], b.data_ptr(), KINDS[b.dtype],
        None if c is None else c.data_ptr(), 0 if c is None else KINDS[c.dtype], out.data_ptr(), KINDS[out.dtype],
        first, last, counts, factors, float(divisor), amax)
    if code:
        raise ValueError(f"merge_suite: the fused kernel refused mode {mode} with {a.dtype}, {b.dtype}, "
                         f"{None if c is None else c.dtype} -> {out.dtype}")


def abs_max_bits(t: torch.Tensor, portable: bool = False) -> int:
    """The float32 bits of max |t| of a contiguous CPU float32 tensor (above 0x7F800000: it holds a NaN)."""
    lib = library()
    assert lib is not None and t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"
    return int(lib.abs_max_bits(t.data_ptr(), t.numel(), int(portable)))


def encode_divided(t: torch.Tensor, scale: float, out: torch.Tensor, portable: bool = False) -> torch.Tensor:
    """``out`` = t / scale (one float32 division per value) in out's dtype, fp8 saturating as clamp-then-cast
    does; t a contiguous CPU float32 tensor, out contiguous of t's size and one of the five kinds."""
    lib = library()
    assert lib is not None and t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"
    assert out.is_contiguous() and out.numel() == t.numel() and out.dtype in KINDS
    if lib.encode_divided(t.data_ptr(), t.numel(), scale, KINDS[out.dtype], out.data_ptr(), int(portable)):
        raise ValueError(f"merge_suite: the native encoder refused {out.dtype}")
    return out


def available() -> bool:
    return library() is not None
