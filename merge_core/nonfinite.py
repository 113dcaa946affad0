"""Non-finite values (NaN, inf) in the input tensors of a merge: counted per key and input, reported loudly.

What a merge does with them: it merges as the formula says. A NaN or inf in A, B or C
makes the merged value at that position NaN/inf (as any sum with it does), and nowhere
else: smoothAdd's filters are kept from spreading one bad value over its neighbourhood
(filters.smooth). Refusing would block a user who merges a model with a few broken
values on purpose (e.g. to see which keys are hit, or with alpha 0 on those blocks);
silently replacing them would hide a broken input. So the values pass through the
formula unchanged, and every report (CLI summary line, --report, the node's report)
names the keys and counts.
"""
from __future__ import annotations

import functools
from typing import Mapping, Optional

import torch

from .errors import MergeInputError
from .io.fp8 import scratch


def count_nonfinite(t: torch.Tensor) -> int:
    """NaN and inf values of a float tensor (0 for other dtypes).

    Every merged key's inputs pass through here, so the common case must be cheap:
    one ``aminmax`` pass (NaN propagates to both ends, an inf shows as one of them)
    decides that a tensor is all finite. On CPU it is about 40x faster than
    ``isfinite`` on fp16 (0.45 against 19 ns per 1000 values, one thread), which
    has no vectorised half-precision path; the exact count runs only when something
    is there to count.
    """
    if all_finite(t):
        return 0
    special = _fp8_special(t)
    if special is not None:
        return int(special.sum())
    return int(t.numel() - torch.isfinite(t).sum())


def all_finite(t: torch.Tensor) -> bool:
    """True when every value is finite (or the tensor is not floating point)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if str(t.dtype).removeprefix("torch.") in _FP8_SPECIAL:
        return not _fp8_any_special(t)
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


# fp8 has neither aminmax nor isfinite on CPU: its NaN/inf are bit patterns, found on the bytes with
# vectorised integer operations (converting to float32 instead cost 0.22 s per 75 MB Flux tensor).
# (mask, value): e4m3fn's only non-finite values are NaN S.1111.111; e5m2 has IEEE inf/NaN (exponent
# 11111); the "fnuz" kinds have one NaN, 0x80, and no inf.
_FP8_SPECIAL = {name: pattern for name, pattern in (
    ("float8_e4m3fn", (0x7F, 0x7F)), ("float8_e5m2", (0x7C, 0x7C)),
    ("float8_e4m3fnuz", (0xFF, 0x80)), ("float8_e5m2fnuz", (0xFF, 0x80)))}


_SCAN = 1 << 20  # bytes per piece of _fp8_any_special's scan (a scratch buffer that stays in cache)


def _fp8_any_special(t: torch.Tensor) -> bool:
    """Whether an fp8 tensor holds a NaN/inf, in cache-sized pieces: where the pattern is the mask itself
    (e4m3fn, e5m2), non-finite values are exactly the masked bytes that reach the mask, so one ``max``
    per piece decides (a whole-tensor mask and comparison cost two fresh tensors, ~3 ns per value)."""
    mask, value = _FP8_SPECIAL[str(t.dtype).removeprefix("torch.")]
    if t.device.type != "cpu" or mask != value:
        return bool(_fp8_special(t).any())
    flat = t.reshape(-1).view(torch.uint8)
    buf = scratch("scan", torch.uint8, min(_SCAN, flat.numel()))
    for start in range(0, flat.numel(), _SCAN):
        piece = buf[:min(_SCAN, flat.numel() - start)]
        torch.bitwise_and(flat[start:start + _SCAN], mask, out=piece)
        if int(piece.max()) == value:
            return True
    return False


def _fp8_special(t: torch.Tensor):
    """A bool tensor marking the NaN/inf values of an fp8 tensor; None for other dtypes."""
    pattern = _FP8_SPECIAL.get(str(t.dtype).removeprefix("torch."))
    if pattern is None:
        return None
    mask, value = pattern
    return (t.view(torch.uint8) & mask) == value


def count_inputs(tensors: Mapping[str, Optional[torch.Tensor]]) -> dict[str, int]:
    """{input: n} for the inputs ("A", "B", "C") of one key that hold non-finite values."""
    return {name: n for name, t in tensors.items() if t is not None and (n := count_nonfinite(t))}


def record(counts: dict, key: str, tensors: Mapping[str, Optional[torch.Tensor]]) -> None:
    """Add one key's counts per input ("A", "B", "C") to counts {key: {input: n}}."""
    found = count_inputs(tensors)
    if found:
        counts[key] = found


def warning(counts: Mapping[str, Mapping[str, int]], shown: int = 5) -> str:
    """One line naming the keys and counts; empty when every input value was finite."""
    if not counts:
        return ""
    items = [f"{key} ({', '.join(f'{name}: {n}' for name, n in per.items())})"
             for key, per in list(counts.items())[:shown]]
    more = f" and {len(counts) - shown} more" if len(counts) > shown else ""
    return (f"warning: non-finite values (NaN/inf) in the inputs at {len(counts)} merged keys: "
            f"{'; '.join(items)}{more}. They are merged as the formula says (the result is NaN/inf at those "
            f"positions): fix or replace the broken model.")


