"""LoRA math on plain tensors: a module's delta, low-rank decomposition, and the merge rules
(docs/lora.md#merging-loras and the sections after it).

A LoRA module is up (out, r[, 1, 1]) and down (r, in[, kh, kw]) with ``alpha``;
its delta at strength 1 is (alpha / r) * up @ down (conv: over the flattened
kernel). Decomposition keeps the top singular triplets: up = U_r diag(S_r),
down = Vh_r, alpha = rank, so the stored scale is 1 and any reader agrees.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import MergeInputError
from ..methods.calcmodes import KeyContext, extract
from ..threads import compute_threads, torch_threads

SVD_METHODS = ("full", "randomized")


@dataclass
class LoraModule:
    """One module of a plain LoRA/LoCon file (other LyCORIS types are rejected before this)."""

    up: Tensor
    down: Tensor
    alpha: Optional[float] = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def delta(self) -> Tensor:
        """The module's weight delta at strength 1, float32, in the target weight's shape."""
        up, down = self.up.float(), self.down.float()
        flat = (up.flatten(1) @ down.flatten(1)) * self.scale
        if down.dim() == 4:
            return flat.reshape(up.shape[0], *down.shape[1:])
        return flat


@dataclass
class Decomposition:
    up: Tensor
    down: Tensor
    rank: int
    rel_error: float  # ||delta - up @ down||_F / ||delta||_F, after any clamp
    clamped_rank: bool = False
    norm: float = 0.0  # ||delta||_F


def max_rank(shape: tuple[int, ...]) -> int:
    return min(shape[0], math.prod(shape[1:]))


def decompose(delta: Tensor, rank: int, method: str = "full", clamp_quantile: Optional[float] = None,
              niter: int = 4, oversample: int = 8, generator_seed: int = 0) -> Decomposition:
    """Rank-``rank`` factors of ``delta`` (2-D, or 4-D conv flattened over in x kh x kw).

    full: ``torch.linalg.svd`` (exact truncation). randomized: ``torch.svd_lowrank``
    with ``niter`` power iterations (4: within about 0.2% of the
    full-SVD error on decaying spectra, measured in bench/bench_lora.py) and ``oversample`` extra columns
    (Halko et al.);
    its error is measured and returned, never assumed. ``clamp_quantile`` (e.g. 0.99)
    clips both factors to +-the quantile of their joint values, as kohya and
    ComfyUI's LoraSave do; off by default because it adds error.
    Compute-bound: torch uses the cores idle when the call starts (threads.py).
    """
    with torch_threads(compute_threads()):
        return _decompose(delta, rank, method, clamp_quantile, niter, oversample, generator_seed)


def _decompose(delta, rank, method, clamp_quantile, niter, oversample, generator_seed) -> Decomposition:
    shape = tuple(delta.shape)
    mat = delta.float().reshape(shape[0], -1)
    limit = max_rank(shape)
    r = max(1, min(rank, limit))
    if method == "full" or r + oversample >= min(mat.shape):
        if mat.shape[1] > mat.shape[0]:  # LAPACK is several times faster on the tall orientation
            v, s, uh = torch.linalg.svd(mat.T.contiguous(), full_matrices=False)
            up, down = uh[:r].T * s[:r], v[:, :r].T
        else:
            u, s, vh = torch.linalg.svd(mat, full_matrices=False)
            up, down = u[:, :r] * s[:r], vh[:r]
    elif method == "randomized":
        state = torch.random.get_rng_state()
        torch.manual_seed(generator_seed)  # svd_lowrank draws its test matrix from the global generator
        try:
            u, s, v = torch.svd_lowrank(mat, q=r + oversample, niter=niter)
        finally:
            torch.random.set_rng_state(state)
        up, down = u[:, :r] * s[:r], v[:, :r].T
    else:
        raise MergeInputError("svd", f"'{method}' is not an SVD method.", "use 'full' or 'randomized'.")
    if clamp_quantile:
        joint = torch.cat([up.flatten(), down.flatten()])
        if joint.numel() > 16_000_000:  # torch.quantile's input limit
            joint = joint[torch.randperm(joint.numel(), generator=torch.Generator().manual_seed(0))[:16_000_000]]
        hi = torch.quantile(joint, clamp_quantile)
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    norm = torch.linalg.matrix_norm(mat)
    err = float(torch.linalg.matrix_norm(mat - up @ down) / norm) if norm > 0 else 0.0
    if len(shape) == 4:
        up, down = up.reshape(shape[0], r, 1, 1), down.reshape(r, *shape[1:])
    return Decomposition(up.contiguous(), down.contiguous(), r, err, clamped_rank=r < rank, norm=float(norm))


def strength_factors(ratio: float, same_to_strength: bool) -> tuple[float, float]:
    """(up factor, down factor) for applying ``ratio`` to both factors of a LoRA.

    kohya's merge scales both by ratio, so a LoRA's effective strength is ratio**2
    and the sign is lost; ``same_to_strength`` uses sqrt|ratio| on both and negates
    down for a negative ratio, so the effective strength is ratio (linear).
    """
    if same_to_strength:
        root = math.sqrt(abs(ratio))
        return root, (root if ratio >= 0 else -root)
    return ratio, ratio


def scaled_factors(m: LoraModule, ratio: float, s: float, same_to_strength: bool) -> tuple[Tensor, Tensor]:
    """(up, down) in float32, both times ``s`` and the strength factors of ``ratio``."""
    fu, fd = strength_factors(ratio, same_to_strength)
    return m.up.float() * (s * fu), m.down.float() * (s * fd)


def exact_merge(modules: list[tuple[LoraModule, float]], rank: int, method: str = "full",
                clamp_quantile: Optional[float] = None) -> Decomposition:
    """sum_i r_i * delta_i, re-decomposed to ``rank`` (linear in r_i; docs/lora.md#merging-loras (the exact merge)
    with its bug fixed)."""
    total = None
    for module, ratio in modules:
        d = module.delta() * ratio
        if total is not None and total.shape != d.shape:
            raise MergeInputError("lora_list", f"a module has shape {tuple(d.shape)} in one LoRA and "
                                  f"{tuple(total.shape)} in another.",
                                  "merge LoRAs made for the same base model.")
        total = d if total is None else total + d
    assert total is not None, "exact_merge of no modules"
    return decompose(total, rank, method, clamp_quantile)


def naive_merge(modules: list[tuple[LoraModule, float]], same_to_strength: bool) -> LoraModule:
    """kohya's merge: ups summed with ups and downs with downs, each scaled by sqrt(alpha_i/alpha_0)
    and the strength factors; alpha = the first LoRA's. Exact for one LoRA, cross terms for several."""
    base_alpha = None
    up_sum = down_sum = None
    for module, ratio in modules:
        alpha = module.alpha if module.alpha is not None else float(module.rank)
        base_alpha = alpha if base_alpha is None else base_alpha
        up, down = scaled_factors(module, ratio, math.sqrt(alpha / base_alpha), same_to_strength)
        if up_sum is not None and down_sum is not None and (up.shape != up_sum.shape or down.shape != down_sum.shape):
            raise MergeInputError("lora_list", f"the naive merge needs equal ranks, got {down.shape[0]} and "
                                  f"{down_sum.shape[0]}.", "use the exact (SVD) merge for LoRAs of different ranks.")
        up_sum = up if up_sum is None else up_sum + up
        down_sum = down if down_sum is None else down_sum + down
    assert up_sum is not None and down_sum is not None, "naive_merge of no modules"
    return LoraModule(up_sum, down_sum, base_alpha)


def extract_two(t1: Tensor, t2: Tensor, alpha: float, beta: float, gamma: float) -> Tensor:
    """docs/lora.md#extracting-from-two-loras: SuperMerger's extract with base 0 on one tensor of each LoRA:
    lerp(a, b, alpha) * lerp(d, 1-d, beta), d = ((cos_lastdim(a, b) + 1)/2)^gamma."""
    a, b = t1.float(), t2.float()
    return extract(torch.zeros_like(a), a, b, KeyContext("", alpha, beta, gamma))
