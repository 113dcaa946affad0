"""Interpolations on the sphere and by distance: NuSLERP, multi-SLERP, the Karcher mean and NearSwap.

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py).
The spherical methods split a vector into its direction (interpolated on the unit sphere) and its norm
(interpolated linearly); where a direction is undefined (a zero vector, opposite directions cancelling) they fall
back to the weighted linear mean and say so in ``fallbacks``."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..errors import MergeInputError
from .params import CombineMethod, MethodParams

Tensor = torch.Tensor

NORM_FLOOR = 1e-7  # NuSLERP: a vector this short has no direction (mergekit's normalisation floor)
COLINEAR_EPS = 1e-8  # NuSLERP: 1 - cos^2 <= eps^2 counts as (anti)parallel: linear interpolation
SPHERE_EPS = 1e-8  # multi-SLERP: added to the norms (mergekit's eps)
# multi-SLERP: a weighted mean of unit vectors shorter than this has no direction. mergekit's 1e-8 lies below the
# float32 rounding of the unit vectors (~1e-7 of their norm 1): cancelling directions such as t, -3t (weights
# 1/2 each) left a residual of a few 1e-8 and were scaled along that noise.
CANCELLED = 1e-6


def _note(fallbacks: Optional[list], why: str) -> None:
    if fallbacks is not None:
        fallbacks.append(why)


def _float(base: Tensor, models: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    return base.detach().float(), [m.detach().float() for m in models]


# --- NuSLERP ---------------------------------------------------------------------------------------------------

def nuslerp_fraction(weights: Sequence[float]) -> float:
    """t = w_2 / (w_1 + w_2): the share of the second task vector."""
    return weights[1] / (weights[0] + weights[1])


def nuslerp(v0: Tensor, v1: Tensor, t: float, axis: str = "whole", fallbacks: Optional[list] = None) -> Tensor:
    """SLERP from v0 (t = 0) to v1 (t = 1) of float32 tensors of one shape, direction and norm together:
    (sin((1 - t) theta) v0 + sin(t theta) v1) / sin(theta), theta the angle between them. axis: "whole" (one
    vector per tensor), "rows" (one per slice along the last dimension), "columns" (one per slice along the first).
    Vectors that are (anti)parallel, or one of them shorter than NORM_FLOOR, are interpolated linearly,
    (1 - t) v0 + t v1 (noted in ``fallbacks``); mergekit slerps a zero vector as if orthogonal."""
    shape = v0.shape
    if axis == "whole" or v0.dim() == 0:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif axis == "columns":
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    elif axis != "rows":
        raise ValueError(f"unknown slerp axis {axis!r}")
    n0 = torch.linalg.vector_norm(v0, dim=-1, keepdim=True)
    n1 = torch.linalg.vector_norm(v1, dim=-1, keepdim=True)
    cos = (torch.sum((v0 / n0.clamp(min=NORM_FLOOR)) * (v1 / n1.clamp(min=NORM_FLOOR)), dim=-1, keepdim=True)
           .clamp_(-1.0, 1.0))
    colinear = (1 - cos.square()) <= COLINEAR_EPS ** 2
    short = (n0 <= NORM_FLOOR) | (n1 <= NORM_FLOOR)
    linear = colinear | short
    theta = torch.acos(torch.where(linear, torch.zeros_like(cos), cos))
    sin = torch.where(linear, torch.ones_like(theta), torch.sin(theta))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin
    if bool(linear.any()):
        result = torch.where(linear, (1 - t) * v0 + t * v1, result)
        why = "a task vector is zero" if bool(short.any()) else "the task vectors are (anti)parallel"
        _note(fallbacks, f"nuslerp: {why}, linear interpolation")
    if axis == "columns" and len(shape) > 0:
        result = result.transpose(0, -1)
    return result.reshape(shape)


def nuslerp_delta(base, models, params, key, fallbacks):
    base, models = _float(base, models)
    t = nuslerp_fraction(params.weights_for(2))
    return nuslerp(models[0] - base, models[1] - base, t, params.slerp_axis, fallbacks)


def check_nuslerp(params: MethodParams, n_models: int) -> None:
    weights = params.weights_for(2)
    if abs(sum(weights)) < 1e-6:
        raise MergeInputError("weights", f"sum to {sum(weights):g}, but NuSLERP interpolates at "
                                         "t = w_2 / (w_1 + w_2).",
                              "give weights with a nonzero sum, e.g. 1,1 (t = 0.5) or 0.7,0.3.")


# --- multi-SLERP -------------------------------------------------------------------------------------------------

def multislerp(taus: Sequence[Tensor], weights: Sequence[float], fallbacks: Optional[list] = None) -> Tensor:
    """Barycentric interpolation on the sphere of the vectors ``taus`` (weights summing to 1): their unit vectors
    u_i, the normalised weighted mean m of the u_i, the weighted mean g of the u_i's components tangent to m, the
    exponential map m cos|g| + g sin|g| / |g|, scaled by the weighted mean norm sum w_i |t_i|. One vector: itself.
    Where |sum w_i u_i| < CANCELLED (opposite directions cancel) it has no direction: d = sum w_i t_i, noted
    in ``fallbacks`` (mergekit does the same for two vectors and stops with an error for more). ``taus`` are work
    buffers: they become the unit vectors (the memory of the n task vectors, no more)."""
    if len(taus) == 1:
        return taus[0]
    norms = [float(torch.linalg.vector_norm(t)) + SPHERE_EPS for t in taus]
    units = [t.div_(n) for t, n in zip(taus, norms)]
    mean = torch.zeros_like(units[0])
    for u, w in zip(units, weights):
        mean.add_(u, alpha=w)
    mean_norm = float(torch.linalg.vector_norm(mean))
    if mean_norm < CANCELLED:
        _note(fallbacks, "multislerp: the weighted unit vectors cancel, weighted mean of the task vectors")
        mean.zero_()
        for u, w, n in zip(units, weights, norms):
            mean.add_(u, alpha=w * n)
        return mean
    mean.div_(mean_norm)
    tangent = torch.zeros_like(mean)
    for u, w in zip(units, weights):
        dot = float(torch.sum(u * mean))
        tangent.add_(u.sub_(mean, alpha=dot), alpha=w)
    step = float(torch.linalg.vector_norm(tangent)) + SPHERE_EPS
    result = mean.mul_(math.cos(step)).add_(tangent, alpha=math.sin(step) / step)
    return result.mul_(sum(w * (n - SPHERE_EPS) for w, n in zip(weights, norms)))


def normalised(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


def multislerp_delta(base, models, params, key, fallbacks):
    base, models = _float(base, models)
    return multislerp([m - base for m in models], normalised(params.weights_for(len(models))), fallbacks)


# --- Karcher mean ------------------------------------------------------------------------------------------------

def karcher_mean(points: Sequence[Tensor], weights: Sequence[float], iterations: int = 100, tol: float = 1e-5,
                 fallbacks: Optional[list] = None) -> Tensor:
    """The weighted Karcher (Riemannian) mean of the points' directions on the unit sphere, scaled by their weighted
    mean norm sum w_i |p_i| (weights summing to 1). Points of norm <= tol take no part in the direction (their
    weights renormalised over the rest); the start is the normalised weighted mean of the unit vectors (the first
    unit vector where that is shorter than tol); each step moves along the weighted mean of the log maps,
    sum w_i theta_i / sin(theta_i) (u_i - cos(theta_i) m), by its length, until that length is below tol or after
    ``iterations`` steps. Every point shorter than tol: the mean is 0 (noted in ``fallbacks``)."""
    norms = [torch.linalg.vector_norm(p) for p in points]
    valid = [i for i, n in enumerate(norms) if float(n) > tol]
    if not valid:
        _note(fallbacks, "karcher: every model's norm is below tolerance, mean 0")
        return torch.zeros_like(points[0])
    units = [points[i] / norms[i] for i in valid]
    total = sum(weights[i] for i in valid)
    shares = [weights[i] / total for i in valid]
    mean = torch.zeros_like(units[0])
    for share, u in zip(shares, units):
        mean += share * u
    length = torch.linalg.vector_norm(mean)
    mean = units[0].clone() if float(length) < tol else mean / length
    for _ in range(max(0, int(iterations))):
        tangent = torch.zeros_like(mean)
        for share, u in zip(shares, units):
            cos = torch.clamp(torch.dot(mean.reshape(-1), u.reshape(-1)), -1.0, 1.0)
            theta = torch.arccos(cos)
            if float(theta) < tol:
                continue
            tangent += share * (theta / torch.sin(theta)) * (u - cos * mean)
        step = torch.linalg.vector_norm(tangent)
        if float(step) < tol:
            break
        mean = torch.cos(step) * mean + torch.sin(step) * (tangent / step)
        length = torch.linalg.vector_norm(mean)
        if float(length) > tol:
            mean = mean / length
    return sum(w * n for w, n in zip(weights, norms)) * mean


def karcher_delta(base, models, params, key, fallbacks):
    base, models = _float(base, models)
    weights = normalised(params.weights_for(len(models)))
    return karcher_mean(models, weights, params.iterations, params.tolerance, fallbacks) - base


def check_convex_weights(label: str):
    """A check refusing weights that are not a convex combination (a negative weight, or no positive sum): the
    method is a weighted mean on the sphere, and normalising 1,-0.999 would scale it by 1000."""
    def check(params: MethodParams, n_models: int) -> None:
        if params.weights is None:
            return
        negative = [i for i, w in enumerate(params.weights) if w < 0]
        if negative:
            raise MergeInputError("weights", f"value #{negative[0] + 1} is {params.weights[negative[0]]:g}, but "
                                             f"{label} is a weighted mean on the sphere (weights normalised to "
                                             "sum 1).", "give weights >= 0 with a positive sum (e.g. 1,1).")
        if not sum(params.weights) > 0:
            raise MergeInputError("weights", f"are all 0, but {label} divides by their sum.",
                                  "give weights >= 0 with a positive sum (e.g. 1,1).")
    return check


# --- NearSwap ----------------------------------------------------------------------------------------------------

def nearswap(base: Tensor, model: Tensor, threshold: float) -> Tensor:
    """NearSwap's delta: where the model is near the base it is taken, where far the base is kept:
    w = clamp(threshold / max(|M - C|, 1e-6), 0, 1), d = w (M - C) (merged C + d = w M + (1 - w) C)."""
    diff = model - base
    weight = (threshold / diff.abs().clamp(min=1e-6)).clamp_(0.0, 1.0)
    return diff.mul_(weight)


def nearswap_delta(base, models, params, key, fallbacks):
    base, models = _float(base, models)
    return nearswap(base, models[0], params.similarity_threshold)


DECLARED: tuple[CombineMethod, ...] = (
    CombineMethod("nuslerp", "NuSLERP", nuslerp_delta, 2, ("weights", "slerp_axis"),
                  "d = slerp(t_1, t_2, w_2 / (w_1 + w_2)) over the whole tensor, each row or each column",
                  max_models=2, check=check_nuslerp,
                  reference="SLERP (Shoemake, 1985) of two task vectors, NuSLERP (mergekit)"),
    CombineMethod("multislerp", "Multi-SLERP", multislerp_delta, 1, ("weights",),
                  "d = sum_i w_i |t_i| * exp_m(sum_i w_i (u_i - (u_i.m) m)), u_i = t_i/|t_i|, m = normalised "
                  "sum w_i u_i, weights normalised to sum 1",
                  check=check_convex_weights("Multi-SLERP"),
                  reference="Goddard, Multi-SLERP, goddard.blog (mergekit)"),
    CombineMethod("karcher", "Karcher mean", karcher_delta, 2, ("weights", "iterations", "tolerance"),
                  "d = (sum w_i |M_i|) * Karcher mean of M_i/|M_i| on the sphere - C, weights normalised to sum 1",
                  check=check_convex_weights("the Karcher mean"),
                  reference="Karcher 1977; arXiv:2603.04972 (mergekit)"),
    CombineMethod("nearswap", "NearSwap", nearswap_delta, 1, ("similarity_threshold",),
                  "w = clamp(threshold / |M_1 - C|, 0, 1); d = w (M_1 - C)", max_models=1,
                  reference="alchemonaut, NearSwap (QuartetAnemoi-70B) (mergekit)"),
)
