"""truncate_rank: the task arithmetic sum reduced to its top singular values per matrix.

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py).
Like sd-mecha 1.1's truncate_rank, a tensor of 2 or more dimensions is viewed as a matrix of its first dimension
against the rest; 1-D keys (biases, norms) are the sum unchanged."""
from __future__ import annotations

from . import formulas, lowrank_svd
from .params import CombineMethod, MethodParams


def truncate_rank_delta(base, models, params: MethodParams, key, fallbacks):
    """d = the best rank-`rank` approximation of sum w_i t_i (randomized SVD seeded per key where the rank is small
    against the matrix, exact otherwise)."""
    total = formulas.task_sum(base, models, params.weights_for(len(models)))
    if total.dim() < 2:
        return total
    matrix = total.reshape(total.shape[0], -1)
    return lowrank_svd.truncated(matrix, params.rank, formulas.model_generator(params.seed, key, 0)).reshape(
        total.shape)


DECLARED: tuple[CombineMethod, ...] = (
    CombineMethod("truncate_rank", "Truncate rank", truncate_rank_delta, 1, ("weights", "rank", "seed"),
                  "d = sum w_i t_i truncated to its top `rank` singular values (dim 0 against the rest; "
                  "1-D keys unchanged)",
                  reference="Eckart & Young; randomized SVD: Halko et al., arXiv:0909.4061; sd-mecha truncate_rank",
                  compute_bound=True),
)
