"""Merge modes as small pure functions on float32 tensors (docs/merging.md#merge-mode-formulas).

Convention everywhere in this pack: alpha is the weight of model B, so alpha = 0
gives A and alpha = 1 gives B (SuperMerger's convention; ComfyUI's own
ModelMergeSimple uses the reverse). Every function takes float32 tensors of one
shape and returns a new float32 tensor; none modifies its inputs.

Each mode is also given as a short list of linear steps, ``w <- w*keep + s*X``
with X one of the other models. That is the form ComfyUI patches take, so the
node layer can build lazy patches from the same definition the CLI computes with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..errors import MergeInputError

Tensor = torch.Tensor


def weight_sum(a: Tensor, b: Tensor, c: Optional[Tensor], alpha: float, beta: float) -> Tensor:
    """(1 - alpha)*A + alpha*B, computed as lerp(A, B, alpha)."""
    return torch.lerp(a, b, alpha)


def add_difference(a: Tensor, b: Tensor, c: Optional[Tensor], alpha: float, beta: float) -> Tensor:
    """A + alpha*(B - C)."""
    assert c is not None, "Add difference needs C"
    return torch.add(a, b - c, alpha=alpha)


def triple_sum(a: Tensor, b: Tensor, c: Optional[Tensor], alpha: float, beta: float) -> Tensor:
    """(1 - alpha - beta)*A + alpha*B + beta*C."""
    assert c is not None, "Triple sum needs C"
    out = a * (1.0 - alpha - beta)
    out.add_(b, alpha=alpha)
    out.add_(c, alpha=beta)
    return out


def sum_twice(a: Tensor, b: Tensor, c: Optional[Tensor], alpha: float, beta: float) -> Tensor:
    """(1 - beta)*((1 - alpha)*A + alpha*B) + beta*C, computed as lerp(lerp(A, B, alpha), C, beta)."""
    assert c is not None, "sum Twice needs C"
    return torch.lerp(torch.lerp(a, b, alpha), c, beta)


@dataclass(frozen=True)
class LinearStep:
    """One patch: ``w <- w*keep + strength*<source>`` with source "b" or "c"."""

    source: str
    strength: float
    keep: float


@dataclass(frozen=True)
class MergeMode:
    name: str
    label: str
    fn: Callable[..., Tensor]
    needs_c: bool
    uses_beta: bool
    steps: Callable[[float, float], tuple[LinearStep, ...]]

    def is_identity(self, alpha: float, beta: float) -> bool:
        """True when the mode returns A exactly, so the key can be kept untouched."""
        return alpha == 0 and (beta == 0 or not self.uses_beta)

    def linear_steps(self, alpha: float, beta: float) -> tuple[LinearStep, ...]:
        return self.steps(alpha, beta)


MODES: dict[str, MergeMode] = {m.name: m for m in (
    MergeMode("weight_sum", "Weight sum", weight_sum, False, False,
              lambda a, b: (LinearStep("b", a, 1.0 - a),)),
    MergeMode("add_difference", "Add difference", add_difference, True, False,
              lambda a, b: (LinearStep("b", a, 1.0), LinearStep("c", -a, 1.0))),
    MergeMode("triple_sum", "Triple sum", triple_sum, True, True,
              lambda a, b: (LinearStep("b", a, 1.0 - a - b), LinearStep("c", b, 1.0))),
    MergeMode("sum_twice", "sum Twice", sum_twice, True, True,
              lambda a, b: (LinearStep("b", a, 1.0 - a), LinearStep("c", b, 1.0 - b))),
)}

MODE_LABELS = [m.label for m in MODES.values()]


def get_mode(name: str, input_name: str = "mode") -> MergeMode:
    """Accept either the label ("Add difference") or the name ("add_difference")."""
    wanted = name.strip().lower().replace(" ", "_").replace("-", "_")
    for mode in MODES.values():
        if wanted in (mode.name, mode.label.lower().replace(" ", "_")):
            return mode
    raise MergeInputError(input_name, f"unknown merge mode '{name}'.",
                          "use one of: " + ", ".join(MODE_LABELS) + ".")
