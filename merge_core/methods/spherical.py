"""Two geometric calc modes on whole flattened tensors: SLERP (Weight sum) and add perpendicular (Add difference).

Both need whole-tensor norms and dot products, so they never run chunked. Where the geometry is undefined
(a zero vector, (anti)parallel tensors) each falls back as documented and appends the reason to
``fallbacks``: NaN never reaches the weights.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

Tensor = torch.Tensor

# |cos(omega)| above 1 - this is (anti)parallel for float32 inputs: a float32 cosine is only good to ~1e-7,
# which puts omega off by ~5e-4 near 0 or pi, and the slerp quotient would divide rounding noise.
PARALLEL_COS = 1e-6


def slerp(a: Tensor, b: Tensor, t: float, fallbacks: Optional[list] = None) -> Tensor:
    """Spherical interpolation of flattened A and B with the norm interpolated linearly (Shoemake 1985):
    omega = arccos(<A/|A|, B/|B|>), result = (sin((1-t)omega) A/|A| + sin(t omega) B/|B|) / sin(omega)
    * ((1-t)|A| + t|B|). A zero tensor or |cos(omega)| > 1 - 1e-6 ((anti)parallel): lerp(A, B, t) instead."""
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0 or not (math.isfinite(na) and math.isfinite(nb)):
        return _lerp_fallback(a, b, t, fallbacks, "slerp: a zero or non-finite tensor")
    an, bn = a / na, b / nb
    cos = max(-1.0, min(1.0, float((a * b).sum(dtype=torch.float64)) / (na * nb)))
    if abs(cos) > 1.0 - PARALLEL_COS:
        return _lerp_fallback(a, b, t, fallbacks, "slerp: A and B (anti)parallel")
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    scale = ((1.0 - t) * na + t * nb) / sin_omega
    out = an * (math.sin((1.0 - t) * omega) * scale)
    out.add_(bn, alpha=math.sin(t * omega) * scale)
    return out


def _lerp_fallback(a, b, t, fallbacks, why):
    if fallbacks is not None:
        fallbacks.append(why)
    return torch.lerp(a, b, t)


def perpendicular_part(x: Tensor, y: Tensor, fallbacks: Optional[list] = None) -> Tensor:
    """y minus its projection on x (flattened): y - x <x, y>/|x|^2. x = 0 has no direction: zeros instead."""
    nx2 = float((x * x).sum(dtype=torch.float64))
    if nx2 == 0.0 or not math.isfinite(nx2):
        if fallbacks is not None:
            fallbacks.append("add_perpendicular: A - C is zero, A kept")
        return torch.zeros_like(y)
    return y - x * (float((x * y).sum(dtype=torch.float64)) / nx2)


def add_perpendicular(a: Tensor, b: Tensor, c: Tensor, alpha: float, fallbacks: Optional[list] = None) -> Tensor:
    """A + alpha * (the component of B - C orthogonal to A - C)."""
    return torch.add(a, perpendicular_part(a - c, b - c, fallbacks), alpha=alpha)
