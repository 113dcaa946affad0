"""The n-model method table: each method's name, label, formula, the parameters it reads, and their checks.

Every method maps (base C, models M1..Mn) of one key to a delta d (deltas.py); the merged key is
C + alpha * d. Every method is per key (it needs the whole tensor of one key of every model, and nothing
of any other key), so the nodes can compute it lazily as a weight adapter when the sampler loads.

Each parameter's domain, refused before any tensor is read (check_params), and why:
- weights: finite, within +-1000 (settings.parse_weights). Every method but the geometric median scales each task
  vector by its weight and sums or averages them over a count, never over the weights: a negative weight subtracts
  that task vector (task arithmetic's "negation"; under TIES/DARE-TIES/DELLA the negated vector then votes with its
  flipped sign), and weights summing to 0 are well defined. The geometric median is a weighted mean
  sum w_i p_i / sum w_i inside Weiszfeld's steps, with step weights w_i / |p_i - m|: it is a median only for
  w_i >= 0 with sum > 0 (a zero sum is 0/0, an all-NaN model; 1,-0.999 divides by 0.001 and scales the model by
  1000), so it refuses any negative weight and an all-zero list.
- density, drop_rate, top, bottom, epsilon: fractions in [0, 1]; breadcrumbs' top + bottom <= 1. density 0 is
  refused too: it would keep nothing (SCE: the base) or, through TIES' k = max(floor(n), 1), only each model's
  largest value — never what a user asks for.
- DELLA: every rank's drop probability p_r lies in (drop_rate - epsilon/2, drop_rate + epsilon/2), and a kept value
  is scaled by 1/(1 - p_r): drop_rate - epsilon/2 >= 0 and drop_rate + epsilon/2 < 1 (outside, the probabilities
  were clamped to [0, 1] and kept values scaled by up to 1/(1 - p) with p near 1: 180x at 0.9/0.25).
- DARE's drop_rate p may be 1 (everything dropped, d = 0); below 1 the kept values are scaled by 1/(1 - p) as the
  paper's formula says, so p = 0.999999 scales them by 1e6: large finite values are the formula's, and a result
  that leaves the output's range stops the merge with an error naming the key and the method (engine/nmodel.py,
  nonfinite.check_result).
- iterations: 1 to MAX_ITERATIONS (each Weiszfeld step is a pass over every model: a larger count only holds up
  the merge, or the server). median_eps: > 0.
- every other parameter: its row's domain in params.PARAMETERS; what a row cannot say (a combination of values,
  a model count), the method's own check.

The table is assembled from one module per family of methods (each exports DECLARED): this module's classic
methods, and interpolation.py, consensus.py, elementwise.py, frequency.py, procrustes.py, truncation.py,
subspace.py and widen.py.
"""
from __future__ import annotations

from typing import Sequence

from ..errors import MergeInputError, require_finite
from . import consensus, deltas, elementwise, frequency, interpolation, procrustes, subspace, truncation, widen
from .params import PARAMETER_BY_FIELD, PARAMETERS, CombineMethod, MethodParams

MAX_ITERATIONS = int(PARAMETER_BY_FIELD["iterations"].high or 0)  # steps of the iterative methods, on every path


