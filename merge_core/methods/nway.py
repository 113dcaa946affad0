"""The n-model methods by name: their parameters, their checks, and one key through one of them.

Every method maps (base C, models M1..Mn) of one key to a delta d (multi.py); the merged key is
C + alpha * d. Every method is per key (it needs the whole tensor of one key of every model, and nothing
of any other key), so the nodes can compute it lazily as a weight adapter when the sampler loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..errors import MergeInputError, require_finite
from . import elect, multi

Tensor = torch.Tensor

MAX_ITERATIONS = 10_000  # geometric median's Weiszfeld steps: the node widget's maximum, checked on every path


@dataclass(frozen=True)
class MethodParams:
    """Method parameters; weights: one per model (None: 1 each)."""

    weights: Optional[tuple[float, ...]] = None
    density: float = 0.2       # TIES: fraction of each task vector kept
    drop_rate: float = 0.9     # DARE, DARE-TIES, DELLA: drop probability p
    epsilon: float = 0.1       # DELLA: spread of the drop probabilities by rank
    top: float = 0.01          # Breadcrumbs: largest fraction dropped
    bottom: float = 0.1        # Breadcrumbs: smallest fraction dropped
    seed: int = 0              # DARE, DARE-TIES, DELLA
    median_eps: float = 1e-6   # geometric median: smallest distance
    iterations: int = 100      # geometric median: Weiszfeld steps at most

    def weights_for(self, n: int) -> tuple[float, ...]:
        return self.weights if self.weights is not None else (1.0,) * n


@dataclass(frozen=True)
class CombineMethod:
    name: str
    label: str
    fn: Callable[..., Tensor]  # (base, models, params, key, fallbacks) -> delta
    min_models: int = 1
    uses: tuple[str, ...] = field(default=())  # MethodParams fields it reads (recipes, reports, checks)
    formula: str = ""


def _float(base: Tensor, models: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """C and M_i in float32, for the methods that work on whole tensors."""
    return base.detach().float(), [m.detach().float() for m in models]


def _taus(base: Tensor, models: Sequence[Tensor], params: MethodParams) -> list[Tensor]:
    """w_i * (M_i - C)."""
    base, models = _float(base, models)
    return [(m - base) * w for m, w in zip(models, params.weights_for(len(models)))]


def _lazy_taus(base: Tensor, models: Sequence[Tensor], params: MethodParams) -> list[elect.TaskVector]:
    """w_i * (M_i - C), computed chunk by chunk when read (elect.py: TIES and DARE-TIES never hold them whole)."""
    return [elect.TaskVector(m, base, w) for m, w in zip(models, params.weights_for(len(models)))]


def _task_arithmetic(base, models, params, key, fallbacks):
    base, models = _float(base, models)
    return multi.task_arithmetic([m - base for m in models], params.weights_for(len(models)))


def _ties(base, models, params, key, fallbacks):
    return elect.elect_mean(multi.trimmed(_lazy_taus(base, models, params), params.density))


def _dared(base, models, params, key):
    return [elect.Dropped(t, params.drop_rate, multi.model_generator(params.seed, key, i))
            for i, t in enumerate(_lazy_taus(base, models, params))]


def _dare(base, models, params, key, fallbacks):
    return multi.task_arithmetic([elect.whole(d, base.shape) for d in _dared(base, models, params, key)],
                                 (1.0,) * len(models))


def _dare_ties(base, models, params, key, fallbacks):
    return elect.elect_mean(_dared(base, models, params, key))


def _della(base, models, params, key, fallbacks):
    dropped = [multi.della_drop(t, params.drop_rate, params.epsilon, multi.model_generator(params.seed, key, i))
               for i, t in enumerate(_taus(base, models, params))]
    return multi.elect_mean(dropped)


def _breadcrumbs(base, models, params, key, fallbacks):
    return multi.task_arithmetic([multi.breadcrumbs_mask(t, params.top, params.bottom)
                                  for t in _taus(base, models, params)], (1.0,) * len(models))


def _model_stock(base, models, params, key, fallbacks):
    base, models = _float(base, models)
    taus = [m - base for m in models]
    t = multi.model_stock_ratio(taus, fallbacks)
    return multi.task_arithmetic(taus, (t / len(taus),) * len(taus))


def _geometric_median(base, models, params, key, fallbacks):
    base, models = _float(base, models)
    median = multi.geometric_median(models, params.weights_for(len(models)), params.median_eps, params.iterations)
    return median - base


METHODS: dict[str, CombineMethod] = {m.name: m for m in (
    CombineMethod("task_arithmetic", "Task arithmetic", _task_arithmetic, 1, ("weights",),
                  "d = sum w_i t_i"),
    CombineMethod("ties", "TIES", _ties, 2, ("weights", "density"),
                  "trim each w_i t_i to its top density; elect sign(sum); d = mean of agreeing values"),
    CombineMethod("dare", "DARE", _dare, 1, ("weights", "drop_rate", "seed"),
                  "drop each element with probability p, scale kept by 1/(1-p); d = sum"),
    CombineMethod("dare_ties", "DARE-TIES", _dare_ties, 2, ("weights", "drop_rate", "seed"),
                  "DARE each w_i t_i; elect sign(sum); d = mean of agreeing values"),
    CombineMethod("della", "DELLA", _della, 2, ("weights", "drop_rate", "epsilon", "seed"),
                  "drop by magnitude rank with p_i = p +- epsilon/2, scale kept by 1/(1-p_i); elect; mean"),
    CombineMethod("breadcrumbs", "Model Breadcrumbs", _breadcrumbs, 1, ("weights", "top", "bottom"),
                  "drop the top and bottom fractions of each w_i t_i by magnitude; d = sum"),
    CombineMethod("model_stock", "Model Stock", _model_stock, 2, (),
                  "t = n cos / (1 + (n-1) cos), cos = mean pairwise cosine; d = t * mean(t_i)"),
    CombineMethod("geometric_median", "Geometric median", _geometric_median, 2,
                  ("weights", "median_eps", "iterations"), "d = Weiszfeld median(M_i) - C"),
)}
METHOD_NAMES = list(METHODS)


def get_method(name: str, input_name: str = "method") -> CombineMethod:
    wanted = (name or "").strip().lower().replace("-", "_").replace(" ", "_")
    for method in METHODS.values():
        if wanted in (method.name, method.label.lower().replace("-", "_").replace(" ", "_")):
            return method
    raise MergeInputError(input_name, f"unknown method '{name}'.", "use one of: " + ", ".join(METHOD_NAMES) + ".")


PROBABILITIES = ("density", "drop_rate", "epsilon", "top", "bottom")


def check_params(method: CombineMethod, params: MethodParams, n_models: int, models_input: str = "models") -> None:
    """Refuse what would give a silently wrong model: too few models, a weights list of the wrong length,
    fractions or probabilities outside [0, 1], a non-positive epsilon or iteration count."""
    if n_models < method.min_models:
        raise MergeInputError(models_input, f"has {n_models} model(s), but {method.label} needs at least "
                                            f"{method.min_models}.", f"connect {method.min_models} or more models "
                                                                     "besides the base, or choose task_arithmetic.")
    if params.weights is not None:
        if "weights" not in method.uses:
            raise MergeInputError("weights", f"are given, but {method.label} does not weigh its models.",
                                  "leave weights empty for this method.")
        if len(params.weights) != n_models:
            raise MergeInputError("weights", f"has {len(params.weights)} value(s) for {n_models} models.",
                                  f"give one weight per model ({n_models}), or leave it empty for 1 each.")
        for i, w in enumerate(params.weights):
            require_finite("weights", w, "give finite numbers such as 0.5,0.5.", f"value #{i + 1} ")
    for name in PROBABILITIES:
        value = require_finite(name, getattr(params, name))
        if name in method.uses and not 0.0 <= value <= 1.0:
            raise MergeInputError(name, f"is {value:g}, but {method.label} needs a fraction in [0, 1].",
                                  f"set {name} between 0 and 1.")
    if "top" in method.uses and params.top + params.bottom > 1.0:
        raise MergeInputError("top", f"{params.top:g} + bottom {params.bottom:g} drop more than everything.",
                              "make top + bottom at most 1.")
    if "median_eps" in method.uses and not require_finite("epsilon", params.median_eps) > 0:
        raise MergeInputError("epsilon", f"is {params.median_eps:g}, but the geometric median needs epsilon > 0.",
                              "give a small positive number such as 1e-6.")
    if "iterations" in method.uses and params.iterations < 1:
        raise MergeInputError("iterations", f"is {params.iterations}.", "give 1 or more.")


def combine_key(method: CombineMethod, params: MethodParams, key: str, alpha: float, base: Tensor,
                models: Sequence[Tensor], fallbacks: Optional[list] = None) -> Tensor:
    """C + alpha * d of one key, float32 (C's shape); inputs are not modified. The methods take C and the M_i
    as stored (fp16, ...) and convert what they need; C + alpha * d is formed in d's buffer, chunk by chunk."""
    delta = method.fn(base, models, params, key, fallbacks).reshape(-1)
    flat = base.detach().reshape(-1)
    for s in elect.chunks(delta.numel()):
        torch.add(flat[s].float(), delta[s], alpha=alpha, out=delta[s])
    return delta.reshape(base.shape)
