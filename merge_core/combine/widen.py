"""WIDEN: weight disentanglement into magnitude and direction per column, merged by importance.

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py).

WIDEN (Yu et al., "Extend Model Merging from Fine-Tuned to Pre-Trained Large Language Models via Weight
Disentanglement", arXiv:2408.03092, Sec. 3 and Algorithm 1; the authors' code, MergeLLM's WidenMerging) weighs
each model per column of a weight matrix by how far that column moved from the base, in length (magnitude) and in
angle (direction), ranked within the model. The per-key steps follow the authors' code:

1. A weight W (out x in; a conv weight flattened to out x (in * kh * kw); an embedding table transposed, so each
   token's vector is a column, as the authors transpose nn.Embedding) is split per column j into the magnitude
   m_j = |W[:, j]| and the direction W[:, j] / m_j.
2. Divergences from the base: dm_ij = |m_ij - m_Cj|, dD_ij = 1 - cos(W_i[:, j], C[:, j]).
3. Each is ranked over the columns within model i (ascending, ties by position): r_ij = rank / columns.
4. Importance scores: the softmax over the models of r_ij, but s (calibration) where r_ij > t * mean_j(r_ij)
   (threshold t: the important columns).
5. d = sum_i t_i * (score_mag + score_dir) / 2, per column.

Keys of one dimension (biases, norms) and scalars have no columns: their scores come from |M_i - C| itself per
element (step 4 on the raw differences, no ranking), as in the authors' code.

Numerics: the divergences are formed without cancellation, |m_i - m_C| = |t_i . (M_i + C)| / (m_i + m_C) and
1 - cos = |W_i/m_i - C/m_C|^2 / 2, because fine-tuned columns sit very near the base's (1 - cos ~ 1e-6) and the
plain formulas in float32 would rank rounding noise. A zero column (in the base or a model) has no direction:
its cosine is taken as 0 (torch.cosine_similarity's value), noted as a fallback.
"""
from __future__ import annotations

import torch

from .params import CombineMethod, MethodParams

Tensor = torch.Tensor

# Modules whose weight is an embedding table (tokens x features): the authors transpose nn.Embedding so that
# each token's vector is a column.
EMBEDDING_NAMES = ("token_embedding", "position_embedding", "embed_tokens", "embed_positions")


def is_embedding(key: str) -> bool:
    module = key[:-len(".weight")] if key.endswith(".weight") else key
    return module.rsplit(".", 1)[-1] in EMBEDDING_NAMES


def importance_scores(significance: Tensor, threshold: float, calibration: float) -> Tensor:
    """(n models, columns) -> scores: softmax over the models; `calibration` where a model's significance exceeds
    `threshold` times its mean over the columns."""
    scores = torch.softmax(significance, dim=0)
    important = significance > significance.mean(dim=1, keepdim=True) * threshold
    return torch.where(important, torch.full_like(scores, calibration), scores)


def rank_significance(divergence: Tensor) -> Tensor:
    """(n models, columns) -> each value's ascending rank within its row (stable: ties by position) / columns."""
    n, cols = divergence.shape
    order = torch.argsort(divergence, dim=1, stable=True)
    ranks = torch.arange(cols, dtype=torch.float32).div_(cols).expand(n, cols)
    return torch.empty_like(divergence).scatter_(1, order, ranks)


def _columns(t: Tensor, key: str) -> Tensor:
    """The 2-D view whose columns are disentangled (out x rest; an embedding table transposed)."""
    if t.dim() == 2 and is_embedding(key):
        return t.T
    return t.reshape(t.shape[0], -1)


def _unit_columns(w: Tensor, norm: Tensor) -> Tensor:
    """w / |w| per column; a zero column stays 0."""
    return w / torch.where(norm > 0, norm, torch.ones_like(norm))


def divergences(base: Tensor, model: Tensor, fallbacks=None) -> tuple[Tensor, Tensor]:
    """Per column of the 2-D views: (|m_model - m_base|, 1 - cos(model column, base column))."""
    norm_c = torch.linalg.vector_norm(base, dim=0)
    norm_m = torch.linalg.vector_norm(model, dim=0)
    tau = model - base
    both = norm_m + norm_c
    magnitude = (tau * (model + base)).sum(dim=0).abs() / torch.where(both > 0, both, torch.ones_like(both))
    del tau
    apart = _unit_columns(model, norm_m) - _unit_columns(base, norm_c)
    direction = torch.linalg.vector_norm(apart, dim=0).square_().mul_(0.5)
    zero = (norm_c == 0) | (norm_m == 0)
    if bool(zero.any()):
        direction = torch.where(zero, torch.ones_like(direction), direction)
        if fallbacks is not None:
            fallbacks.append("widen: a zero column has no direction: its cosine is taken as 0")
    return magnitude, direction


def widen_delta(base, models, params: MethodParams, key, fallbacks):
    c = base.detach().float()
    ms = [m.detach().float() for m in models]
    t, s = params.threshold, params.calibration
    if c.dim() < 2 or c.numel() == 0:
        taus = [(m - c) for m in ms]
        scores = importance_scores(torch.stack([tau.reshape(-1).abs() for tau in taus]), t, s)
        out = torch.zeros_like(c)
        for tau, score in zip(taus, scores):
            out += tau * score.reshape(c.shape)
        return out
    c2 = _columns(c, key)
    pairs = [divergences(c2, _columns(m, key), fallbacks) for m in ms]
    weights = 0.5 * (importance_scores(rank_significance(torch.stack([p[0] for p in pairs])), t, s)
                     + importance_scores(rank_significance(torch.stack([p[1] for p in pairs])), t, s))
    out = torch.zeros_like(c)
    out2 = _columns(out, key)
    for m, w in zip(ms, weights):
        out2 += (_columns(m, key) - c2) * w
    return out


DECLARED: tuple[CombineMethod, ...] = (
    CombineMethod("widen", "WIDEN", widen_delta, 2, ("threshold", "calibration"),
                  "per column: rank |dm| and 1-cos of each M_i vs C; scores = softmax over models, s where rank > "
                  "t * mean; d = sum t_i (score_m + score_D)/2",
                  reference="Yu et al., WIDEN, arXiv:2408.03092 (MergeLLM)"),
)
