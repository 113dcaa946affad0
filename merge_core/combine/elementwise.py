"""Element-wise combinations: clamp, add_opposite, geometric_sum and n_model_stock.

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py).
The four come from sd-mecha 1.1 (clamp, add_opposite_mask, geometric_sum, model_stock); each returns the
result R of sd-mecha's function on the same tensors as d = R - C."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .params import CombineMethod, MethodParams

Tensor = torch.Tensor

SD_MECHA = "sd-mecha (ljleb), merge method"
COSINE_EPS = 1e-6  # n_model_stock: sd-mecha's default cos_eps, the floor of each row's norm in the cosine


def _float(base: Tensor, models: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    return base.detach().float(), [m.detach().float() for m in models]


def clamp_to_bounds(x: Tensor, bounds: Sequence[Tensor], stiffness: float) -> Tensor:
    """x limited per element to [low, high] of the bounds. stiffness 0: low/high = the bounds' min/max; s > 0
    moves each toward the bounds' mean: high = (1 - s) max + s (smallest bound >= mean), low likewise with the
    largest bound <= mean. A new tensor; x and the bounds are not modified."""
    high = bounds[0].clone()
    low = bounds[0].clone()
    for bound in bounds[1:]:
        torch.maximum(high, bound, out=high)
        torch.minimum(low, bound, out=low)
    if stiffness:
        mean = torch.zeros_like(high)
        for bound in bounds:
            mean.add_(bound)
        mean.div_(len(bounds))
        above, below = high.clone(), low.clone()
        for bound in bounds:
            above = torch.where((bound <= above) & (bound >= mean), bound, above)
            below = torch.where((bound >= below) & (bound <= mean), bound, below)
        del mean
        high = torch.lerp(high, above, stiffness)
        low = torch.lerp(low, below, stiffness)
    return torch.minimum(torch.maximum(x, low), high)


def clamp_delta(base, models, params: MethodParams, key, fallbacks):
    """T = C + sum w_i t_i, clamped to {C, M1..Mn}; d = clamped - C."""
    base, models = _float(base, models)
    merged = base.clone()
    for model, w in zip(models, params.weights_for(len(models))):
        merged.add_(model - base, alpha=w)
    clamped = clamp_to_bounds(merged, [base, *models], params.stiffness)
    return clamped.sub_(base)


def opposite_ratio(t1: Tensor, t2: Tensor) -> Tensor:
    """2 |t1 - t2| / (|t1 - t2| + |t1 + t2|) per element (0 where both are 0): 0 where the task vectors agree,
    1 where one is 0, 2 where they are opposite. Equal to sd-mecha's add_opposite_mask(a, b, c, alpha=1) with
    t1 = a - c, t2 = b - c (its a + b - 2c is t1 + t2)."""
    apart = (t1 - t2).abs_()
    denominator = (t1 + t2).abs_().add_(apart)
    ratio = apart.mul_(2.0).div_(denominator)
    return torch.where(denominator > 0, ratio, torch.zeros((), dtype=ratio.dtype))


def add_opposite_delta(base, models, params: MethodParams, key, fallbacks):
    """R = M1 + (M2 - C) * ratio(t1, t2): sd-mecha's add_opposite (a + (b - c) * add_opposite_mask(a, b, c));
    d = R - C = t1 + ratio * t2."""
    base, (first, second) = _float(base, models)
    t1, t2 = first - base, second - base
    return opposite_ratio(t1, t2).mul_(t2).add_(t1)


def geometric_sum(a: Tensor, b: Tensor, mix: float) -> Tensor:
    """Re(a^(1 - mix) * b^mix) with principal complex powers, in real arithmetic: |a|^(1-mix) |b|^mix *
    cos(pi ((1 - mix) [a < 0] + mix [b < 0])). 0^0 is 1, as torch's complex power has it."""
    magnitude = a.abs().pow_(1.0 - mix).mul_(b.abs().pow_(mix))
    phase = (a < 0).float().mul_((1.0 - mix) * math.pi).add_((b < 0).float(), alpha=mix * math.pi)
    return magnitude.mul_(phase.cos_())


def geometric_sum_delta(base, models, params: MethodParams, key, fallbacks):
    base, (model,) = _float(base, models)
    return geometric_sum(base, model, params.mix).sub_(base)


def model_stock_rows(taus: Sequence[Tensor], fallbacks=None) -> Tensor:
    """sd-mecha's n_model_stock on the task vectors: per row (along the last dimension) cos = the mean cosine of
    consecutive task vectors (t_i, t_i+1), t = n cos / (1 + (n - 1) cos), d = t * mean t_i. Where
    1 + (n - 1) cos = 0, t is undefined: t = 0 there (sd-mecha's nan_to_num gives float32's largest value)."""
    n = len(taus)
    shape = taus[0].shape
    rows = [t.reshape(1) if t.dim() == 0 else t for t in taus]
    cos = torch.zeros(rows[0].shape[:-1], dtype=torch.float32, device=rows[0].device)
    for i in range(n - 1):
        cos.add_(F.cosine_similarity(rows[i], rows[i + 1], dim=-1, eps=COSINE_EPS))
    cos.div_(n - 1)
    denominator = cos * (n - 1) + 1
    undefined = denominator == 0
    if bool(undefined.any()):
        if fallbacks is not None:
            fallbacks.append("n_model_stock: 1 + (n-1)cos = 0 in a row, t = 0 there")
        denominator = torch.where(undefined, torch.ones((), dtype=denominator.dtype), denominator)
    ratio = torch.where(undefined, torch.zeros((), dtype=cos.dtype), cos * n / denominator).unsqueeze(-1)
    mean = torch.zeros_like(rows[0])
    for tau in rows:
        mean.add_(tau)
    mean.div_(n)
    return mean.mul_(ratio).nan_to_num_(nan=0.0).reshape(shape)


def n_model_stock_delta(base, models, params: MethodParams, key, fallbacks):
    base, models = _float(base, models)
    return model_stock_rows([m - base for m in models], fallbacks)


DECLARED: tuple[CombineMethod, ...] = (
    CombineMethod("clamp", "Clamp", clamp_delta, 1, ("weights", "stiffness"),
                  "T = C + sum w_i t_i clamped per element to the range of {C, M_i} (stiffness pulls the range "
                  "toward its mean); d = T - C",
                  reference=f"{SD_MECHA} clamp"),
    CombineMethod("add_opposite", "Add opposite", add_opposite_delta, 2, (),
                  "d = t1 + r t2, r = 2|t1 - t2| / (|t1 - t2| + |t1 + t2|) (0 where agreeing, 2 where opposite)",
                  max_models=2, reference=f"{SD_MECHA} add_opposite_mask, as add_opposite uses it"),
    CombineMethod("geometric_sum", "Geometric sum", geometric_sum_delta, 1, ("mix",),
                  "d = Re(C^(1-mix) M1^mix) - C (complex powers: a negative value gives the real part)",
                  max_models=1, reference=f"{SD_MECHA} geometric_sum"),
    CombineMethod("n_model_stock", "N-model stock", n_model_stock_delta, 2, (),
                  "per row: cos = mean cosine of consecutive t_i, t = n cos / (1 + (n-1) cos); d = t * mean t_i",
                  reference=f"Jang et al., arXiv:2403.19522, per row; {SD_MECHA} n_model_stock"),
)
