"""The 2025 subspace methods: TSV-Merge (task singular vectors, decorrelated) and Iso-C / Iso-CTS (isotropic merging).

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py).
They work on each key as a matrix: a 2-D weight as it is, a conv weight (out, in, kh, kw) flattened to
out x (in * kh * kw). Keys of fewer dimensions (biases, norms, scalars) have no singular vectors: they take the
mean task vector, as fusion-bench does. fusion-bench merges only 2-D keys by SVD and averages 4-D conv weights;
here a conv weight is a matrix too (an SD U-Net is mostly convolutions), which is the one departure from it.

The per-key math follows fusion-bench 0.2.33 (task_singular_vector/utils/TSVM_utils.py, isotropic_merging/
iso_utils.py) step by step, in float32 with exact (thin) SVDs (lowrank_svd.py: a QR of a long side first).
A truncated or randomized SVD is not used: the spectra of task vectors fall off slowly near the cut at rank/n,
so a sketch mixes the vectors around the cut and the result leaves the reference by far more than 1e-4.

Memory: task vectors are formed one at a time from the stored tensors and reduced to what the method keeps (the top
singular vectors) before the next is formed; a sum of them is formed chunk by chunk. On SDXL's largest key (CLIP-G's
49408 x 1280 token embedding, 253 MB in float32) a method holds about three such matrices at once.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..nonfinite import all_finite
from . import election
from .formulas import task_sum
from .lowrank_svd import Factored, polar
from .params import CombineMethod, MethodParams

Tensor = torch.Tensor


def _task_vector(base: Tensor, model: Tensor, weight: float) -> Tensor:
    """w (M - C) in float32, a new tensor formed chunk by chunk from the stored ones (the inputs are never touched)."""
    return election.whole(election.TaskVector(model, base, weight), base.shape)


def _task_vectors(base: Tensor, models: Sequence[Tensor], weights: Sequence[float]) -> list[Tensor]:
    return [_task_vector(base, m, w) for m, w in zip(models, weights)]


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


def _undefined(taus: Sequence[Tensor], name: str, fallbacks) -> bool:
    """A NaN or inf in a task vector leaves its SVD undefined (LAPACK refuses it): the whole matrix key becomes NaN,
    the formula's own answer, which the engine reports with the input's non-finite count."""
    if all(all_finite(t) for t in taus):
        return False
    if fallbacks is not None:
        fallbacks.append(f"{name}: a non-finite input leaves the SVD undefined: the key is NaN")
    return True


def _nan(base: Tensor) -> Tensor:
    return torch.full(base.shape, float("nan"), dtype=torch.float32, device=base.device)


def _keep_top(factored: Factored, k: int, side_by_side_t: Tensor, start: int, ss: list[Tensor],
              vhs: list[Tensor]) -> None:
    """The top k singular triplets of a factored matrix: U^T written into rows start..start+k of the transposed
    side-by-side buffer, S and Vh appended to their lists."""
    u, s, vh = factored.top(k)
    side_by_side_t[start:start + k] = u.mT
    ss.append(s)
    vhs.append(vh)


def tsv_delta(base, models, params: MethodParams, key, fallbacks):
    """TSV-Merge (Gargiulo et al., arXiv:2412.00081, Sec. 4): each t_i = U_i S_i V_i^T keeps its top
    k = floor(rank / n) singular triplets; the kept U_i and V_i are concatenated and decorrelated by their polar
    factors (the nearest orthonormal sets, fusion-bench's SVD-based whitening); d = U_perp diag(S) V_perp^T.
    A matrix with rank < n (k = 0) falls back to the mean task vector (fusion-bench gives 0 there)."""
    weights = params.weights_for(len(models))
    if not _is_matrix(base):
        return _running_mean(_task_vectors(base, models, weights))
    n = len(models)
    rank = min(_as_matrix(base).shape)
    k = int(rank * (1 / n))  # fusion-bench's sv_reduction = 1 / n
    if k == 0:
        taus = _task_vectors(base, models, weights)
        if _undefined(taus, "tsv", fallbacks):
            return _nan(base)
        if fallbacks is not None:
            fallbacks.append(f"tsv: rank {rank} below the {n} models (no singular vector per model): the mean "
                             "task vector")
        return _running_mean(taus)
    # the U_i side by side, stored transposed so each fills its own pages (a block of columns of a row-major matrix
    # would touch every page of it at the first write)
    kept_t = torch.empty(n * k, _as_matrix(base).shape[0], dtype=torch.float32, device=base.device)
    ss: list[Tensor] = []
    vhs: list[Tensor] = []
    for i, (model, weight) in enumerate(zip(models, weights)):
        tau = _task_vector(base, model, weight)
        if _undefined([tau], "tsv", fallbacks):
            return _nan(base)
        factored = Factored(_as_matrix(tau))
        del tau  # from here only its QR factors are held
        _keep_top(factored, k, kept_t, i * k, ss, vhs)
        del factored
    factored = Factored(kept_t.mT)
    del kept_t
    u_perp = factored.polar()
    del factored
    vh_perp = polar(torch.cat(vhs, dim=0))
    del vhs
    return (u_perp.mul_(torch.cat(ss)) @ vh_perp).reshape(base.shape)


def iso_c_delta(base, models, params: MethodParams, key, fallbacks):
    """Iso-C (Marczak et al., arXiv:2502.04959, Sec. 4.1): the task-arithmetic sum T = sum t_i = U S V^T with
    every singular value replaced by their mean: d = mean(S) U V^T (an isotropic spectrum)."""
    total = task_sum(base, models, (1.0,) * len(models))
    if not _is_matrix(base):
        return total / len(models)
    if _undefined([total], "iso_c", fallbacks):
        return total.fill_(float("nan"))
    factored = Factored(_as_matrix(total))
    del total
    u, s, vh = factored.top(min(factored.rows, factored.cols))
    del factored
    return (u.mul_(s.mean()) @ vh).reshape(base.shape)


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
    n = len(models)
    if not _is_matrix(base):
        return _running_mean(_task_vectors(base, models, (1.0,) * n))
    total = task_sum(base, models, (1.0,) * n)
    if _undefined([total], "iso_cts", fallbacks):
        return total.fill_(float("nan"))
    rank = min(_as_matrix(total).shape)
    common, per_task, rounded_down = common_and_task_dims(rank, n, params.common_fraction)
    if rounded_down and fallbacks is not None:
        fallbacks.append(f"iso_cts: rank {rank} leaves too little beside the common subspace to round the {n} "
                         f"task shares up: {per_task} each (rounded down)")
    factored = Factored(_as_matrix(total))
    del total
    u_common, s_common, vh_common = factored.top(common)
    del factored
    # every U side by side, the tasks' first and the common subspace's last, filled in place (no list beside it),
    # stored transposed so each fills its own pages
    all_t = torch.empty(n * per_task + common, u_common.shape[0], dtype=torch.float32, device=base.device)
    all_t[n * per_task:] = u_common.mT
    del u_common
    u_common = all_t[n * per_task:].mT
    ss: list[Tensor] = []
    vhs: list[Tensor] = []
    for i, model in enumerate(models):
        tau = _task_vector(base, model, 1.0)
        if _undefined([tau], "iso_cts", fallbacks):
            return _nan(base)
        residual = _as_matrix(tau)
        coefficients = u_common.T @ residual
        for rows in _row_chunks(residual):  # residual -= U_c (U_c^T t_i), a block of rows at a time
            residual[rows] -= u_common[rows] @ coefficients
        del coefficients
        factored = Factored(residual)
        del tau, residual
        _keep_top(factored, per_task, all_t, i * per_task, ss, vhs)
        del factored
    del u_common
    factored = Factored(all_t.mT)
    del all_t
    u_all = factored.polar()
    del factored
    vh_all = polar(torch.cat([*vhs, vh_common], dim=0))
    scale = torch.cat([*ss, s_common]).mean()
    return (u_all.mul_(scale) @ vh_all).reshape(base.shape)


ROW_CHUNK_BYTES = 16 << 20  # a block of rows of the residual's projection: 16 MiB of float32


def _row_chunks(matrix: Tensor) -> list[slice]:
    rows, cols = matrix.shape
    step = max(1, ROW_CHUNK_BYTES // (4 * max(cols, 1)))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


DECLARED: tuple[CombineMethod, ...] = (
    CombineMethod("tsv", "TSV-Merge", tsv_delta, 2, ("weights",),
                  "each w_i t_i keeps its top rank/n singular vectors; U, V concatenated and orthogonalised; "
                  "d = U_perp S V_perp^T",
                  reference="Gargiulo et al., Task Singular Vectors, CVPR 2025, arXiv:2412.00081 (fusion-bench)",
                  compute_bound=True),
    CombineMethod("iso_c", "Iso-C", iso_c_delta, 1, (),
                  "sum t_i = U S V^T; d = mean(S) U V^T (isotropic spectrum)",
                  reference="Marczak et al., No Task Left Behind, ICML 2025, arXiv:2502.04959 (fusion-bench)",
                  compute_bound=True),
    CombineMethod("iso_cts", "Iso-CTS", iso_cts_delta, 2, ("common_fraction",),
                  "top common_fraction of sum t_i's singular vectors + each t_i's top ones outside them; "
                  "orthogonalised; isotropic mean spectrum",
                  reference="Marczak et al., No Task Left Behind, ICML 2025, arXiv:2502.04959 (fusion-bench)",
                  compute_bound=True),
)