CLASSIC: tuple[CombineMethod, ...] = (
    CombineMethod("task_arithmetic", "Task arithmetic", deltas.task_arithmetic_delta, 1, ("weights",),
                  "d = sum w_i t_i",
                  reference="Ilharco et al., Editing Models with Task Arithmetic, arXiv:2212.04089 (mergekit, "
                            "sd-mecha)"),
    CombineMethod("ties", "TIES", deltas.ties_delta, 2, ("weights", "density"),
                  "trim each w_i t_i to its top density; elect sign(sum); d = mean of agreeing values",
                  reference="Yadav et al., TIES-Merging, arXiv:2306.01708 (mergekit, sd-mecha)"),
    CombineMethod("dare", "DARE", deltas.dare_delta, 1, ("weights", "drop_rate", "seed"),
                  "drop each element with probability p, scale kept by 1/(1-p) (p = 1: d = 0); d = sum",
                  reference="Yu et al., Language Models are Super Mario (DARE), arXiv:2311.03099 (mergekit, "
                            "sd-mecha)"),
    CombineMethod("dare_ties", "DARE-TIES", deltas.dare_ties_delta, 2, ("weights", "drop_rate", "seed"),
                  "DARE each w_i t_i; elect sign(sum); d = mean of agreeing values",
                  reference="arXiv:2311.03099 with arXiv:2306.01708 (mergekit, sd-mecha)"),
    CombineMethod("della", "DELLA", deltas.della_delta, 2, ("weights", "drop_rate", "epsilon", "seed"),
                  "drop by magnitude rank with p_i = p +- epsilon/2 (within [0, 1)), scale kept by 1/(1-p_i); "
                  "elect; mean", reference="Deep et al., DELLA-Merging, arXiv:2406.11617 (mergekit)"),
    CombineMethod("breadcrumbs", "Model Breadcrumbs", deltas.breadcrumbs_delta, 1, ("weights", "top", "bottom"),
                  "drop the top and bottom fractions of each w_i t_i by magnitude; d = sum",
                  reference="Davari & Belilovsky, Model Breadcrumbs, arXiv:2312.06795 (mergekit)"),
    CombineMethod("model_stock", "Model Stock", deltas.model_stock_delta, 2, (),
                  "t = n cos / (1 + (n-1) cos), cos = mean pairwise cosine; d = t * mean(t_i)",
                  reference="Jang et al., Model Stock, arXiv:2403.19522 (mergekit, sd-mecha)"),
    CombineMethod("geometric_median", "Geometric median", deltas.geometric_median_delta, 2,
                  ("weights", "median_eps", "iterations"),
                  "d = Weiszfeld median(M_i) - C (weights >= 0 with a positive sum)",
                  reference="Pillutla et al., Robust Aggregation for Federated Learning, arXiv:1912.13445 "
                            "(sd-mecha)"),
)
METHODS: dict[str, CombineMethod] = {m.name: m for m in (
    *CLASSIC, *consensus.DECLARED, *interpolation.DECLARED, *elementwise.DECLARED, *frequency.DECLARED,
    *procrustes.DECLARED, *truncation.DECLARED, *subspace.DECLARED, *widen.DECLARED)}
METHOD_NAMES = list(METHODS)


def get_method(name: str, input_name: str = "method") -> CombineMethod:
    wanted = (name or "").strip().lower().replace("-", "_").replace(" ", "_")
    for method in METHODS.values():
        if wanted in (method.name, method.label.lower().replace("-", "_").replace(" ", "_")):
            return method
    raise MergeInputError(input_name, f"unknown method '{name}'.", "use one of: " + ", ".join(METHOD_NAMES) + ".")


PROBABILITIES = ("density", "drop_rate", "epsilon", "top", "bottom")
# Checked by their rows (the others keep their own messages below).
ROW_CHECKED = tuple(p for p in PARAMETERS if p.late and p.field != "median_eps")


