"""Pinpoint sweeps (docs/merging.md#supermergers-axes-as-sweep-nodes): one axis says *where*, the other *how much*.

SuperMerger's "pinpoint blocks" axis sets the listed blocks of an MBW template to
the alpha-axis value; "pinpoint element" appends ``<blocks:elements>:<value>`` to
the elemental text. Here both produce plain strings (block weights or elemental
text), one per (target, value) pair, so a ComfyUI list node can drive a merge node.
``ALL`` as a pinpoint-blocks target means one cell per block, as in SuperMerger.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..architectures import Architecture
from ..errors import MergeInputError, require_ratio
from .elemental import parse_elemental
from .specs import parse_block_spec
from .weights import BlockWeights, parse_block_weights


@dataclass(frozen=True)
class Cell:
    text: str      # the block weights or elemental text for this cell
    target: str    # where (the X label)
    value: float   # how much (the Y label)


def split_items(text: str) -> list[str]:
    """Items separated by commas or newlines, trimmed, empty ones dropped."""
    return [t.strip() for t in text.replace("\r", "").replace("\n", ",").split(",") if t.strip()]


def parse_values(text: str, input_name: str = "values") -> list[float]:
    values = []
    for token in split_items(text):
        try:
            value = float(token)
        except ValueError:
            raise MergeInputError(input_name, f"'{token}' is not a number.",
                                  "give comma-separated numbers such as 0, 0.5, 1.") from None
        values.append(require_ratio(input_name, value, f"value '{token}' "))
    if not values:
        raise MergeInputError(input_name, "is empty.", "give at least one number, e.g. 1.")
    return values


def block_targets(text: str, arch: Architecture, input_name: str = "targets") -> list[tuple[str, tuple[str, ...]]]:
    """Each target with the blocks it names; ``ALL`` expands to one target per block."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for item in split_items(text):
        if item == "ALL":
            out += [(b, (b,)) for b in arch.blocks]
        else:
            out.append((item, parse_block_spec(item, arch, input_name, f"target '{item}': ")))
    if not out:
        raise MergeInputError(input_name, "is empty.", "give block specs such as IN01, OUT10 OUT11, OUT03-OUT06.")
    return out


def pinpoint_blocks(targets: str, values: str, arch: Architecture, template: Optional[str] = None,
                    template_input: str = "template") -> list[Cell]:
    """Block-weight strings: the template (all 0 when empty) with the target blocks set to each value.

    Cells are ordered value by value, targets fastest (row-major for a grid with targets on X).
    """
    base = parse_block_weights(template, arch, template_input) or BlockWeights(arch.blocks, (0.0,) * arch.n_blocks)
    cells = []
    for value in parse_values(values):
        for label, blocks in block_targets(targets, arch):
            weights = tuple(value if b in blocks else v for b, v in zip(base.blocks, base.values))
            cells.append(Cell(BlockWeights(base.blocks, weights).as_text(), label, value))
    return cells


def pinpoint_elements(targets: str, values: str, arch: Architecture, base: str = "",
                      input_name: str = "targets") -> list[Cell]:
    """Elemental texts: ``base`` plus ``<blocks:elements>:<value>`` for each target and value."""
    items = split_items(targets)
    if not items:
        raise MergeInputError(input_name, "is empty.", "give items such as OUT03-OUT05:attn2, IN01:ff.")
    for item in items:
        if item.count(":") != 1:
            raise MergeInputError(input_name, f"item '{item}' has {item.count(':')} ':' instead of 1.",
                                  "write each item as BLOCKS:ELEMENTS, e.g. OUT03-OUT05:attn2 (no ratio).")
        parse_elemental(f"{item}:0", arch, input_name)
    parse_elemental(base, arch, "elemental_base")
    head = base.strip() + "\n" if base and base.strip() else ""
    return [Cell(f"{head}{item}:{value:g}", item, value) for value in parse_values(values) for item in items]
