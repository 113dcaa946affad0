"""Adjust (docs/merging.md#adjust): detail, contrast, brightness and colour tweaks on six U-Net keys.

Eight values a..h = IN, OUT, OUT2, CONT, BRI, COL1 (cyan-/red+), COL2
(magenta-/green+), COL3 (yellow-/blue+):

    input_blocks.0.0.weight *= 1 - 0.01a      input_blocks.0.0.bias *= 1 + 0.02a
    out.0.weight            *= 1 - 0.01b      out.0.bias            *= 1 + 0.02b
    out.2.weight            *= 1 - 0.01c      out.2.bias            += 0.02 [d, v1, v2, v3]

with (v1, v2, v3) = e, f, g, h times the architecture's colour vectors. The old
7-value form adds 0.02 * values 4..7 to out.2.bias directly. Results keep the
tensor's dtype (quirk 12 fixed: SuperMerger promotes the bias to float32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..architectures import Architecture, unet_relative
from ..errors import MergeInputError, require_ratio

NAMES = ("IN", "OUT", "OUT2", "CONT", "BRI", "COL1", "COL2", "COL3")
COLOURS = {  # rows: BRI, COL1, COL2, COL3; columns: latent channels 1..3
    "sd1": ((-1.0, 1 / 3, 2 / 3), (1.0, 1.0, 0.0), (0.0, -1.0, -1.0), (1.0, 0.0, 1.0)),
    "sdxl": ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (-1.0, -1.0, 0.0), (-1.0, 1.0, 0.0)),
}
SCALED = {"input_blocks.0.0.weight": (0, -0.01), "input_blocks.0.0.bias": (0, 0.02),
          "out.0.weight": (1, -0.01), "out.0.bias": (1, 0.02), "out.2.weight": (2, -0.01)}
SHIFTED = "out.2.bias"
ADJUSTABLE = ("sd1", "sd2", "sdxl")  # the families that have these U-Net layers


@dataclass(frozen=True)
class Adjust:
    values: tuple[float, ...]  # 8 values, or 7 in the old form
    text: str = ""
    input_name: str = "adjust"

    def __post_init__(self):
        """Every entry point (text, node knobs, recipes) gets the same check: NaN or a huge value
        here would turn the output convolution into NaN or infinities."""
        for i, value in enumerate(self.values):
            name = NAMES[i] if len(self.values) == 8 else f"value #{i + 1}"
            require_ratio(self.input_name, value, f"{name} ")

    def op(self, key: str, arch: Architecture):
        """("scale", factor), ("add", 4 values) or None for a key in any naming."""
        rel = adjust_target(key, arch)
        if rel in SCALED:
            index, rate = SCALED[rel]
            factor = 1.0 + rate * self.values[index]
            return ("scale", factor) if factor != 1.0 else None
        if rel == SHIFTED:
            shift = self.bias_shift(arch)
            return ("add", shift) if any(shift) else None
        return None

    def bias_shift(self, arch: Architecture) -> tuple[float, float, float, float]:
        v = self.values
        if len(v) == 7:
            c1, c2, c3, c4 = v[3:7]
            return (0.02 * c1, 0.02 * c2, 0.02 * c3, 0.02 * c4)
        colours = COLOURS["sdxl" if arch.name == "sdxl" else "sd1"]
        mixed = [sum(knob * row[ch] for knob, row in zip(v[4:8], colours)) for ch in range(3)]
        return (0.02 * v[3], 0.02 * mixed[0], 0.02 * mixed[1], 0.02 * mixed[2])


def adjust_target(key: str, arch: Optional[Architecture]) -> Optional[str]:
    """The key's name among the adjusted keys (SCALED, SHIFTED) in any naming, else None; with the
    model's architecture, bare keys of a diffusion-model file count too."""
    rel = arch.relative(key) if arch is not None else unet_relative(key)
    return rel if rel in SCALED or rel == SHIFTED else None


def parse_adjust(text: Optional[str], input_name: str = "adjust") -> Optional[Adjust]:
    """8 comma-separated numbers (IN, OUT, OUT2, CONT, BRI, COL1, COL2, COL3), or the old 7-value
    form; None when empty or all zero."""
    if text is None or not text.strip():
        return None
    parts = [p.strip() for p in text.strip().strip(",").split(",")]
    if len(parts) not in (7, 8):
        raise MergeInputError(input_name, f"has {len(parts)} values in '{text.strip()}'.",
                              "give 8 comma-separated numbers: IN, OUT, OUT2, CONT, BRI, COL1, COL2, COL3 "
                              "(or the old 7-value form).")
    values = []
    for i, part in enumerate(parts):
        try:
            values.append(float(part))
        except ValueError:
            name = NAMES[i] if len(parts) == 8 else f"value #{i + 1}"
            raise MergeInputError(input_name, f"{name} '{part}' is not a number.",
                                  "write a number, 0 for none.") from None
    if not any(values):
        return None
    return Adjust(tuple(values), text.strip(), input_name)


def require_adjustable(adjust: Optional[Adjust], arch: Architecture,
                       input_name: Optional[str] = None) -> Optional[Adjust]:
    """Adjust on a family without its target layers would do nothing, silently: refuse it instead."""
    if adjust is None or arch.name in ADJUSTABLE:
        return adjust
    raise MergeInputError(
        input_name or adjust.input_name,
        f"Adjust is not available for {arch.label}: it scales the U-Net's input conv, final norm and output "
        f"conv, which only SD1, SD2 and SDXL have.",
        "set every Adjust value to 0 (an empty adjust) for this model.")


def apply_adjust(tensor: torch.Tensor, op) -> torch.Tensor:
    """A new tensor with one Adjust operation applied, computed in float32, in the input's dtype."""
    kind, value = op
    x = tensor.float()
    if kind == "scale":
        return (x * value).to(tensor.dtype)
    return (x + torch.tensor(value, dtype=torch.float32).reshape(-1)[: x.shape[0]]).to(tensor.dtype)
