"""An n-model merge's settings: the method and its parameters, alpha, block weights, elemental rules and
include/exclude. A combine has no merge mode, calc mode, beta, model C or Adjust: it is its own type, read by the
plan (plan.PlanSettings) like a two-model merge's MergeSettings, and by the n-model engine step and adapters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence

import torch

from ..architectures import Architecture
from ..blocks.elemental import ElementalRule, parse_elemental
from ..blocks.selection import Selection, parse_selection
from ..blocks.weights import BlockWeights, parse_block_weights
from ..errors import MergeInputError, require_finite, require_ratio, require_seed
from .deltas import combine_key
from .methods import ROW_CHECKED, CombineMethod, MethodParams, check_params, get_method
from .params import PARAMETER_BY_FIELD


@dataclass(frozen=True)
class CombineSettings:
    """base + alpha * the method's delta, per key; alpha per block (block weights) and per key (elemental)."""

    method: CombineMethod
    method_params: MethodParams
    alpha: float = 1.0
    blocks_alpha: Optional[BlockWeights] = None
    elemental: tuple[ElementalRule, ...] = ()
    selection: Optional[Selection] = None  # include / exclude
    # rules and targets match element names without the model's prefix (no full-key option here)
    elemental_full_key: ClassVar[bool] = False

    @property
    def seed(self) -> int:
        """The one seed: the random methods' draws and random elemental ratios."""
        return self.method_params.seed

    @property
    def weights(self) -> Optional[tuple[float, ...]]:
        return self.method_params.weights

    def ratios(self, block: str, key: Optional[str] = None) -> tuple[float, float]:
        """alpha for a block (and key, for a list on a finer layout), and no beta (0)."""
        return (self.blocks_alpha.at(block, key) if self.blocks_alpha is not None else self.alpha), 0.0

    def is_identity(self, alpha: float, beta: float = 0.0) -> bool:
        """alpha 0 gives the base, whatever the method."""
        return alpha == 0

    def merge_key(self, key: str, alpha: float, base: torch.Tensor, models: Sequence[torch.Tensor],
                  fallbacks: Optional[list] = None) -> torch.Tensor:
        """base + alpha * this method's delta for one key: what the engine's n-model handler asks of the settings
        of an n-model plan (so the engine needs no import of this package)."""
        return combine_key(self.method, self.method_params, key, alpha, base, models, fallbacks)


def parse_weights(text, input_name: str = "weights") -> Optional[tuple[float, ...]]:
    """'0.6,0.4' (or a sequence of numbers) as a tuple; empty or None: 1 per model."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    out = []
    for i, item in enumerate(items):
        try:
            out.append(require_ratio(input_name, float(item), f"value #{i + 1} "))
        except ValueError as exc:
            if isinstance(exc, MergeInputError):
                raise
            raise MergeInputError(input_name, f"value #{i + 1} '{str(item).strip()}' is not a number.",
                                  "give numbers separated by commas, e.g. 0.6,0.4.") from None
    return tuple(out)


def make_combine_settings(arch: Architecture, n_models: int, method: str, alpha: float = 1.0,
                          weights=None, density: float = 0.2, drop_rate: float = 0.9,
                          epsilon: Optional[float] = None, top: float = 0.01, bottom: float = 0.1,
                          iterations: int = 100, seed: int = 0, blocks: Optional[str] = None,
                          elemental: str = "", include_exclude: str = "", **method_options) -> CombineSettings:
    """Parse and check user-facing combine settings. epsilon: DELLA's spread (default 0.1), or the geometric
    median's smallest distance (default 1e-6), whichever the method uses. method_options: the other method
    parameters (params.PARAMETERS) by field name; a None value takes the default."""
    chosen = get_method(method)
    defaults = MethodParams()
    eps: dict[str, Any] = {} if epsilon is None else ({"median_eps": epsilon} if "median_eps" in chosen.uses
                                      else {"epsilon": epsilon})
    params = MethodParams(weights=parse_weights(weights), density=density, drop_rate=drop_rate,
                          top=top, bottom=bottom, seed=require_seed(seed),
                          iterations=_count("iterations", iterations),
                          **{"epsilon": defaults.epsilon, "median_eps": defaults.median_eps, **eps},
                          **_method_options(method_options))
    check_params(chosen, params, n_models)
    return CombineSettings(method=chosen, method_params=params, alpha=require_ratio("alpha", alpha),
                           blocks_alpha=parse_block_weights(blocks, arch, "blocks_alpha"),
                           elemental=parse_elemental(elemental, arch),
                           selection=parse_selection(include_exclude, arch))


def _method_options(options: dict) -> dict[str, Any]:
    """The late parameters' values by field, typed (a whole-number float for an int is taken); unknown names are
    refused, not ignored (a misspelt option would silently fall back to its default)."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        row = PARAMETER_BY_FIELD.get(name)
        if row is None or not row.late or name == "median_eps":
            raise MergeInputError(name, "is not a combine parameter.",
                                  "use one of: " + ", ".join(p.field for p in ROW_CHECKED) + ".")
        if value is None:
            continue
        if row.choices:
            if not isinstance(value, str):
                raise MergeInputError(row.name, f"is {value!r}, not one of {', '.join(row.choices)}.",
                                      f"choose one of {', '.join(row.choices)}.")
            out[name] = value.strip().lower()
        elif row.kind is int:
            out[name] = _count(row.name, value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MergeInputError(row.name, f"is {value!r}, not a number.", f"give a number, {row.domain()}.")
            out[name] = require_finite(row.name, float(value))
    return out


def _count(input_name: str, value) -> int:
    """A whole number of steps (a float such as 100.0 is taken; NaN, inf or 2.5 are refused)."""
    number = require_finite(input_name, value, "give a whole number such as 100.")
    if number != int(number):
        raise MergeInputError(input_name, f"is {number:g}, not a whole number.", "give a whole number such as 100.")
    return int(value) if isinstance(value, int) else int(number)
