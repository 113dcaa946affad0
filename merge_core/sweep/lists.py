"""Sweep values as lists, and the cross product that turns X, Y, Z lists into one paired run.

ComfyUI runs a node once per element of its list inputs, pairing lists element by
element and repeating the last element of the shorter one (no product). A grid
therefore needs its axes expanded here: for every Z, every Y, every X, in that
order (SuperMerger's XYZ loop, docs/merging.md#sweep-flow).
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Optional, Sequence

from ..blocks.presets import presets
from ..errors import MergeInputError
from ..methods.adjust import parse_adjust
from ..methods.calcmodes import CALC_MODE_NAMES

MAX_ELEMENTS = 1000


def _split(text: str, input_name: str, by_line: bool = False) -> list[str]:
    raw = (text or "").replace("\r\n", "\n")
    items = [t.strip() for t in (raw.split("\n") if by_line else raw.replace("\n", ",").split(","))]
    items = [t for t in items if t]
    if not items:
        raise MergeInputError(input_name, "is empty: a sweep needs at least one value.",
                              "enter values, e.g. '0.25, 0.5, 0.75'." if not by_line else "enter one value per line.")
    if len(items) > MAX_ELEMENTS:
        raise MergeInputError(input_name, f"has {len(items)} values (at most {MAX_ELEMENTS}).",
                              "split the sweep into several runs.")
    return items


def _number(token: str, input_name: str, position: int, cast: Callable = float):
    try:
        value = cast(token)
    except ValueError:
        raise MergeInputError(input_name, f"value #{position} '{token}' is not a number.",
                              "write numbers separated by commas.") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise MergeInputError(input_name, f"value #{position} '{token}' is not finite.", "write a finite number.")
    return value


def float_list(text: str, input_name: str = "values") -> list[float]:
    return [_number(t, input_name, i + 1) for i, t in enumerate(_split(text, input_name))]


def float_range(start: float, stop: float, count: int, input_name: str = "count") -> list[float]:
    """``count`` evenly spaced values from start to stop, both included."""
    if count < 1 or count > MAX_ELEMENTS:
        raise MergeInputError(input_name, f"is {count}; a range needs 1 to {MAX_ELEMENTS} values.",
                              "set count to the number of grid cells wanted, e.g. 5.")
    if count == 1:
        return [float(start)]
    return [round(start + (stop - start) * i / (count - 1), 10) for i in range(count)]


def seed_list(text: str, input_name: str = "seeds", rng: Optional[random.Random] = None) -> list[int]:
    """Integers; -1 draws a random seed (SuperMerger's seed axis)."""
    rng = rng or random.Random()
    out = []
    for i, token in enumerate(_split(text, input_name)):
        value = _number(token, input_name, i + 1, int)
        if value == -1:
            value = rng.randrange(0, 2 ** 32)
        if not 0 <= value < 2 ** 64:
            raise MergeInputError(input_name, f"value #{i + 1} '{token}' is not a seed (0 or more, or -1).",
                                  "use non-negative integers, or -1 for a random seed.")
        out.append(value)
    return out


def block_weight_list(text: str, input_name: str = "block_weights") -> list[str]:
    """One line per element: a preset name or 20/26 comma-separated values (checked again by the merge)."""
    table = presets()
    lines = _split(text, input_name, by_line=True)
    for i, line in enumerate(lines):
        if "," not in line:
            if line not in table:
                try:
                    float(line)
                except ValueError:
                    close = [n for n in table if n.upper() == line.upper()]
                    hint = f" Did you mean '{close[0]}'?" if close else ""
                    raise MergeInputError(input_name, f"line {i + 1}: '{line}' is not a preset name.{hint}",
                                          "use preset names such as GRAD_V or FLAT_25, or 20/26 numbers per "
                                          "line.") from None
            continue
        values = [_number(t.strip(), input_name, j + 1) for j, t in enumerate(line.split(","))]
        if len(values) not in (20, 21, 26):
            raise MergeInputError(input_name, f"line {i + 1} has {len(values)} values.",
                                  "give 26 (SD1/SD2) or 20 (SDXL) values per line, or a preset name.")
    return lines


def blank_line_list(text: str, input_name: str = "elemental") -> list[str]:
    """Entries separated by blank lines; an entry 'none' (or '-') is an empty cell (no elemental)."""
    raw = (text or "").replace("\r\n", "\n")
    blocks, current = [], []
    for line in raw.split("\n"):
        if line.strip():
            current.append(line.strip())
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    if not blocks:
        raise MergeInputError(input_name, "is empty: a sweep needs at least one entry.",
                              "write entries separated by a blank line; 'none' for an empty one.")
    return ["" if b.lower() in ("none", "-") else b for b in blocks]


def _choice_list(text: str, names: list[str], what: str, input_name: str) -> list[str]:
    """Names from a fixed list, case-insensitive, returned as the list spells them."""
    out = []
    for token in _split(text, input_name):
        match = [n for n in names if n.lower() == token.lower()]
        if not match:
            raise MergeInputError(input_name, f"'{token}' is not {what}.", f"use names from: {', '.join(names)}.")
        out.append(match[0])
    return out


def calcmode_list(text: str, input_name: str = "calcmodes") -> list[str]:
    return _choice_list(text, CALC_MODE_NAMES, "a calc mode", input_name)


def method_list(text: str, input_name: str = "methods") -> list[str]:
    """n-model method names (Combine Models' method input)."""
    from ..combine.methods import METHOD_NAMES
    return _choice_list(text, METHOD_NAMES, "an n-model method", input_name)


def adjust_list(text: str, input_name: str = "adjust") -> list[str]:
    lines = _split(text, input_name, by_line=True)
    for i, line in enumerate(lines):
        try:
            parse_adjust(line)
        except MergeInputError as exc:
            raise MergeInputError(input_name, f"line {i + 1}: {exc.problem}", exc.fix) from None
    return lines


# --- labels ------------------------------------------------------------------------

def abbreviate(value: Any, width: int = 60) -> str:
    """A label for a value; long number lists are run-length shortened ('0.5x13,1x13')."""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value).replace("\n", " / ")
    if text.count(",") >= 6 or ("," in text and len(text) > width):  # block lists: 20/26 values
        parts = [p.strip() for p in text.split(",")]
        runs: list[list] = []
        for p in parts:
            if runs and runs[-1][0] == p:
                runs[-1][1] += 1
            else:
                runs.append([p, 1])
        text = ",".join(p if n == 1 else f"{p}x{n}" for p, n in runs)
    return text if len(text) <= width * 3 else text[:width * 3 - 3] + "..."


def labels(name: str, values: Sequence[Any]) -> list[str]:
    prefix = f"{name}=" if name else ""
    return [prefix + (abbreviate(v) if str(v) != "" else "none") for v in values]


# --- cross product ------------------------------------------------------------------

def cross_product(x: Sequence, y: Optional[Sequence] = None, z: Optional[Sequence] = None) -> list[tuple]:
    """(x, y, z) for every z, every y, every x; y and z default to one None element."""
    ys = list(y) if y else [None]
    zs = list(z) if z else [None]
    return [(xv, yv, zv) for zv in zs for yv in ys for xv in x]

