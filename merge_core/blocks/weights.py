"""Block-weight text (MBW): parsing, preset resolution and layout conversion.

Accepted forms, resolved in this order (spec §5.5, with quirk 35 fixed: presets
are looked up before anything else):
  * empty text -> no block weights (the scalar alpha/beta apply everywhere);
  * a single preset name (no comma) -> that preset's 26 values;
  * comma-separated numbers: 26 (SD1/SD2 layout) or 20 (SDXL layout).
A 26-value list for SDXL keeps BASE, IN00-IN08, M00 and OUT00-OUT08 (spec §4.3).
The first value is BASE and is also the base ratio (text encoder, VAE).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..architectures import SD1_BLOCKS, Architecture
from ..errors import MergeInputError, require_ratio
from .presets import presets

SDXL_FROM_26 = tuple(i for i in range(26) if SD1_BLOCKS[i] not in (
    "IN09", "IN10", "IN11", "OUT09", "OUT10", "OUT11"))


@dataclass(frozen=True)
class BlockWeights:
    """Per-block ratios for one architecture, in its block-list order."""

    blocks: tuple[str, ...]
    values: tuple[float, ...]

    def __post_init__(self):
        assert len(self.blocks) == len(self.values)

    @property
    def base(self) -> float:
        return self.values[0]

    def of(self, block: str) -> float:
        return self.values[self.blocks.index(block)]

    def as_text(self) -> str:
        return ",".join(f"{v:.10g}" for v in self.values)


def parse_numbers(text: str, input_name: str) -> list[float]:
    values = []
    for pos, raw in enumerate(text.replace("\n", ",").split(",")):
        token = raw.strip()
        if token == "":
            raise MergeInputError(
                input_name, f"value #{pos + 1} is empty in '{text.strip()}'.",
                "write one number between each pair of commas.")
        try:
            value = float(token)
        except ValueError:
            hint = ("random tokens (R, U, X, D) are drawn by the Random Block Weights node "
                    "(merge_core.blocks.dice), not inside a merge; " if token.upper() in ("R", "U", "X", "D") else "")
            raise MergeInputError(
                input_name, f"value #{pos + 1} '{token}' is not a number.",
                hint + "write numbers such as 0.5, or a preset name such as GRAD_V.") from None
        values.append(require_ratio(input_name, value, f"value #{pos + 1} '{token}' "))
    return values


def parse_block_weights(text: Optional[str], arch: Architecture,
                        input_name: str = "block_weights") -> Optional[BlockWeights]:
    """Parse MBW text for ``arch``; None when the text is empty."""
    if text is None:
        return None
    stripped = text.strip().strip(",").strip()
    if not stripped:
        return None
    if "," not in stripped and "\n" not in stripped:
        table = presets()
        if stripped in table:
            values = list(table[stripped])
        else:
            try:
                float(stripped)
            except ValueError:
                close = [n for n in table if n.upper() == stripped.upper()]
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise MergeInputError(
                    input_name, f"'{stripped}' is neither a preset name nor a list of numbers.{hint}",
                    "use one of the preset names (GRAD_V, FLAT_25, ALL_A, ...) or "
                    f"{arch.n_blocks} comma-separated numbers.") from None
            values = parse_numbers(stripped, input_name)
    else:
        values = parse_numbers(stripped, input_name)
    return BlockWeights(arch.blocks, tuple(fit_to_layout(values, arch, input_name)))


def fit_to_layout(values: list[float], arch: Architecture, input_name: str) -> list[float]:
    n = len(values)
    if n == arch.n_blocks:
        return values
    if arch.n_blocks == 20 and n == 26:
        return [values[i] for i in SDXL_FROM_26]
    if arch.n_blocks == 20 and n == 21:
        return values[:20]  # SuperMerger's lists may carry the unused trailing VAE slot
    accepted = "26 (SD1/SD2 layout, converted) or 20" if arch.n_blocks == 20 else str(arch.n_blocks)
    raise MergeInputError(
        input_name,
        f"has {n} values, but {arch.label} block weights need {accepted} "
        f"({', '.join(arch.blocks[:3])}, ..., {arch.blocks[-1]}).",
        f"give exactly {arch.n_blocks} comma-separated values, starting with BASE.")
