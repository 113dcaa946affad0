"""What a LoRA-producing operation returns: its tensors in kohya naming, report lines, ranks and error.

A module of its own so operations (which fill it) and files (which save it) both import it at the top."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class LoraResult:
    tensors: dict[str, torch.Tensor]
    report: list[str] = field(default_factory=list)
    dims: set = field(default_factory=set)
    sq_err: float = 0.0
    sq_norm: float = 0.0

    @property
    def rel_error(self) -> float:
        return math.sqrt(self.sq_err / self.sq_norm) if self.sq_norm > 0 else 0.0

    def add(self, name: str, up: torch.Tensor, down: torch.Tensor, alpha: float) -> None:
        self.tensors[f"{name}.lora_up.weight"] = up
        self.tensors[f"{name}.lora_down.weight"] = down
        self.tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
        self.dims.add(down.shape[0])

    def add_decomposition(self, name: str, dec) -> None:
        self.add(name, dec.up, dec.down, dec.rank)
        self.sq_err += (dec.rel_error * dec.norm) ** 2
        self.sq_norm += dec.norm ** 2