def check_params(method: CombineMethod, params: MethodParams, n_models: int, models_input: str = "models") -> None:
    """Refuse what would give a silently wrong model, before any tensor is read: too few models, a weights list of
    the wrong length, weights the method cannot normalise by, fractions or probabilities outside [0, 1], DELLA's
    probabilities leaving [0, 1), a non-positive epsilon, an iteration count outside 1..MAX_ITERATIONS (the
    module docstring says why each)."""
    if n_models < method.min_models:
        raise MergeInputError(models_input, f"has {n_models} model(s), but {method.label} needs at least "
                                            f"{method.min_models}.", f"connect {method.min_models} or more models "
                                                                     "besides the base, or choose task_arithmetic.")
    if method.max_models is not None and n_models > method.max_models:
        exactly = "exactly" if method.max_models == method.min_models else "at most"
        raise MergeInputError(models_input, f"has {n_models} models, but {method.label} takes {exactly} "
                                            f"{method.max_models} besides the base.",
                              f"connect {method.max_models} model(s) besides the base, or choose a method for more.")
    if params.weights is not None:
        if "weights" not in method.uses:
            raise MergeInputError("weights", f"are given, but {method.label} does not weigh its models.",
                                  "leave weights empty for this method.")
        if len(params.weights) != n_models:
            raise MergeInputError("weights", f"has {len(params.weights)} value(s) for {n_models} models.",
                                  f"give one weight per model ({n_models}), or leave it empty for 1 each.")
        for i, w in enumerate(params.weights):
            require_finite("weights", w, "give finite numbers such as 0.5,0.5.", f"value #{i + 1} ")
        if method.name in NORMALISED:
            _check_normalised(method, params.weights)
    for name in PROBABILITIES:
        value = require_finite(name, getattr(params, name))
        if name in method.uses and not 0.0 <= value <= 1.0:
            raise MergeInputError(name, f"is {value:g}, but {method.label} needs a fraction in [0, 1].",
                                  f"set {name} between 0 and 1.")
    if "density" in method.uses and params.density == 0.0:
        raise MergeInputError("density", f"is 0, but {method.label} needs a fraction in (0, 1]: density 0 keeps "
                                         "nothing of any model (the base, or only each model's largest value).",
                              "set density above 0 (0.2 keeps the largest fifth), or leave the models out.")
    if "top" in method.uses and params.top + params.bottom > 1.0:
        raise MergeInputError("top", f"{params.top:g} + bottom {params.bottom:g} drop more than everything.",
                              "make top + bottom at most 1.")
    if "epsilon" in method.uses:
        low, high = params.drop_rate - params.epsilon / 2, params.drop_rate + params.epsilon / 2
        if low < 0.0 or high >= 1.0:
            raise MergeInputError(
                "drop_rate", f"{params.drop_rate:g} with epsilon {params.epsilon:g} gives {method.label} drop "
                f"probabilities from {low:g} to {high:g}, outside [0, 1) (kept values are scaled by 1/(1 - p)).",
                "choose drop_rate and epsilon with drop_rate - epsilon/2 >= 0 and drop_rate + epsilon/2 < 1, "
                "e.g. 0.9 and 0.1.")
    if "median_eps" in method.uses and not require_finite("epsilon", params.median_eps) > 0:
        raise MergeInputError("epsilon", f"is {params.median_eps:g}, but the geometric median needs epsilon > 0.",
                              "give a small positive number such as 1e-6.")
    if "iterations" in method.uses and not 1 <= params.iterations <= MAX_ITERATIONS:
        raise MergeInputError("iterations", f"is {params.iterations}, outside 1 to {MAX_ITERATIONS}.",
                              f"give 1 to {MAX_ITERATIONS} (100 is plenty: Weiszfeld stops once it converges).")
    for row in ROW_CHECKED:
        value = getattr(params, row.field)
        if not row.choices:
            require_finite(row.name, value)
        if row.field in method.uses and not row.accepts(value):
            shown = value if row.choices else f"{value:g}"
            raise MergeInputError(row.name, f"is {shown}, but {method.label} needs {row.domain()}.",
                                  f"set {row.name} to {row.domain()} (default {row.default}).")
    if method.check is not None:
        method.check(params, n_models)


# Methods that divide by the sum of the weights (a weighted mean): every weight >= 0, their sum > 0.
NORMALISED = ("geometric_median",)


def _check_normalised(method: CombineMethod, weights: Sequence[float]) -> None:
    negative = [i for i, w in enumerate(weights) if w < 0]
    if negative:
        raise MergeInputError("weights", f"value #{negative[0] + 1} is {weights[negative[0]]:g}, but "
                              f"{method.label} is a weighted mean (sum w_i M_i / sum w_i): a negative weight makes "
                              "it no median and a sum near 0 scales the model without bound.",
                              "give weights >= 0 with a positive sum (e.g. 1,1), or use task_arithmetic to "
                              "subtract a model.")
    if not sum(weights) > 0:
        raise MergeInputError("weights", f"are all 0, but {method.label} divides by their sum.",
                              "give weights >= 0 with a positive sum (e.g. 1,1).")
