"""The 2025 subspace methods: TSV-Merge (task singular vectors, decorrelated) and Iso-C / Iso-CTS (isotropic merging).

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py).
They work on each key as a matrix: a 2-D weight as it is, a conv weight (out, in, kh, kw) flattened to
out x (in * kh * kw). Keys of fewer dimensions (biases, norms, scalars) have no singular vectors: they take the
mean task vector, as fusion-bench does. fusion-bench merges only 2-D keys by SVD and averages 4-D conv weights;
here a conv weight is a matrix too (an SD U-Net is mostly convolutions), which is the one departure from it.

The per-key math follows fusion-bench 0.2.33 (task_singular_vector/utils/TSVM_utils.py, isotropic_merging/
iso_utils.py) step by step, in float32 with exact (thin) SVDs. A matrix much wider or taller than square (an SDXL
conv's 1280 x 23040, a 10240 x 1280 feed-forward) is first reduced by a QR of its long side and the small square
factor decomposed: the same decomposition, as accurate as LAPACK's own, about 7x faster there on CPU (svd).
A truncated or randomized SVD is not used: the spectra of task vectors fall off slowly near the cut at rank/n,
so a sketch mixes the vectors around the cut and the result leaves the reference by far more than 1e-4.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..nonfinite import all_finite
from .params import CombineMethod, MethodParams

Tensor = torch.Tensor


def _task_vectors(base: Tensor, models: Sequence[Tensor], weights: Sequence[float]) -> list[Tensor]:
    """w_i (M_i - C) in float32 (new tensors: the inputs are never touched)."""
    c = base.detach().float()
    return [(m.detach().float() - c).mul_(w) for m, w in zip(models, weights)]


def _running_mean(tensors: Sequence[Tensor]) -> Tensor:
    """The mean as fusion-bench forms it for non-matrix keys: m += (t_i - m) / i."""
    mean = tensors[0].clone()
    for i, t in enumerate(tensors[1:], start=2):
        mean += (t - mean) / i
    return mean


def _is_matrix(base: Tensor) -> bool:
    return base.dim() >= 2 and base.numel() > 0


def _as_matrix(t: Tensor) -> Tensor:
    """A 2-D view: out x rest (a conv weight's (in, kh, kw) flattened)."""
    return t.reshape(t.shape[0], -1)


def svd(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The thin SVD a = U diag(S) Vh. Where one side is over twice the other, a QR of the long side first
    (a^T = Q R for a wide a: a = R^T Q^T, and R^T's SVD gives U, S and Vh Q^T)."""
    rows, cols = a.shape
    if cols > 2 * rows:
        q, r = torch.linalg.qr(a.T)
        u, s, vh = torch.linalg.svd(r.T)
        return u, s, vh @ q.T
    if rows > 2 * cols:
        q, r = torch.linalg.qr(a)
        u, s, vh = torch.linalg.svd(r)
        return q @ u, s, vh
    return torch.linalg.svd(a, full_matrices=False)


def _undefined(taus: Sequence[Tensor], name: str, fallbacks) -> bool:
    """A NaN or inf in a task vector leaves its SVD undefined (LAPACK refuses it): the whole matrix key becomes NaN,
    the formula's own answer, which the engine reports with the input's non-finite count."""
    if all(all_finite(t) for t in taus):
        return False
    if fallbacks is not None:
        fallbacks.append(f"{name}: a non-finite input leaves the SVD undefined: the key is NaN")
    return True


def _polar(a: Tensor) -> Tensor:
    """The orthogonal polar factor P Q^T of a = P S Q^T: the nearest matrix with orthonormal columns (or rows)."""
    p, _, qh = svd(a)
    return p @ qh


def tsv_delta(base, models, params: MethodParams, key, fallbacks):
    """TSV-Merge (Gargiulo et al., arXiv:2412.00081, Sec. 4): each t_i = U_i S_i V_i^T keeps its top
    k = floor(rank / n) singular triplets; the kept U_i and V_i are concatenated and decorrelated by their polar
    factors (the nearest orthonormal sets, fusion-bench's SVD-based whitening); d = U_perp diag(S) V_perp^T.
    A matrix with rank < n (k = 0) falls back to the mean task vector (fusion-bench gives 0 there)."""
    taus = _task_vectors(base, models, params.weights_for(len(models)))
    if not _is_matrix(base):
        return _running_mean(taus)
    if _undefined(taus, "tsv", fallbacks):
        return torch.full_like(taus[0], float("nan"))
    n = len(taus)
    rank = min(_as_matrix(taus[0]).shape)
    k = int(rank * (1 / n))  # fusion-bench's sv_reduction = 1 / n
    if k == 0:
        if fallbacks is not None:
            fallbacks.append(f"tsv: rank {rank} below the {n} models (no singular vector per model): the mean "
                             "task vector")
        return _running_mean(taus)
    us, ss, vhs = [], [], []
    for tau in taus:
        u, s, vh = svd(_as_matrix(tau))
        us.append(u[:, :k])
        ss.append(s[:k])
        vhs.append(vh[:k])
        del u, s, vh
    del taus
    u_perp = _polar(torch.cat(us, dim=1))
    del us
    vh_perp = _polar(torch.cat(vhs, dim=0))
    del vhs
    return ((u_perp * torch.cat(ss)) @ vh_perp).reshape(base.shape)


def iso_c_delta(base, models, params: MethodParams, key, fallbacks):
    """Iso-C (Marczak et al., arXiv:2502.04959, Sec. 4.1): the task-arithmetic sum T = sum t_i = U S V^T with
    every singular value replaced by their mean: d = mean(S) U V^T (an isotropic spectrum)."""
    taus = _task_vectors(base, models, (1.0,) * len(models))
    total = taus[0]
    for tau in taus[1:]:
        total += tau
    del taus
    if not _is_matrix(base):
        return total / len(models)
    if _undefined([total], "iso_c", fallbacks):
        return total.fill_(float("nan"))
    u, s, vh = svd(_as_matrix(total))
    del total
    return ((u * s.mean()) @ vh).reshape(base.shape)


def common_and_task_dims(rank: int, n: int, common_fraction: float) -> tuple[int, int, bool]:
    """Iso-CTS' split of a matrix's rank, as fusion-bench makes it: the common subspace takes
    int(rank * common_fraction) dimensions, then gives up what makes the rest a multiple of n
    (round((rank - common) / n) * n, Python's round); each task gets an equal share.
    Returns (common dims, dims per task, rounded down). Where the rounding asks for more than the rank (a small
    matrix with a small common_fraction; fusion-bench fails there), the task share rounds down instead."""
    common = int(rank * common_fraction)
    per_task = round((rank - common) / n)
    rounded_down = per_task * n > rank
    if rounded_down:
        per_task = (rank - common) // n
    return rank - per_task * n, per_task, rounded_down


def iso_cts_delta(base, models, params: MethodParams, key, fallbacks):
    """Iso-CTS (Marczak et al., arXiv:2502.04959, Sec. 4.2): the common subspace is the top c singular vectors of
    T = sum t_i; each task adds the top singular vectors of its residual t_i - U_c U_c^T t_i (its part outside
    the common subspace); all are orthogonalised together (polar factors) and scaled isotropically by the mean
    of their singular values."""
    taus = _task_vectors(base, models, (1.0,) * len(models))
    if not _is_matrix(base):
        return _running_mean(taus)
    if _undefined(taus, "iso_cts", fallbacks):
        return torch.full_like(taus[0], float("nan"))
    n = len(taus)
    mats = [_as_matrix(t) for t in taus]
    rank = min(mats[0].shape)
    common, per_task, rounded_down = common_and_task_dims(rank, n, params.common_fraction)
    if rounded_down and fallbacks is not None:
        fallbacks.append(f"iso_cts: rank {rank} leaves too little beside the common subspace to round the {n} "
                         f"task shares up: {per_task} each (rounded down)")
    total = mats[0].clone()
    for m in mats[1:]:
        total += m
    u, s, vh = svd(total)
    del total
    u_common, s_common, vh_common = u[:, :common], s[:common], vh[:common]
    us, ss, vhs = [], [], []
    for m in mats:
        residual = m - u_common @ (u_common.T @ m)
        u_t, s_t, vh_t = svd(residual)
        us.append(u_t[:, :per_task])
        ss.append(s_t[:per_task])
        vhs.append(vh_t[:per_task])
        del residual, u_t, s_t, vh_t
    del taus, mats
    u_all = _polar(torch.cat([*us, u_common], dim=1))
    vh_all = _polar(torch.cat([*vhs, vh_common], dim=0))
    scale = torch.cat([*ss, s_common]).mean()
    return ((u_all * scale) @ vh_all).reshape(base.shape)


DECLARED: tuple[CombineMethod, ...] = (
    CombineMethod("tsv", "TSV-Merge", tsv_delta, 2, ("weights",),
                  "each w_i t_i keeps its top rank/n singular vectors; U, V concatenated and orthogonalised; "
                  "d = U_perp S V_perp^T",
                  reference="Gargiulo et al., Task Singular Vectors, CVPR 2025, arXiv:2412.00081 (fusion-bench)"),
    CombineMethod("iso_c", "Iso-C", iso_c_delta, 1, (),
                  "sum t_i = U S V^T; d = mean(S) U V^T (isotropic spectrum)",
                  reference="Marczak et al., No Task Left Behind, ICML 2025, arXiv:2502.04959 (fusion-bench)"),
    CombineMethod("iso_cts", "Iso-CTS", iso_cts_delta, 2, ("common_fraction",),
                  "top common_fraction of sum t_i's singular vectors + each t_i's top ones outside them; "
                  "orthogonalised; isotropic mean spectrum",
                  reference="Marczak et al., No Task Left Behind, ICML 2025, arXiv:2502.04959 (fusion-bench)"),
)
