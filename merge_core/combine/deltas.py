"""Each n-model method's delta d of one key, from the base C and the models M1..Mn as stored, and the merged
key C + alpha * d. The formulas themselves are in formulas.py (whole tensors) and election.py (chunk by chunk);
here each method's parameters are applied to them. A function takes (base, models, params, key, fallbacks):
key seeds the random methods (formulas.model_generator), fallbacks collects documented fallbacks."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import election, formulas
from .params import CombineMethod, MethodParams

Tensor = torch.Tensor


def _float(base: Tensor, models: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """C and M_i in float32, for the methods that work on whole tensors."""
    return base.detach().float(), [m.detach().float() for m in models]


def _taus(base: Tensor, models: Sequence[Tensor], params: MethodParams) -> list[Tensor]:
    """w_i * (M_i - C)."""
    base, models = _float(base, models)
    return [(m - base) * w for m, w in zip(models, params.weights_for(len(models)))]


def _lazy_taus(base: Tensor, models: Sequence[Tensor], params: MethodParams) -> list[election.TaskVector]:
    """w_i * (M_i - C), computed chunk by chunk when read (election.py: TIES and DARE-TIES never hold them whole)."""
    return [election.TaskVector(m, base, w) for m, w in zip(models, params.weights_for(len(models)))]


def task_arithmetic_delta(base, models, params, key, fallbacks):
    return formulas.task_sum(base, models, params.weights_for(len(models)))


def ties_delta(base, models, params, key, fallbacks):
    return election.elect_mean(formulas.trimmed(_lazy_taus(base, models, params), params.density))


def _dared(base, models, params, key):
    return [election.Dropped(t, params.drop_rate, formulas.model_generator(params.seed, key, i))
            for i, t in enumerate(_lazy_taus(base, models, params))]


def dare_delta(base, models, params, key, fallbacks):
    return formulas.task_arithmetic([election.whole(d, base.shape) for d in _dared(base, models, params, key)],
                                    (1.0,) * len(models))


def dare_ties_delta(base, models, params, key, fallbacks):
    return election.elect_mean(_dared(base, models, params, key))


def della_delta(base, models, params, key, fallbacks):
    dropped = [formulas.della_drop(t, params.drop_rate, params.epsilon,
                                   formulas.model_generator(params.seed, key, i))
               for i, t in enumerate(_taus(base, models, params))]
    return formulas.elect_mean(dropped)


def breadcrumbs_delta(base, models, params, key, fallbacks):
    return formulas.task_arithmetic([formulas.breadcrumbs_mask(t, params.top, params.bottom)
                                     for t in _taus(base, models, params)], (1.0,) * len(models))


def model_stock_delta(base, models, params, key, fallbacks):
    base, models = _float(base, models)
    taus = [m - base for m in models]
    t = formulas.model_stock_ratio(taus, fallbacks)
    return formulas.task_arithmetic(taus, (t / len(taus),) * len(taus))


def geometric_median_delta(base, models, params, key, fallbacks):
    base, models = _float(base, models)
    median = formulas.geometric_median(models, params.weights_for(len(models)), params.median_eps, params.iterations)
    return median - base


def combine_key(method: CombineMethod, params: MethodParams, key: str, alpha: float, base: Tensor,
                models: Sequence[Tensor], fallbacks: Optional[list] = None) -> Tensor:
    """C + alpha * d of one key, float32 (C's shape); inputs are not modified. The methods take C and the M_i
    as stored (fp16, ...) and convert what they need; C + alpha * d is formed in d's buffer, chunk by chunk."""
    delta = method.fn(base, models, params, key, fallbacks).reshape(-1)
    flat = base.detach().reshape(-1)
    for s in election.chunks(delta.numel()):
        torch.add(flat[s].float(), delta[s], alpha=alpha, out=delta[s])
    return delta.reshape(base.shape)
