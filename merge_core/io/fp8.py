"""fp8 <-> float32 on the CPU at memory speed, with the same values as torch's own casts.

Why: torch 2.11's CPU cast from fp8 to float32 converts one value at a time (5-7.5 ns per value
on this kind of machine), which made a full-size fp8 Flux merge CPU-bound at 7-17x the I/O floor.
Both fp8 kinds are bit-shifts of float16, whose cast to float32 is vectorised:

- e5m2 is the upper byte of a float16 (same exponent width and bias), NaN and inf included;
- e4m3fn's byte, sign-extended to int16 and shifted into a float16 (``S 0EEEE MMM0000000``), are the value
  times 2^-8, subnormals included (both formats' subnormals scale by the same power of two); one
  multiplication by 256 (exact) restores it. Its NaN (``S1111111``) would come out as +-480, a
  value no finite e4m3fn has, so chunks holding one are patched afterwards.

The way back (float32 -> fp8) is already vectorised in torch; ``narrow`` adds the saturation
(values beyond the format's max become +-max, not NaN) without a whole float32 copy.
Every function works chunk by chunk in cache-sized pieces with scratch buffers of that size.
"""
from __future__ import annotations

import threading
from typing import Optional

import torch

CHUNK = 1 << 18
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
FP8 = (E4M3, E5M2)
_E4M3_NAN_BITS = 0x7F  # the exponent-and-mantissa bits of e4m3fn's only non-finite value
_E4M3_MAX_SHIFTED = 448.0 / 256  # the largest finite e4m3fn in the shifted float16 form; NaN is 480/256
_CLEAR_BIT_14 = ~0x4000  # int16 mask: drops the sign-extension bit that lands in the exponent's top bit


_scratch = threading.local()  # per thread: one chunk of int16 bits and one of float32, reused


def scratch(name: str, dtype: torch.dtype, n: int) -> torch.Tensor:
    """This thread's reusable buffer ``name`` of at least n elements (fresh memory costs a page fault
    per 4 KiB, which at this chunk size was a tenth of the conversion)."""
    buf = getattr(_scratch, name, None)
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
            buf = torch.empty(max(n, CHUNK), dtype=dtype)
        setattr(_scratch, name, buf)
    return buf[:n]


def widen(t: torch.Tensor, out: Optional[torch.Tensor] = None, finite: bool = False) -> torch.Tensor:
    """``t`` as float32 (``t.float()``'s values, bit for bit); into ``out`` when given (same shape).

    finite: the caller already knows ``t`` holds no NaN (the engine's read-ahead checked it), so the
    search for one is skipped. Non-fp8 tensors and tensors off the CPU use torch's own cast."""
    if t.dtype not in FP8 or t.device.type != "cpu":
        if out is None:
            return t.float()
        return out.copy_(t)
    if out is None:
        out = torch.empty(t.shape, dtype=torch.float32)
    src, dst = t.reshape(-1).view(torch.int8), out.view(-1)
    total = src.numel()
    bits = scratch("bits", torch.int16, min(CHUNK, total))
    for start in range(0, total, CHUNK):
        end = min(start + CHUNK, total)
        s, b, o = src[start:end], bits[:end - start], dst[start:end]
        b.copy_(s)  # sign-extended: SSSSSSSS SEEEEMMM
        if t.dtype == E5M2:
            o.copy_(b.bitwise_left_shift_(8).view(torch.float16))
            continue
        b.bitwise_left_shift_(7).bitwise_and_(_CLEAR_BIT_14)  # S0EEEEMMM0000000: the value times 2^-8
        half = b.view(torch.float16)
        if finite:
            o.copy_(half).mul_(256.0)
            continue
        low, high = torch.aminmax(half)
        o.copy_(half).mul_(256.0)
        if float(high) > _E4M3_MAX_SHIFTED or float(low) < -_E4M3_MAX_SHIFTED:
            bad = (s & 0x7F) == _E4M3_NAN_BITS
            o[bad] = torch.full_like(o[bad], float("nan")).copysign_(o[bad])  # torch's NaN keeps its sign
    return out


