"""Multi-model merge methods on the task vectors of one key, as small pure float32 functions.

Notation: base C, models M1..Mn, task vectors t_i = M_i - C, weights w_i (1 each by default).
Every method returns a delta d; the merged key is C + alpha * d, with alpha per block (block
weights) and per key (elemental rules) like every other method. None modifies its inputs.
Randomness (DARE, DELLA) comes from a generator per (seed, key, model index): a merge is
reproducible and independent of key order, threads and of which naming (node or CLI) the key has.
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch

from . import election

Tensor = torch.Tensor

# The key naming shared by the nodes (ComfyUI names) and the CLI (checkpoint names), for seeding.
SEED_PREFIXES = (("model.diffusion_model.", ""), ("diffusion_model.", ""),
                 ("cond_stage_model.transformer.", "clip_l."), ("conditioner.embedders.0.transformer.", "clip_l."),
                 ("clip_l.transformer.", "clip_l."))


def seed_name(key: str) -> str:
    """The key without its prefix where both namings agree on the rest (U-Net, CLIP-L); else the key."""
    for prefix, short in SEED_PREFIXES:
        if key.startswith(prefix):
            return short + key[len(prefix):]
    return key


def model_generator(seed: int, key: str, index: int) -> torch.Generator:
    """A CPU generator for model ``index`` (0-based) at ``key``, seeded from (seed, seed_name(key), index)."""
    digest = hashlib.sha256(f"{seed}:{seed_name(key)}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def task_arithmetic(taus: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """d = sum_i w_i t_i (Ilharco et al., "Editing Models with Task Arithmetic", arXiv:2212.04089)."""
    out = torch.zeros_like(taus[0])
    for tau, w in zip(taus, weights):
        out.add_(tau, alpha=w)
    return out


def subtract_(x: Tensor, y: Tensor) -> Tensor:
    """x -= y in place, chunk by chunk (x contiguous float32, y of x's shape in any float dtype): torch converts a
    y of another dtype whole before an in-place subtraction, a full-size float32 copy on the largest keys."""
    flat, other = x.view(-1), y.detach().reshape(-1)
    for s in election.chunks(flat.numel()):
        flat[s].sub_(other[s])
    return x


def task_sum(base: Tensor, models: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """sum_i w_i (M_i - C) in float32, as task_arithmetic forms it from whole float32 task vectors (the same
    operations in the same order), but chunk by chunk from the stored tensors: no float32 copy of C or of any M_i is
    held (on a 49408 x 1280 token embedding those would be n + 2 copies of 253 MB)."""
    taus = [election.TaskVector(m, base) for m in models]
    out = torch.zeros(base.shape, dtype=torch.float32, device=base.device)
    flat = out.reshape(-1)
    for s in election.chunks(flat.numel()):
        for tau, w in zip(taus, weights):
            flat[s].add_(tau.values(s), alpha=w)
    return out


def trim(tau: Tensor, density: float) -> Tensor:
    """TIES' trim: keep |x| >= the k-th smallest |x|, k = max(floor((1 - density) * numel), 1); 0 elsewhere."""
    return election.whole(trimmed([election.TaskVector(tau)], density)[0], tau.shape)


def trimmed(taus: Sequence[election.TaskVector], density: float) -> list:
    """Each task vector's trim (a threshold each; one |t| scratch buffer shared by all)."""
    scratch = torch.empty(taus[0].numel, dtype=torch.float32, device=taus[0].device)
    return [election.Trimmed(tau, density, scratch) for tau in taus]


def elect_mean(taus: Sequence[Tensor]) -> Tensor:
    """TIES' elect + disjoint mean: s = sign(sum_i t_i); d = mean of the t_i with sign(t_i) = s (0 where none)."""
    return election.elect_mean([election.TaskVector(tau) for tau in taus]).reshape(taus[0].shape)


def ties(taus: Sequence[Tensor], density: float) -> Tensor:
    """TIES-Merging (Yadav et al., arXiv:2306.01708): trim each t_i to its top-density magnitudes, elect the
    sign per element as sign(sum of trimmed t_i), d = mean of the trimmed values that agree with it."""
    return election.elect_mean(trimmed([election.TaskVector(tau) for tau in taus], density)).reshape(taus[0].shape)


def dare_drop(tau: Tensor, drop_rate: float, generator: torch.Generator) -> Tensor:
    """DARE (Yu et al., arXiv:2311.03099): drop each element with probability p, scale the kept ones by 1/(1-p).
    p = 1 drops everything (d = 0)."""
    return election.whole(election.Dropped(election.TaskVector(tau), drop_rate, generator), tau.shape)


def della_probabilities(tau: Tensor, drop_rate: float, epsilon: float) -> Tensor:
    """DELLA's MAGPRUNE drop probabilities (Deep et al., arXiv:2406.11617): ranked by magnitude over the tensor,
    r = 1..n ascending (ties by position), p_r = p + epsilon * ((n + 1)/(2n) - r/n), clamped to [0, 1]:
    larger values are dropped less, the mean stays p, the spread is epsilon."""
    n = tau.numel()
    order = torch.argsort(tau.reshape(-1).abs(), stable=True)
    rank = torch.empty(n, dtype=torch.float32, device=tau.device)
    rank[order] = torch.arange(1, n + 1, dtype=torch.float32, device=tau.device)
    p = drop_rate + epsilon * ((n + 1) / (2.0 * n) - rank / n)
    return p.clamp(0.0, 1.0).reshape(tau.shape)


def della_drop(tau: Tensor, drop_rate: float, epsilon: float, generator: torch.Generator) -> Tensor:
    """Drop element i with probability p_i (della_probabilities), scale the kept ones by 1/(1 - p_i)."""
    p = della_probabilities(tau, drop_rate, epsilon)
    draw = torch.rand(tau.shape, generator=generator, dtype=torch.float32).to(tau.device)
    keep = (draw >= p) & (p < 1.0)
    return torch.where(keep, tau / (1.0 - p).clamp_min(1e-12), torch.zeros((), dtype=tau.dtype))


def breadcrumbs_mask(tau: Tensor, top: float, bottom: float) -> Tensor:
    """Model Breadcrumbs (Davari & Belilovsky, arXiv:2312.06795): t_i without its top `top` fraction and its
    bottom `bottom` fraction by magnitude (floor(fraction * numel) elements each, ties by position)."""
    n = tau.numel()
    n_top, n_bottom = int(top * n), int(bottom * n)
    order = torch.argsort(tau.reshape(-1).abs(), stable=True)
    keep = torch.zeros(n, dtype=torch.bool, device=tau.device)
    keep[order[n_bottom:n - n_top]] = True
    return torch.where(keep.reshape(tau.shape), tau, torch.zeros((), dtype=tau.dtype))


def model_stock_ratio(taus: Sequence[Tensor], fallbacks: Optional[list] = None) -> float:
    """Model Stock (Jang et al., arXiv:2403.19522): cos = mean pairwise cosine of the flattened t_i,
    t = n cos / (1 + (n - 1) cos). A zero t_i or 1 + (n - 1) cos = 0 leaves t undefined: t = 0 (the base),
    noted in ``fallbacks``."""
    n = len(taus)
    flat = [tau.reshape(-1).double() for tau in taus]
    norms = [float(f.norm()) for f in flat]
    cosines = [float(flat[i] @ flat[j]) / (norms[i] * norms[j])
               for i in range(n) for j in range(i + 1, n) if norms[i] > 0 and norms[j] > 0]
    if len(cosines) < n * (n - 1) // 2:
        return _fallback(fallbacks, "model_stock: a task vector is zero, t = 0")
    cos = sum(cosines) / len(cosines)
    denom = 1.0 + (n - 1) * cos
    if abs(denom) < 1e-12:
        return _fallback(fallbacks, "model_stock: 1 + (n-1)cos = 0, t = 0")
    return n * cos / denom


def _fallback(fallbacks: Optional[list], why: str) -> float:
    if fallbacks is not None:
        fallbacks.append(why)
    return 0.0


def geometric_median(points: Sequence[Tensor], weights: Sequence[float], eps: float = 1e-6,
                     iterations: int = 100, ftol: float = 1e-20) -> Tensor:
    """Weiszfeld's geometric median of the points (weights w_i): start at the weighted mean m; repeat
    v_i = w_i / max(|p_i - m|, eps), m = sum v_i p_i / sum v_i, until the weighted mean distance changes by
    at most ftol of itself or after `iterations` steps (Pillutla et al., arXiv:1912.13445; model soups'
    robust aggregation)."""
    w = torch.tensor(list(weights), dtype=torch.float32)
    median = _weighted_mean(points, w)
    objective = _objective(points, median, w)
    for _ in range(max(0, int(iterations))):
        dist = torch.stack([torch.dist(p, median) for p in points])
        median = _weighted_mean(points, w / dist.clamp_min(eps))
        previous, objective = objective, _objective(points, median, w)
        if abs(previous - objective) <= ftol * objective:
            break
    return median


def _weighted_mean(points: Sequence[Tensor], w: Tensor) -> Tensor:
    """sum_i w_i p_i / sum_i w_i, summed in order in float32 (the order sd-mecha sums in: many steps near a
    data point amplify last-bit differences)."""
    out, total = points[0] * w[0], w[0].clone()
    for i in range(1, len(points)):
        out.add_(points[i] * w[i])
        total = total + w[i]
    return out / total


def _objective(points: Sequence[Tensor], median: Tensor, w: Tensor) -> float:
    return float(torch.mean(torch.stack([torch.dist(p, median) for p in points]) * w))
