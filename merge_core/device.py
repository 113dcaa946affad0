"""Where the per-key arithmetic runs (``--device auto|cpu|cuda``) and how tensors get there.

Reading stays on the CPU (files are read into host memory by the engine's read-ahead thread);
on CUDA that thread also pins each tensor, so its copy to the GPU can overlap the previous key's
math, and each result comes back to the host for writing. Results equal the CPU's within float32
rounding (the same float32 formulas, another order of summation at most). The calc mode
'plus random' draws its noise from a CPU generator (reproducible across machines), so it stays on
the CPU.
"""
from __future__ import annotations

from typing import Optional

import torch

from .errors import MergeInputError

DEVICES = ("auto", "cpu", "cuda")
CPU_ONLY_CALC = ("plus random",)


def resolve_device(name: Optional[str], input_name: str = "device") -> torch.device:
    """auto: CUDA when present, else the CPU; "cuda" without a GPU is an error, not a silent fallback."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MergeInputError(input_name, "is 'cuda' but this torch sees no CUDA device.",
                                  "use auto or cpu (or install a CUDA build of torch).")
        return torch.device(name)
    raise MergeInputError(input_name, f"is '{name}'.", "use auto, cpu or cuda.")


def math_device(device: torch.device, settings) -> torch.device:
    """The device for this merge's settings (a CPU-only calc mode keeps the CPU)."""
    calc = getattr(settings, "calc", None)
    return torch.device("cpu") if calc is not None and calc.name in CPU_ONLY_CALC else device


class Transfer:
    """Moves one key's inputs to the math device and its result back to the host."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"

    def prepare(self, tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """On the read-ahead thread: page-locked copy (CUDA only), so the upload is asynchronous."""
        if tensor is None or not self.pin or tensor.is_pinned():
            return tensor
        return tensor.pin_memory()

    def inputs(self, *tensors: Optional[torch.Tensor]) -> tuple:
        return tuple(None if t is None else t.to(self.device, non_blocking=self.pin) for t in tensors)

    def output(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if tensor.device.type == "cpu" else tensor.to("cpu")
