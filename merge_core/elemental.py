"""Elemental merge (spec §6): per-element alpha overrides written as ``blocks:elements:ratio``.

Grammar: entries separated by commas or newlines; ``blocks`` is a space-separated
list of block ids and ``A-B`` ranges (either order), optionally led by ``NOT``,
empty for every block; ``elements`` is a space-separated list of substrings,
optionally led by ``NOT``, empty for every element; ``ratio`` is a number. The
last matching entry wins; rules apply after block weights and override alpha only.

Differences from SuperMerger, on purpose: malformed entries and unknown block ids
are errors that quote the entry (SuperMerger ignores them silently); SDXL rules use
SDXL block names (quirk 5 fixed); element substrings match the key without its
``model.diffusion_model.`` / ``diffusion_model.`` prefix, so ``ff`` no longer
matches every key through "diffusion" (``full_key=True`` restores SuperMerger's
full-key matching for exact parity).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from .architectures import UNET_PREFIXES, Architecture
from .errors import MergeInputError


@dataclass(frozen=True)
class ElementalRule:
    position: int                  # 1-based entry number, for messages and reports
    text: str
    blocks: Optional[frozenset]    # None: every block
    blocks_not: bool
    elements: tuple[str, ...]      # empty: every element
    elements_not: bool
    ratio: float

    def matches(self, key: str, block: str, full_key: bool = False) -> bool:
        if self.blocks is not None and ((block in self.blocks) == self.blocks_not):
            return False
        if not self.elements:
            return True
        name = key if full_key else _strip_prefix(key)
        hit = any(e in name for e in self.elements)
        return hit != self.elements_not


def _strip_prefix(key: str) -> str:
    for prefix in UNET_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _split_not(tokens: list[str]) -> tuple[bool, list[str]]:
    if tokens and tokens[0] == "NOT":
        return True, tokens[1:]
    return False, tokens


def _expand_blocks(tokens: list[str], arch: Architecture, entry: str, pos: int, input_name: str) -> frozenset:
    out = set()
    for token in tokens:
        ends = token.split("-")
        if len(ends) > 2 or any(e not in arch.blocks for e in ends):
            bad = [e for e in ends if e not in arch.blocks] or [token]
            raise MergeInputError(
                input_name, f"entry #{pos} '{entry}': unknown block id '{bad[0]}' for {arch.label}.",
                f"use ids such as {', '.join(arch.blocks[:3])}, ..., {arch.blocks[-1]}, or ranges like "
                f"{arch.blocks[4]}-{arch.blocks[6]}.")
        i, j = sorted(arch.blocks.index(e) for e in ends) if len(ends) == 2 else (arch.blocks.index(ends[0]),) * 2
        out.update(arch.blocks[i:j + 1])
    return frozenset(out)


def parse_elemental(text: Optional[str], arch: Architecture, input_name: str = "elemental") -> tuple[ElementalRule, ...]:
    """Parse elemental text into rules; raises MergeInputError quoting the bad entry and its position."""
    if not text or not text.strip():
        return ()
    rules = []
    entries = text.replace("\r", "").replace("\n", ",").split(",")
    for pos, raw in enumerate(entries, start=1):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise MergeInputError(
                input_name, f"entry #{pos} '{entry}' has {len(parts) - 1} ':' instead of 2.",
                "write each entry as blocks:elements:ratio, e.g. OUT03-OUT05:attn2:0.5 (either list may be empty).")
        blocks_txt, elements_txt, ratio_txt = parts
        try:
            ratio = float(ratio_txt.strip())
        except ValueError:
            hint = "random ratios (R, U, X) are not supported yet; " if ratio_txt.strip() in ("R", "U", "X") else ""
            raise MergeInputError(input_name, f"entry #{pos} '{entry}': ratio '{ratio_txt.strip()}' is not a number.",
                                  hint + "end the entry with a number such as 0.5.") from None
        if not math.isfinite(ratio):
            raise MergeInputError(input_name, f"entry #{pos} '{entry}': ratio is not finite.", "use a finite number.")
        blocks_not, block_tokens = _split_not(blocks_txt.split())
        elements_not, element_tokens = _split_not(elements_txt.split())
        if blocks_not and not block_tokens:
            raise MergeInputError(input_name, f"entry #{pos} '{entry}': NOT is followed by no block.",
                                  "name the blocks to exclude, e.g. NOT M00.")
        blocks = _expand_blocks(block_tokens, arch, entry, pos, input_name) if block_tokens else None
        rules.append(ElementalRule(pos, entry, blocks, blocks_not, tuple(element_tokens), elements_not, ratio))
    return tuple(rules)


def elemental_alpha(rules: Sequence[ElementalRule], key: str, block: str, alpha: float,
                    full_key: bool = False) -> tuple[float, Optional[ElementalRule]]:
    """alpha after the rules (the last matching one wins) and the rule that set it, if any."""
    hit = None
    for rule in rules:
        if rule.matches(key, block, full_key):
            hit = rule
    return (hit.ratio, hit) if hit is not None else (alpha, None)