# --- the merged result ------------------------------------------------------------------------------------
#
# A non-finite merged value that the inputs explain (a NaN/inf among them) is merged as the formula says and
# warned about, as above. One that they do not explain (every input finite) comes from the settings: a weight,
# alpha or drop rate that takes the values beyond the output's range (1000 x 80 overflows float16), or a
# division by a sum that came out 0. Writing it would be a silently broken model, so it stops the merge with an
# error naming the key and the method (check_result), on every path: the engine (CLI, API, file nodes) and the
# nodes' weight adapters at load (KSampler, Save Checkpoint).

def leaves_range(t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> bool:
    """Whether ``t`` holds a NaN/inf, or a value that is infinite once stored as ``dtype`` (float16 or
    bfloat16 beyond their largest value; fp8 is saturated where it is written, by the engine and by ComfyUI's
    rounding, so only NaN/inf count there). One aminmax pass."""
    if not t.is_floating_point() or t.numel() == 0:
        return False
    if str(t.dtype).removeprefix("torch.") in _FP8_SPECIAL:
        return _fp8_any_special(t)
    low, high = torch.aminmax(t.detach())
    ends = torch.stack((low, high))
    if dtype in (torch.float16, torch.bfloat16) and t.dtype != dtype:
        ends = ends.to(dtype)
    return not bool(torch.isfinite(ends).all())


class NonFiniteResult(MergeInputError):
    """A merged key became NaN/inf although its inputs were finite (the settings leave the output's range)."""


def result_error(key: str, method: str, input_name: str = "method", dtype: Optional[torch.dtype] = None,
                 fix: str = "") -> NonFiniteResult:
    where = f", beyond the range of {str(dtype).removeprefix('torch.')}," if dtype is not None else ""
    return NonFiniteResult(
        input_name, f"{method} gives NaN/inf values at key '{key}'{where} although its inputs there are finite: "
                    "these settings break the model, so it is neither written nor used.",
        fix or "lower alpha, the weights or the drop rate (kept values are scaled by 1/(1 - p)), or write fp32.")


def check_result(result: torch.Tensor, key: str, method: str, inputs_finite, input_name: str = "method",
                 dtype: Optional[torch.dtype] = None, fix: str = "") -> bool:
    """Raise result_error when ``result`` leaves ``dtype``'s range while the inputs were finite; returns whether
    the result is fine. inputs_finite: a bool, or a function computing it (run only when the result is not)."""
    if not leaves_range(result, dtype):
        return True
    if inputs_finite() if callable(inputs_finite) else inputs_finite:
        raise result_error(key, method, input_name, dtype, fix)
    return False


def coefficient_sum(mode: str, alpha: float, beta: float) -> Optional[float]:
    """sum |c_i| of a linear mode written as sum c_i X_i (None: not a linear mode). With every input within
    +-M, the merged value lies within +-M * this sum."""
    a, b = abs(alpha), abs(beta)
    return {"weight_sum": abs(1 - alpha) + a, "add_difference": 1 + 2 * a,
            "triple_sum": abs(1 - alpha - beta) + a + b,
            "sum_twice": abs(1 - beta) * (abs(1 - alpha) + a) + b}.get(mode)


def may_leave_range(mode: str, alpha: float, beta: float, input_dtypes, out_dtype: torch.dtype) -> bool:
    """Whether a linear mode's result of finite inputs could leave ``out_dtype``'s range; False lets the engine
    skip the result's pass where it cannot (the common case: a weight sum with alpha in [0, 1] of float16 into
    float16 is a convex combination). fp8 outputs are saturated where they are written (only float32's own
    overflow counts). The margin covers float32's rounding and stays below half a unit of the output's last place.
    Cached: the nodes ask once per key, with a handful of distinct answers per model."""
    return _may_leave_range(mode, alpha, beta, tuple(d for d in input_dtypes if d is not None), out_dtype)


@functools.lru_cache(maxsize=4096)
def _may_leave_range(mode: str, alpha: float, beta: float, input_dtypes: tuple, out_dtype: torch.dtype) -> bool:
    total = coefficient_sum(mode, alpha, beta)
    if total is None:
        return True
    largest = max(torch.finfo(d).max for d in input_dtypes)
    out = torch.float32 if str(out_dtype).removeprefix("torch.") in _FP8_SPECIAL else out_dtype
    info = torch.finfo(out)
    if total <= 1 and largest <= info.max:  # a convex combination into a range as wide as every input's
        return False  # (float32 rounding could pass the largest value by one unit only at that value itself)
    return total * largest * (1 + 1e-6) >= info.max * (1 + info.eps / 4)
