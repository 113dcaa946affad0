"""The two types every part of n-model combine speaks: a method's parameters, and a method's entry in the table
(methods.py). Kept apart from the table so the per-key math (deltas.py) can name them without importing it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


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
    fn: Callable[..., torch.Tensor]  # (base, models, params, key, fallbacks) -> delta
    min_models: int = 1
    uses: tuple[str, ...] = field(default=())  # MethodParams fields it reads (recipes, reports, checks)
    formula: str = ""