def widened(t: torch.Tensor, name: str, finite: bool = False) -> torch.Tensor:
    """One chunk as float32 for the math: itself when it already is, else converted into this thread's
    scratch buffer ``name`` (valid until the next call with that name). A fresh float32 chunk per
    operand cost more than the conversion (malloc hands freed megabytes back to the kernel, so the
    next chunk's pages fault again): 8.2 against 3.2 ns per value for an fp8 weight sum."""
    if t.dtype == torch.float32 or t.device.type != "cpu":
        return t.float()
    return widen(t, out=scratch(name, torch.float32, t.numel()).view(t.shape), finite=finite)


def narrow(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float tensor as fp8 ``dtype`` with saturation (+-max beyond the range; NaN stays NaN)."""
    if t.dtype == dtype:
        return t
    top = torch.finfo(dtype).max
    out = torch.empty(t.shape, dtype=dtype, device=t.device)
    src, dst = t.reshape(-1), out.view(-1)
    total = src.numel()
    buf = scratch("narrow", torch.float32, min(CHUNK, total)) if t.device.type == "cpu" else \
        torch.empty(min(CHUNK, total), dtype=torch.float32, device=t.device)
    for start in range(0, total, CHUNK):
        end = min(start + CHUNK, total)
        chunk, part = src[start:end], buf[:end - start]
        if chunk.dtype == torch.float32:
            torch.clamp(chunk, -top, top, out=part)
        else:
            widen(chunk, out=part).clamp_(-top, top)
        dst[start:end].copy_(part)
    return out


def _native():
    """The fused linear kernels' module when its library is built (methods/native.py), else None."""
    from ..methods import fused_linear  # here: io is imported by methods' callers first
    return fused_linear if fused_linear.available() else None


def abs_max(t: torch.Tensor) -> torch.Tensor:
    """``t.abs().max()`` (float32, 0-dim) without the whole ``abs()`` copy, chunk by chunk (a maximum is exact
    in any order). A tensor holding NaN or inf is left to torch whole, so that every value is torch's."""
    flat = t.reshape(-1)
    if flat.numel() == 0:
        raise ValueError("abs_max of an empty tensor")
    native = _native() if flat.dtype == torch.float32 and flat.device.type == "cpu" and flat.is_contiguous() \
        else None
    if native is not None:
        bits = native.abs_max_bits(flat)
        if bits < 0x7F800000:
            return torch.tensor([bits], dtype=torch.int32).view(torch.float32).reshape(())
        return flat.abs().max()
    top = None
    for start in range(0, flat.numel(), CHUNK):
        part = flat[start:start + CHUNK].float().abs().max()
        top = part if top is None else torch.maximum(top, part)
    assert top is not None
    if not torch.isfinite(top):
        return flat.float().abs().max()
    return top


def narrow_divided(t: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``narrow(t / scale, dtype)``, the same bytes, without the whole float32 quotient: the division and the
    encoding chunk by chunk into the preallocated output (natively where the kernel is built). scale: a
    0-dim float32 tensor, finite (a non-finite one is left to torch whole, as NaN's sign is not promised
    by the kernel)."""
    flat = t.reshape(-1)
    out = torch.empty(t.shape, dtype=dtype, device=t.device)
    if not torch.isfinite(scale):
        return narrow(t.float() / scale, dtype)
    native = _native() if flat.dtype == torch.float32 and flat.device.type == "cpu" and flat.is_contiguous() \
        else None
    if native is not None and flat.numel():
        native.encode_divided(flat, float(scale), out.view(-1))
        return out
    top = torch.finfo(dtype).max
    dst = out.view(-1)
    buf = scratch("narrow", torch.float32, min(CHUNK, flat.numel())) if t.device.type == "cpu" else \
        torch.empty(min(CHUNK, flat.numel()), dtype=torch.float32, device=t.device)
    for start in range(0, flat.numel(), CHUNK):
        end = min(start + CHUNK, flat.numel())
        part = buf[:end - start]
        torch.div(flat[start:end].float(), scale, out=part).clamp_(-top, top)
        dst[start:end].copy_(part)
    return out
