"""The types every part of n-model combine speaks: a method's parameters (MethodParams), each parameter's
declaration (PARAMETERS: its input name, CLI flag, kind, domain and help, read by the nodes, the CLI, recipes,
history and the checks), and a method's entry in the table (CombineMethod). Kept apart from the table so the
per-key math can name them without importing it.

A new method parameter is one field of MethodParams (its default) and one Parameter row: every surface
(node widget, CLI option, recipe key, replay, range check) follows from the row."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Optional, Union

import torch

Number = Union[int, float]


@dataclass(frozen=True)
class MethodParams:
    """Method parameters; weights: one per model (None: 1 each)."""

    weights: Optional[tuple[float, ...]] = None
    density: float = 0.2       # TIES, SCE: fraction of each task vector kept
    drop_rate: float = 0.9     # DARE, DARE-TIES, DELLA: drop probability p
    epsilon: float = 0.1       # DELLA: spread of the drop probabilities by rank
    top: float = 0.01          # Breadcrumbs: largest fraction dropped
    bottom: float = 0.1        # Breadcrumbs: smallest fraction dropped
    seed: int = 0              # DARE, DARE-TIES, DELLA, randomized SVD
    median_eps: float = 1e-6   # geometric median: smallest distance
    iterations: int = 100      # geometric median, Karcher mean: steps at most
    tolerance: float = 1e-5    # Karcher mean: stop when a step moves less
    slerp_axis: str = "whole"  # NuSLERP: which vectors are interpolated
    similarity_threshold: float = 1e-3  # NearSwap: |A - B| below which B is taken
    alignment: float = 1.0     # rotate: fraction of the orthogonal transform applied
    mix: float = 0.5           # crossover, geometric sum: share of model 1
    tilt: float = 0.0          # crossover: tilt of the frequency cut
    stiffness: float = 0.0     # clamp: pull of the bounds toward their mean
    rank: int = 64             # truncate rank: singular values kept
    threshold: float = 1.0     # WIDEN: importance threshold t
    calibration: float = 1.0   # WIDEN: score calibration s
    common_fraction: float = 0.8  # Iso-CTS: share of the rank given to the common subspace

    def weights_for(self, n: int) -> tuple[float, ...]:
        return self.weights if self.weights is not None else (1.0,) * n


def default(name: str):
    """A MethodParams field's default."""
    return next(f.default for f in fields(MethodParams) if f.name == name)


@dataclass(frozen=True)
class Parameter:
    """One method parameter as every surface shows it. low/high bound the value (None: any finite value; open:
    the bound itself is refused); choices: the values of a choice; late: a widget added after the node's first
    release, placed after the block-weight inputs so saved workflows (widget values by position) still load."""

    field: str
    help: str
    kind: type = float
    low: Optional[Number] = 0.0
    high: Optional[Number] = 1.0
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    input: str = ""            # node input and recipe key (default: the field's name)
    flag: str = ""             # CLI option (default: --field-name)
    step: float = 0.01
    late: bool = True
    widget_low: Optional[Number] = None  # the node widget's minimum where it differs from low (an open bound)

    @property
    def name(self) -> str:
        return self.input or self.field

    @property
    def option(self) -> str:
        return self.flag or "--" + self.field.replace("_", "-")

    @property
    def default(self):
        return default(self.field)

    def domain(self) -> str:
        """The accepted values, in words (for errors and help)."""
        return _domain(self)

    def accepts(self, value) -> bool:
        if self.choices:
            return value in self.choices
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return not (self.high is not None and (value > self.high or self.high_open and value == self.high))


def _domain(row: "Parameter") -> str:
    """A row's accepted values in words: "[0, 1]", "(0, 1]", ">= 0", "one of ..." (whole numbers as such)."""
    def shown(bound) -> str:
        return f"{bound:,}" if row.kind is int else f"{bound:g}"
    if row.choices:
        return "one of " + ", ".join(row.choices)
    if row.low is None and row.high is None:
        return "any finite number"
    if row.high is None:
        return f"{'>' if row.low_open else '>='} {shown(row.low)}"
    if row.low is None:
        return f"{'<' if row.high_open else '<='} {shown(row.high)}"
    return f"{'(' if row.low_open else '['}{shown(row.low)}, {shown(row.high)}{')' if row.high_open else ']'}"


# Widget order of the Combine nodes: the first seven come before the block-weight inputs (their places in saved
# workflows), the rest after them, in this order.
PARAMETERS: tuple[Parameter, ...] = (
    Parameter("density", "fraction of each task vector kept", low=0.0, low_open=True, late=False, widget_low=0.0),
    Parameter("drop_rate", "probability p of dropping each element (kept ones x 1/(1-p))", late=False),
    Parameter("epsilon", "spread of the drop probability by magnitude rank (p +- epsilon/2, within [0, 1))",
              late=False),
    Parameter("top", "largest-magnitude fraction of each task vector dropped", late=False),
    Parameter("bottom", "smallest-magnitude fraction of each task vector dropped", late=False),
    Parameter("iterations", "steps at most", kind=int, low=1, high=10_000, late=False),
    Parameter("seed", "seed of the random draws; they depend on (seed, key, model), as in the CLI", kind=int,
              low=0, high=0xFFFFFFFF, late=False),
    Parameter("median_eps", "smallest distance in Weiszfeld's weights w_i / max(|M_i - m|, epsilon)",
              low=0.0, low_open=True, high=None, input="median_epsilon", flag="--epsilon", step=1e-6,
              widget_low=1e-12),
    Parameter("tolerance", "stop once a step moves the mean less than this", low=0.0, low_open=True, step=1e-6,
              widget_low=1e-12),
    Parameter("slerp_axis", "which vectors are interpolated: the whole tensor, each row, or each column",
              kind=str, choices=("whole", "rows", "columns")),
    Parameter("similarity_threshold", "where |base - model| is below this, the model's value is taken",
              high=None, step=1e-4),
    Parameter("alignment", "fraction of the orthogonal transform applied (1: the full rotation)"),
    Parameter("mix", "share of the model against the base (0: the base, 1: the model)"),
    Parameter("tilt", "tilt of the frequency cut (0: a sharp cut, 1: a plain weighted sum)", high=4.0),
    Parameter("stiffness", "pull of the bounds toward their mean (0: the inputs' min and max)"),
    Parameter("rank", "singular values kept per matrix", kind=int, low=1, high=65_536),
    Parameter("threshold", "importance threshold t: columns scoring below it are averaged", high=None),
    Parameter("calibration", "score calibration s: weight of the important columns", high=None),
    Parameter("common_fraction", "share of each matrix's rank given to the common subspace",
              low=0.0, low_open=True, widget_low=0.01),
)
PARAMETER_BY_FIELD = {p.field: p for p in PARAMETERS}


@dataclass(frozen=True)
class CombineMethod:
    name: str
    label: str
    fn: Callable[..., torch.Tensor]  # (base, models, params, key, fallbacks) -> delta
    min_models: int = 1
    uses: tuple[str, ...] = field(default=())  # MethodParams fields it reads (recipes, reports, checks)
    formula: str = ""
    max_models: Optional[int] = None  # None: any number
    check: Optional[Callable[["MethodParams", int], None]] = None  # what the parameter rows cannot say
    reference: str = ""  # where the method comes from (paper, tool)
    compute_bound: bool = False  # matrix decompositions: the merge engine gives its math every idle core
