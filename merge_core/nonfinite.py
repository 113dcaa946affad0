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

from typing import Mapping, Optional

import torch

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
