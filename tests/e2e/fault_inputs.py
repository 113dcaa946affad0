"""Small input files shared by the fault catalogues (tests/e2e/test_faults_*.py)."""
from __future__ import annotations

import torch


def tiny_lora(modules: list[str], seed: int) -> dict[str, torch.Tensor]:
    """A rank-2 kohya LoRA over `modules` (4x4 layers), seeded."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name in modules:
        sd[f"{name}.lora_up.weight"] = torch.randn(4, 2, generator=gen)
        sd[f"{name}.lora_down.weight"] = torch.randn(2, 4, generator=gen)
        sd[f"{name}.alpha"] = torch.tensor(2.0)
    return sd
