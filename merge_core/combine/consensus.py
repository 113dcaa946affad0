"""Sparsify-then-elect methods beyond TIES and DARE: SCE (select by variance, calculate weights, erase minority signs),
DELLA without the election (della_linear) and Model Breadcrumbs with TIES' election (breadcrumbs_ties).

Each method maps (base C, models M1..Mn) of one key to a delta d; the merged key is C + alpha * d (methods.py).
Task vectors are weighted first, t_i = w_i (M_i - C), as in every weighing method of the pack.

Sign election, as in the pack's TIES: s = sign(sum_i t_i) per element, and a value agrees when sign(t_i) = s and
t_i != 0; where the sum is exactly 0 nothing agrees (d = 0). mergekit elects +1 there: the two differ only where
the task vectors cancel exactly."""
from __future__ import annotations

from typing import Sequence

import torch

from . import election, formulas
from .params import CombineMethod

Tensor = torch.Tensor


def weighted_task_vectors(base: Tensor, models: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """w_i (M_i - C), stacked as one (n, *shape) float32 tensor (the n task vectors a whole-tensor method holds)."""
    base = base.detach().float()
    out = torch.empty((len(models), *base.shape), dtype=torch.float32, device=base.device)
    for i, (model, w) in enumerate(zip(models, weights)):
        torch.sub(model.detach().float(), base, out=out[i])
        if w != 1.0:
            out[i].mul_(w)
    return out


def select_by_variance(taus: Tensor, density: float) -> None:
    """SCE's select, in place: keep, in every task vector, the elements whose variance across the models (population
    variance) is among the k largest, k = floor(density * the number of elements of nonzero variance); zero the rest.
    Elements tied with the k-th largest variance are all kept (mergekit's top-k picks among them by position)."""
    if density >= 1.0:
        return
    variance = torch.var(taus, dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(variance)) * density)
    if k == 0:
        taus.zero_()
        return
    flat = variance.reshape(-1)
    threshold = election.kth_smallest(flat.clone(), flat.numel() - k + 1)
    taus.mul_(variance >= threshold)


def mean_square_weights(taus: Tensor) -> list[float]:
    """SCE's calculate: each task vector's mean square, normalised to sum 1; uniform (1/n) when all are zero.
    mergekit falls back to uniform below a sum of 1e-6: that threshold is absolute, and a diffusion model's task
    vectors (changes of 1e-4 to 1e-3 per weight) fall below it on most keys, so here only an all-zero sum does."""
    squares = [float(t.square().mean()) for t in taus]
    total = sum(squares)
    if total == 0.0:
        return [1.0 / len(squares)] * len(squares)
    return [s / total for s in squares]


def sce(taus: Tensor, density: float) -> Tensor:
    """SCE (Wan et al., FuseChat, arXiv:2408.07990) of stacked task vectors: select by variance, weigh by mean
    square (eta_i), erase the values disagreeing with the elected sign, d = sum eta_i t_i / sum eta_i over the
    agreeing values (the divisor at least 1e-6, as mergekit). ``taus`` is modified (it is a work buffer)."""
    select_by_variance(taus, density)
    eta = mean_square_weights(taus)
    elected = torch.sign(taus.sum(dim=0))
    summed = torch.zeros_like(taus[0])
    divisor = torch.zeros_like(taus[0])
    for tau, w in zip(taus, eta):
        agree = (torch.sign(tau) == elected) & (tau != 0)
        summed.add_(torch.where(agree, tau * w, election.ZERO))
        divisor.add_(agree, alpha=w)
    return summed.div_(divisor.clamp_(min=1e-6))


def elect_sum(taus: Sequence[Tensor]) -> Tensor:
    """TIES' election with a disjoint sum: d = sum of the t_i whose sign is the elected one (mergekit's
    normalize = false)."""
    elected = torch.sign(formulas.task_arithmetic(taus, (1.0,) * len(taus)))
    out = torch.zeros_like(taus[0])
    for tau in taus:
        out.add_(torch.where((torch.sign(tau) == elected) & (tau != 0), tau, election.ZERO))
    return out


def sce_delta(base, models, params, key, fallbacks):
    taus = weighted_task_vectors(base, models, params.weights_for(len(models)))
    return sce(taus, params.density)


def della_linear_delta(base, models, params, key, fallbacks):
    base_f = base.detach().float()
    out = torch.zeros_like(base_f)
    for i, (model, w) in enumerate(zip(models, params.weights_for(len(models)))):
        tau = (model.detach().float() - base_f) * w
        out.add_(formulas.della_drop(tau, params.drop_rate, params.epsilon,
                                     formulas.model_generator(params.seed, key, i)))
    return out


def breadcrumbs_ties_delta(base, models, params, key, fallbacks):
    base_f = base.detach().float()
    masked = [formulas.breadcrumbs_mask((m.detach().float() - base_f) * w, params.top, params.bottom)
              for m, w in zip(models, params.weights_for(len(models)))]
    return elect_sum(masked)


DECLARED: tuple[CombineMethod, ...] = (
    CombineMethod("sce", "SCE", sce_delta, 2, ("weights", "density"),
                  "keep the density of elements with the largest variance over the w_i t_i; eta_i = mean(t_i^2) "
                  "normalised; elect sign(sum); d = sum eta_i t_i / sum eta_i over agreeing values",
                  reference="Wan et al., FuseChat (SCE), arXiv:2408.07990 (mergekit)"),
    CombineMethod("della_linear", "DELLA linear", della_linear_delta, 1,
                  ("weights", "drop_rate", "epsilon", "seed"),
                  "drop by magnitude rank with p_i = p +- epsilon/2 (within [0, 1)), scale kept by 1/(1-p_i); "
                  "d = sum (no election)",
                  reference="Deep et al., DELLA-Merging, arXiv:2406.11617 (mergekit)"),
    CombineMethod("breadcrumbs_ties", "Breadcrumbs-TIES", breadcrumbs_ties_delta, 2, ("weights", "top", "bottom"),
                  "drop the top and bottom fractions of each w_i t_i by magnitude; elect sign(sum); "
                  "d = sum of agreeing values",
                  reference="arXiv:2312.06795 with TIES' election, arXiv:2306.01708 (mergekit)"),
)
