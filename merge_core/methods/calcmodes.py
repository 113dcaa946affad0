"""SuperMerger's calculation modes (docs/merging.md#calc-modes) as small pure functions.

Each function takes float32 tensors A, B (and C where used) of one key and the
key's ratios, and returns a new float32 tensor, or None to keep A unchanged.
None of them modifies its inputs. ``normal`` is not here: it is the merge mode's
own formula (modes.py).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F  # noqa: F401  (extract's cosine)

from ..errors import MergeInputError
from .filters import smooth
from .spherical import add_perpendicular, slerp

Tensor = torch.Tensor


@dataclass(frozen=True)
class KeyContext:
    """What a calc mode may need beyond the tensors."""

    key: str
    alpha: float
    beta: float
    gamma: float = 0.0
    seed: int = 0
    stats: Optional[tuple[float, float]] = None  # cosine modes: (s_min, s_max)
    corrected: bool = False  # tensor2: use shape[1] for the bounds always (quirk 9 fixed)
    combined: Optional[Tensor] = None  # cosine modes: this key's similarity, kept from stage 0
    fallbacks: Optional[list] = None  # slerp, add_perpendicular: why a key fell back (the report counts them)


# --- cosineA / cosineB ---------------------------------------------------------------
# Both come from three per-column sums over dim 0 (A.B, A.A, B.B), taken in one
# pass; the dim-0 normalisation of cosineA and torch's cosine_similarity follow
# from them exactly as torch defines them (norm clamped at 1e-12, cosine's
# denominator at 1e-8), without materialising normalised copies.

NORM_EPS, COS_EPS = 1e-12, 1e-8


def column_sums(a: Tensor, b: Tensor, rows: int = 1 << 14) -> tuple[Tensor, Tensor, Tensor]:
    """Sums over dim 0 of A*B, A*A, B*B in float32, a slab of rows at a time (no full-size temporaries)."""
    if a.dim() == 0:
        a, b = a.reshape(1), b.reshape(1)
    step = max(1, rows * 16 // max(1, a[0].numel()))
    dot = torch.zeros(a.shape[1:], dtype=torch.float32)
    na, nb = torch.zeros_like(dot), torch.zeros_like(dot)
    for start in range(0, a.shape[0], step):
        x, y = a[start:start + step].float(), b[start:start + step].float()
        dot += (x * y).sum(0)
        na += (x * x).sum(0)
        nb += (y * y).sum(0)
    return dot, na, nb


def _cosine_from_sums(dot: Tensor, na: Tensor, nb: Tensor) -> Tensor:
    return dot / torch.sqrt(torch.clamp_min(na * nb, COS_EPS * COS_EPS))


def cosine_similarities(a: Tensor, b: Tensor, variant: str) -> tuple[Tensor, Tensor]:
    """(stage-0 values, combined similarity) of one key (docs/merging.md#cosinea-and-cosineb).

    cosineA: A and B normalised along dim 0; stage 0 is their dim-0 cosine; the
    per-key blend uses (dim-0 cosine + whole-tensor cosine)/2 of the normalised tensors.
    cosineB: the same on the raw tensors, and stage 0 already uses the combined value.
    Both have shape A.shape[1:] (a scalar for 1-D tensors).
    """
    return similarities_from_sums(*column_sums(a, b), variant)


def similarities_from_sums(dot: Tensor, na: Tensor, nb: Tensor, variant: str) -> tuple[Tensor, Tensor]:
    """cosine_similarities from column sums; sums of a tensor's row slabs add up, so a
    tensor stored in parts (ComfyUI's q/k/v of an OpenCLIP in_proj) gets the whole tensor's values."""
    if variant == "cosineA":
        sa = torch.clamp_min(torch.sqrt(na), NORM_EPS)
        sb = torch.clamp_min(torch.sqrt(nb), NORM_EPS)
        dot, na, nb = dot / (sa * sb), na / (sa * sa), nb / (sb * sb)
    cos0 = _cosine_from_sums(dot, na, nb)
    whole = dot.sum() / (torch.sqrt(na.sum()) * torch.sqrt(nb.sum()))
    combined = (cos0 + whole) / 2.0
    return (cos0 if variant == "cosineA" else combined), combined


def cosine_stats(values: Tensor) -> tuple[float, float]:
    """Min and max after dropping NaNs and values outside the 1st..99th percentile.

    Percentiles use the "midpoint" rule; the 99th is taken after the low trim, as
    SuperMerger does.
    """
    v = values[~torch.isnan(values)]
    if v.numel() == 0:
        raise MergeInputError("calcmode", "cosine similarity is undefined for every key (all-zero weights?).",
                              "use another calc mode for these models.")
    v = v[v >= _percentile_midpoint(v, 1.0)]
    v = v[v <= _percentile_midpoint(v, 99.0)]
    return float(v.min()), float(v.max())


def _percentile_midpoint(v: Tensor, q: float) -> float:
    s, _ = torch.sort(v)
    pos = (s.numel() - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float((s[lo] + s[hi]) / 2.0)


def cosine_a(a: Tensor, b: Tensor, c: Optional[Tensor], ctx: KeyContext) -> Tensor:
    """k = clip((combined - s_min)/(s_max - s_min) - |alpha|, 0, 1); result = lerp(B, A, k).

    combined: (cos_dim0 + whole-tensor cosine)/2 of A and B normalised along dim 0.
    k has shape A.shape[1:] and weighs A (alpha = 0 is not A: it is a similarity blend).
    """
    combined = ctx.combined if ctx.combined is not None else cosine_similarities(a, b, "cosineA")[1]
    return _cosine_blend(a, b, combined, abs(ctx.alpha), ctx.stats)


def cosine_b(a: Tensor, b: Tensor, c: Optional[Tensor], ctx: KeyContext) -> Tensor:
    """As cosineA on the raw tensors, with k = clip((combined - s_min)/(s_max - s_min) - alpha, 0, 1)."""
    combined = ctx.combined if ctx.combined is not None else cosine_similarities(a, b, "cosineB")[1]
    return _cosine_blend(a, b, combined, ctx.alpha, ctx.stats)


def _cosine_blend(a, b, combined, alpha, stats):
    """Where the similarity is undefined (an all-zero column or tensor), k is NaN in
    SuperMerger and so is the merged weight; here k = 1 there, which keeps A."""
    s_min, s_max = stats
    k = ((combined - s_min) / (s_max - s_min) - alpha).clamp(0.0, 1.0)
    k = torch.nan_to_num(k, nan=1.0)
    return torch.lerp(b, a, k.to(a.dtype))


# --- trainDifference, smoothAdd, extract ------------------------------------------------

def train_difference(a: Tensor, b: Tensor, c: Tensor, ctx: KeyContext) -> Optional[Tensor]:
    """A + 1.8*alpha*(B - C)*|B - A| / (|B - C| + |B - A|); 0 where the denominator is 0; A where B == C."""
    if torch.equal(b, c):
        return None
    diff = b - c
    dist_a = (b - a).abs()
    denom = diff.abs() + dist_a
    scale = torch.where(denom != 0, dist_a / denom, torch.zeros((), dtype=a.dtype))
    return a + diff * scale * (1.8 * ctx.alpha)


def smooth_delta(b: Tensor, c: Tensor) -> Tensor:
    """gaussian(median(B - C, 3 in every axis), sigma 1), SciPy's "reflect" boundaries.

    A NaN/inf in B - C stays where it is (A + alpha * NaN is NaN there, as the formula
    says) and is not spread over its filter neighbourhood: the filters see 0 in its place.
    """
    delta = b - c
    bad = ~torch.isfinite(delta)
    if not bool(bad.any()):
        return smooth(delta)
    out = smooth(torch.where(bad, torch.zeros((), dtype=delta.dtype), delta))
    return torch.where(bad, delta, out)


def smooth_add(a: Tensor, b: Tensor, c: Tensor, ctx: KeyContext) -> Tensor:
    """A + alpha * smooth_delta(B, C)."""
    return a + ctx.alpha * smooth_delta(b, c)


def extract(a: Tensor, b: Tensor, c: Tensor, ctx: KeyContext) -> Tensor:
    """x = B - A, y = C - A, cos = cosine(x, y, last axis) in [-1, 1], d = ((cos + 1)/2)^gamma;
    result = A + lerp(x, y, alpha) * lerp(d, 1 - d, beta).

    The cosine runs over the LAST axis (quirk 10, kept): rows of Linear weights,
    the kernel width of convolutions, one value for 1-D tensors.
    """
    x, y = b - a, c - a
    cos = F.cosine_similarity(x, y, dim=-1).clamp(-1.0, 1.0).unsqueeze(-1)
    d = ((cos + 1.0) / 2.0) ** ctx.gamma
    return a + torch.lerp(x, y, ctx.alpha) * torch.lerp(d, 1.0 - d, ctx.beta)


# --- tensor, tensor2 ------------------------------------------------------------------

def _exchange(a: Tensor, b: Tensor, alpha: float, beta: float, dim: int, n: int) -> Tensor:
    """B's slices fill a fraction alpha of axis `dim` starting at beta (wrapping modulo 1).

    Bounds are truncated to int and applied with Python slice semantics, as SuperMerger does.
    """
    if alpha + beta <= 1:
        start, stop, out, src = int(n * beta), int(n * (alpha + beta)), a.clone(), b
    else:
        start, stop, out, src = int(n * (alpha + beta - 1)), int(n * beta), b.clone(), a
    index = (slice(None),) * dim + (slice(start, stop),)
    out[index] = src[index]
    return out


def tensor_exchange(a: Tensor, b: Tensor, c: Optional[Tensor], ctx: KeyContext) -> Optional[Tensor]:
    """Rows [n*beta, n*(alpha+beta)) of dim 0 come from B (wrapping), the rest from A."""
    if a.dim() == 0 or a.dim() > 4:
        return None
    return _exchange(a, b, ctx.alpha, ctx.beta, 0, a.shape[0])


def tensor2_exchange(a: Tensor, b: Tensor, c: Optional[Tensor], ctx: KeyContext) -> Optional[Tensor]:
    """As tensor, but slices dim 1 for tensors of 2+ dims.

    Parity (quirk 9, kept by default): the bounds use shape[1] only when it is
    above 100, otherwise shape[0]'s size applied to dim 1. ``ctx.corrected`` always
    uses shape[1].
    """
    if a.dim() == 0 or a.dim() > 4:
        return None
    if a.dim() == 1:
        return _exchange(a, b, ctx.alpha, ctx.beta, 0, a.shape[0])
    n = a.shape[1] if (ctx.corrected or a.shape[1] > 100) else a.shape[0]
    return _exchange(a, b, ctx.alpha, ctx.beta, 1, n)


# --- self, plus random --------------------------------------------------------------

SELF_SKIP = ("to_out", "proj_out", "norm")


def self_scale(a: Tensor, b: Tensor, c: Optional[Tensor], ctx: KeyContext) -> Optional[Tensor]:
    """A * alpha; keys with to_out / proj_out / norm in the name, and alpha = 0, keep A."""
    if any(s in ctx.key for s in SELF_SKIP) or ctx.alpha == 0:
        return None
    return a * ctx.alpha


def key_generator(seed: int, key: str) -> torch.Generator:
    """A generator per (seed, key): draws do not depend on key order or on threads."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def plus_random(a: Tensor, b: Tensor, c: Optional[Tensor], ctx: KeyContext) -> Optional[Tensor]:
    """A + alpha * N(0, 1), seeded per key from the seed (quirk 15 fixed); same skips as self."""
    if any(s in ctx.key for s in SELF_SKIP) or ctx.alpha == 0:
        return None
    noise = torch.randn(a.shape, generator=key_generator(ctx.seed, ctx.key), dtype=torch.float32)
    return a + ctx.alpha * noise.to(a.dtype)


# --- slerp, add_perpendicular (spherical.py) -----------------------------------------------

def slerp_mode(a: Tensor, b: Tensor, c: Optional[Tensor], ctx: KeyContext) -> Tensor:
    """slerp(A, B, alpha) of the flattened tensors; lerp where undefined."""
    return slerp(a, b, ctx.alpha, ctx.fallbacks)


def add_perpendicular_mode(a: Tensor, b: Tensor, c: Tensor, ctx: KeyContext) -> Tensor:
    """A + alpha * (B - C minus its projection on A - C); A where A = C."""
    return add_perpendicular(a, b, c, ctx.alpha, ctx.fallbacks)


@dataclass(frozen=True)
class CalcMode:
    name: str
    fn: Callable[..., Optional[Tensor]]
    modes: tuple[str, ...]            # merge modes it runs with
    forced_mode: Optional[str] = None  # SuperMerger switches to this mode silently; we do it openly
    uses_b_minus_c: bool = False       # receives B - C as "b" (Add difference stage 0)
    uses_beta: bool = False
    uses_gamma: bool = False
    needs_stats: bool = False
    keeps_vae: bool = False
    needs_c: bool = False
    # how the engine may split one key (same result, far less memory traffic):
    # "flat" any elementwise chunks, "rows" slabs of dim 0 (tensors of 2+ dims), "" never
    chunking: str = ""


CALC_MODES: dict[str, CalcMode] = {m.name: m for m in (
    CalcMode("cosineA", cosine_a, ("weight_sum",), needs_stats=True, keeps_vae=True, chunking="rows"),
    CalcMode("cosineB", cosine_b, ("weight_sum",), needs_stats=True, keeps_vae=True, chunking="rows"),
    CalcMode("trainDifference", train_difference, ("add_difference",), forced_mode="add_difference",
             needs_c=True, chunking="flat"),
    CalcMode("smoothAdd", smooth_add, ("add_difference",), needs_c=True),
    CalcMode("extract", extract, ("add_difference",), forced_mode="add_difference", uses_beta=True,
             uses_gamma=True, needs_c=True, chunking="rows"),
    CalcMode("tensor", tensor_exchange, ("weight_sum",), uses_beta=True),
    CalcMode("tensor2", tensor2_exchange, ("weight_sum",), uses_beta=True),
    CalcMode("self", self_scale, ("weight_sum",), chunking="flat"),
    CalcMode("plus random", plus_random, ("weight_sum",)),
    CalcMode("slerp", slerp_mode, ("weight_sum",)),
    CalcMode("add_perpendicular", add_perpendicular_mode, ("add_difference",), needs_c=True),
)}
ALIASES = {"smoothadd mt": "smoothAdd", "plus_random": "plus random", "traindifference": "trainDifference",
           "cosinea": "cosineA", "cosineb": "cosineB",
           "add perpendicular": "add_perpendicular"}
CALC_MODE_NAMES = ["normal"] + list(CALC_MODES)


def get_calc_mode(name: str, input_name: str = "calcmode") -> Optional[CalcMode]:
    """None for "normal"; accepts SuperMerger's names, "smoothAdd MT" included (the same result)."""
    key = (name or "normal").strip()
    if key.lower() == "normal":
        return None
    key = ALIASES.get(key.lower(), key)
    for mode in CALC_MODES.values():
        if mode.name.lower() == key.lower():
            return mode
    raise MergeInputError(input_name, f"unknown calc mode '{name}'.", "use one of: " + ", ".join(CALC_MODE_NAMES) + ".")


def check_calc_parameters(calc: CalcMode, alpha: float, beta: float, gamma: float,
                          alpha_input: str = "alpha") -> None:
    """extract asserts 0 <= alpha, beta <= 1 and gamma >= 0 in SuperMerger; we say so instead."""
    if calc.name != "extract":
        return
    for name, value, input_name in (("alpha", alpha, alpha_input), ("beta", beta, "beta")):
        if not 0.0 <= value <= 1.0:
            raise MergeInputError(input_name, f"is {value:g}, but extract needs 0 <= {name} <= 1.",
                                  f"set {name} between 0 and 1 (block weights included).")
    if gamma < 0:
        raise MergeInputError("gamma", f"is {gamma:g}, but extract needs gamma >= 0.", "set gamma to 0 or more.")


def resolve_modes(mode, calc: Optional[CalcMode]):
    """Apply SuperMerger's forcing (trainDifference, extract -> Add difference) and refuse
    pairings that run in SuperMerger but make no sense (e.g. smoothAdd with Weight sum)."""
    from .modes import MODES
    if calc is None:
        return mode, None
    if calc.forced_mode is not None:
        return MODES[calc.forced_mode], calc
    if mode.name not in calc.modes:
        wanted = " or ".join(MODES[m].label for m in calc.modes)
        raise MergeInputError("calcmode", f"'{calc.name}' does not work with '{mode.label}'.",
                              f"choose mode {wanted}, or calcmode normal.")
    return mode, calc
