"""Let the Dice Roll (docs/merging.md#let-the-dice-roll): random block weights from a seed.

A template holds one token per block: ``R`` (r), ``U`` (1.5 - 2r), ``X`` (between
the per-block upper and lower limits: up + (low - up)·r), ``D`` (centre up, width
low: up + low·(r - 0.5)), a number (kept), or ``ER`` / ``EU`` / ``EX``: the block
weight becomes 0 and the block gets an elemental entry ``<blocks>::R`` (``::U``,
``::low~up``) whose ratio is drawn per key at merge time from the merge seed.
R, U, X and D are clamped to the per-block clamp limits, then rounded.

As in SuperMerger, alpha position i uses the i-th uniform of a seeded stream and
beta position i the (i + 50)-th. Fixed on purpose: every draw is seeded, including
the ``<low>R<p>`` chance limits (quirk 15); ``ED`` is a clear error, not a crash.
The stream is NumPy's PCG64, so the numbers differ from SuperMerger's own draws
for the same seed (its generator is not part of the spec); the rules are the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..architectures import Architecture
from ..errors import MergeInputError
from .weights import SDXL_FROM_26, fit_to_layout, parse_numbers

MODES = ("R", "U", "X", "D", "ER", "EU", "EX", "custom")
DRAWN = ("R", "U", "X", "D")
ELEMENTAL = {"ER": "R", "EU": "U", "EX": "X"}
DEFAULT_CUSTOM = "U," + ",".join(["0"] * 12) + "," + ",".join(["R"] * 13)
BETA_OFFSET = 50


@dataclass(frozen=True)
class DiceSettings:
    mode: str = "R"
    custom: str = DEFAULT_CUSTOM   # the template when mode is "custom"
    upper: str = "1"               # X upper limit / D centre: one value or one per block
    lower: str = "0"               # X lower limit / D width; an entry may be "<low>R<p>"
    clamp_upper: str = "1"
    clamp_lower: str = "0"
    decimals: int = 3


@dataclass(frozen=True)
class Roll:
    seed: int
    alpha: str          # block weights text ("" when alpha was not randomised)
    beta: str
    elemental: str      # the elemental entries added by E tokens (appended to any base text)


@dataclass(frozen=True)
class _Limit:
    low: float
    chance: Optional[float] = None   # "<low>R<p>": low is used with probability p, else X -> 0 and D width 0


def template(settings: DiceSettings, arch: Architecture) -> list[str]:
    if settings.mode not in MODES:
        raise MergeInputError("mode", f"unknown random mode '{settings.mode}'.", f"choose one of {', '.join(MODES)}.")
    if settings.mode != "custom":
        return [settings.mode] * arch.n_blocks
    tokens = [t.strip() for t in settings.custom.replace("\n", ",").split(",")]
    for pos, token in enumerate(tokens, start=1):
        if token in DRAWN or token in ELEMENTAL:
            continue
        if token == "ED":
            raise MergeInputError("custom", f"token #{pos} 'ED': there is no elemental D (SuperMerger fails on it).",
                                  "use D for a block weight, or ER / EU / EX for elemental ratios.")
        try:
            if not math.isfinite(float(token)):
                raise ValueError
        except ValueError:
            raise MergeInputError("custom", f"token #{pos} '{token}' is neither a number nor one of "
                                  f"{', '.join(DRAWN + tuple(ELEMENTAL))}.",
                                  "write one token per block, e.g. " + DEFAULT_CUSTOM[:24] + "...") from None
    if len(tokens) == 26 and arch.n_blocks == 20:
        return [tokens[i] for i in SDXL_FROM_26]
    if len(tokens) != arch.n_blocks:
        raise MergeInputError("custom", f"has {len(tokens)} tokens, but {arch.label} needs {arch.n_blocks} "
                              f"({', '.join(arch.blocks[:3])}, ..., {arch.blocks[-1]}).",
                              f"give exactly {arch.n_blocks} comma-separated tokens, starting with BASE.")
    return tokens


def _numbers(text: str, arch: Architecture, input_name: str) -> list[float]:
    values = parse_numbers(text.strip(), input_name)
    return values * arch.n_blocks if len(values) == 1 else fit_to_layout(values, arch, input_name)


def _lower_limits(text: str, arch: Architecture) -> list[_Limit]:
    entries = [t.strip() for t in text.replace("\n", ",").split(",")]
    limits = []
    for pos, entry in enumerate(entries, start=1):
        low, sep, chance = entry.upper().partition("R")
        try:
            limit = _Limit(float(low), float(chance) if sep else None)
        except ValueError:
            raise MergeInputError("lower", f"entry #{pos} '{entry}' is not a number or '<low>R<p>'.",
                                  "write numbers such as 0, or 0.2R0.7 (use 0.2 with probability 0.7).") from None
        if not math.isfinite(limit.low) or (limit.chance is not None and not 0 <= limit.chance <= 1):
            raise MergeInputError("lower", f"entry #{pos} '{entry}' is out of range.",
                                  "use a finite lower limit and a probability between 0 and 1.")
        limits.append(limit)
    if len(limits) == 1:
        return limits * arch.n_blocks
    index = fit_to_layout(list(range(len(limits))), arch, "lower")
    return [limits[int(i)] for i in index]


def _check(settings: DiceSettings, arch: Architecture, tokens: list[str]):
    upper = _numbers(settings.upper, arch, "upper")
    lower = _lower_limits(settings.lower, arch)
    clamp_hi = _numbers(settings.clamp_upper, arch, "clamp_upper")
    clamp_lo = _numbers(settings.clamp_lower, arch, "clamp_lower")
    if not 0 <= settings.decimals <= 10:
        raise MergeInputError("decimals", f"{settings.decimals} is out of range.", "use 0 to 10 decimal places.")
    for i, block in enumerate(arch.blocks):
        if clamp_lo[i] > clamp_hi[i]:
            raise MergeInputError("clamp_lower", f"block {block}: clamp lower {clamp_lo[i]:g} is above clamp upper "
                                  f"{clamp_hi[i]:g}.", "make every clamp lower limit <= its upper limit.")
        if tokens[i] in ("X", "EX") and lower[i].low > upper[i]:
            raise MergeInputError("lower", f"block {block}: lower limit {lower[i].low:g} is above upper limit "
                                  f"{upper[i]:g}.", "make every lower limit <= its upper limit (X draws between them).")
        if tokens[i] == "D" and lower[i].low < 0:
            raise MergeInputError("lower", f"block {block}: the D width {lower[i].low:g} is negative.",
                                  "give D a width >= 0 in 'lower' (its centre is 'upper').")
    return upper, lower, clamp_lo, clamp_hi


def roll(settings: DiceSettings, arch: Architecture, seed: int, alpha: bool = True, beta: bool = False) -> Roll:
    """Resolve the template for alpha and/or beta with ``seed``; same seed, same result."""
    tokens = template(settings, arch)
    upper, lower, clamp_lo, clamp_hi = _check(settings, arch, tokens)
    # beta's draws start BETA_OFFSET after alpha's (SuperMerger's layouts, up to 50 blocks), or after the last of
    # alpha's on a longer layout (Flux.1's 61): its values never repeat alpha's; the draws of a shorter layout are
    # unchanged (a seeded stream's first values do not depend on how many are drawn)
    beta_offset = max(BETA_OFFSET, len(tokens))
    r = np.random.default_rng(seed).random(max(3000, 2 * beta_offset))
    coins = np.random.default_rng([seed, 1]).random(2 * beta_offset)
    entries: dict[str, list[str]] = {}

    def resolve(offset: int) -> str:
        out = []
        for i, token in enumerate(tokens):
            u, low = float(r[i + offset]), lower[i]
            width = low.low if low.chance is None or coins[i + offset] < low.chance else None
            if token in ELEMENTAL:
                kind = ELEMENTAL[token]
                ratio = f"{low.low:g}~{upper[i]:g}" if kind == "X" else kind
                entries.setdefault(ratio, []).append(arch.blocks[i])
                out.append(0.0)
                continue
            if token not in DRAWN:
                out.append(float(token))
                continue
            if token == "R":
                value = u
            elif token == "U":
                value = 1.5 - 2.0 * u
            elif token == "X":
                value = 0.0 if width is None else upper[i] + (width - upper[i]) * u
            else:
                value = upper[i] + (width or 0.0) * (u - 0.5)
            out.append(round(min(max(value, clamp_lo[i]), clamp_hi[i]), settings.decimals))
        return ",".join(f"{v:.10g}" for v in out)

    alpha_text = resolve(0) if alpha else ""
    beta_text = resolve(beta_offset) if beta else ""
    elemental = "\n".join(f"{' '.join(dict.fromkeys(blocks))}::{ratio}" for ratio, blocks in entries.items())
    return Roll(int(seed), alpha_text, beta_text, elemental)


def roll_many(settings: DiceSettings, arch: Architecture, seed: int, count: int, alpha: bool = True,
              beta: bool = False) -> list[Roll]:
    """``count`` draws with seeds seed, seed+1, ... (wrapping at 2^32): one queue run, many random merges."""
    if count < 1:
        raise MergeInputError("count", f"is {count}.", "draw at least 1.")
    return [roll(settings, arch, (seed + i) & 0xFFFFFFFF, alpha, beta) for i in range(count)]
