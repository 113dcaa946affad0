"""Elemental merge (docs/merging.md#elemental-merge): per-element alpha overrides written as ``blocks:elements:ratio``.

Grammar: entries separated by commas or newlines; ``blocks`` is a space-separated
list of block ids and ``A-B`` ranges (either order), optionally led by ``NOT``,
empty for every block; ``elements`` is a space-separated list of substrings,
optionally led by ``NOT``, empty for every element; ``ratio`` is a number or a
random ratio drawn per key (``R``: r, ``U``: 1 - 2r, ``lo~up``: SuperMerger's X,
up + (lo - up)·r, with r uniform in [0, 1) from the merge seed and the key name,
so the draw does not depend on key order and is reproducible). The
last matching entry wins; rules apply after block weights and override alpha only.

Differences from SuperMerger, on purpose: malformed entries and unknown block ids
are errors that quote the entry (SuperMerger ignores them silently); SDXL rules use
SDXL block names (quirk 5 fixed); element substrings match the key without its
``model.diffusion_model.`` / ``diffusion_model.`` prefix, so ``ff`` no longer
matches every key through "diffusion" (``full_key=True`` restores SuperMerger's
full-key matching for exact parity).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

from ..architectures import UNET_PREFIXES, Architecture
from ..errors import MergeInputError, require_ratio
from .specs import expand_tokens


@dataclass(frozen=True)
class RandomRatio:
    """A ratio drawn per key (docs/merging.md#token-resolution): R -> r, U -> 1 - 2r, X -> up + (lo - up)·r."""

    kind: str                      # "R", "U" or "X"
    low: float = 0.0
    up: float = 1.0

    def value(self, r: float) -> float:
        if self.kind == "R":
            return r
        if self.kind == "U":
            return 1.0 - 2.0 * r
        return self.up + (self.low - self.up) * r

    @property
    def text(self) -> str:
        return self.kind if self.kind != "X" else f"{self.low:g}~{self.up:g}"


def keyed_uniform(seed: int, name: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, name): reproducible whatever the key order."""
    digest = hashlib.blake2b(f"{int(seed)}:{name}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) / float(1 << 53)


def _parse_ratio(text: str, entry: str, pos: int, input_name: str) -> tuple[float, Optional[RandomRatio]]:
    token = text.strip()
    if token in ("R", "U"):
        return 0.0, RandomRatio(token)
    try:
        parts = [float(v) for v in token.split("~")] if "~" in token else [float(token)]
    except ValueError:
        parts = None
    if parts is None or len(parts) > 2:
        raise MergeInputError(input_name, f"entry #{pos} '{entry}': ratio '{token}' is not a number.",
                              "end the entry with a number such as 0.5, or a random ratio: R, U or low~up "
                              "(e.g. 0~0.5).")
    parts = [require_ratio(input_name, v, f"entry #{pos} '{entry}': ratio ") for v in parts]
    return (0.0, RandomRatio("X", *parts)) if len(parts) == 2 else (parts[0], None)

@dataclass(frozen=True)
class ElementalRule:
    position: int                  # 1-based entry number, for messages and reports
    text: str
    blocks: Optional[frozenset]    # None: every block
    blocks_not: bool
    elements: tuple[str, ...]      # empty: every element
    elements_not: bool
    ratio: float
    draw: Optional[RandomRatio] = None   # a random ratio, drawn per key at merge time

    @property
    def ratio_text(self) -> str:
        return self.draw.text if self.draw is not None else f"{self.ratio:g}"

    def alpha_for(self, key: str, seed: int) -> float:
        return self.ratio if self.draw is None else self.draw.value(keyed_uniform(seed, strip_prefix(key)))

    def matches(self, key: str, block: str, full_key: bool = False) -> bool:
        if self.blocks is not None and ((block in self.blocks) == self.blocks_not):
            return False
        if not self.elements:
            return True
        name = key if full_key else strip_prefix(key)
        hit = any(e in name for e in self.elements)
        return hit != self.elements_not


def strip_prefix(key: str) -> str:
    """The key without its U-Net prefix: elemental rules and include/exclude match element names."""
    for prefix in UNET_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _split_not(tokens: list[str]) -> tuple[bool, list[str]]:
    if tokens and tokens[0] == "NOT":
        return True, tokens[1:]
    return False, tokens


def parse_elemental(text: Optional[str], arch: Architecture,
                    input_name: str = "elemental") -> tuple[ElementalRule, ...]:
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
        ratio, draw = _parse_ratio(ratio_txt, entry, pos, input_name)
        blocks_not, block_tokens = _split_not(blocks_txt.split())
        elements_not, element_tokens = _split_not(elements_txt.split())
        if blocks_not and not block_tokens:
            raise MergeInputError(input_name, f"entry #{pos} '{entry}': NOT is followed by no block.",
                                  "name the blocks to exclude, e.g. NOT M00.")
        blocks = (expand_tokens(block_tokens, arch, input_name, f"entry #{pos} '{entry}': ")
                  if block_tokens else None)
        rules.append(ElementalRule(pos, entry, blocks, blocks_not, tuple(element_tokens), elements_not, ratio, draw))
    return tuple(rules)


def require_rules_match(rules: Sequence[ElementalRule], keys_and_blocks, arch: Architecture,
                        full_key: bool = False, input_name: str = "elemental") -> None:
    """Raise for the first rule whose blocks hold keys of this model while its element text matches none
    of them: a typo (``IN01:attn3:0.5``) would otherwise leave the merge as it was and look like success,
    as include/exclude refuse a target that selects no key. A rule whose blocks hold no key of this model
    (U-Net blocks seen by a text encoder alone) is not refused: its blocks were checked against the layout."""
    pairs = list(keys_and_blocks)
    for rule in rules:
        if not rule.elements:
            continue
        inside = [(key, block) for key, block in pairs
                  if rule.blocks is None or (block in rule.blocks) != rule.blocks_not]
        if inside and not any(rule.matches(key, block, full_key) for key, block in inside):
            blocks = [b for b in arch.blocks if b in {block for _, block in inside}]
            where = "" if rule.blocks is None else f" in block{'s' if len(blocks) > 1 else ''} " + \
                ", ".join(blocks[:4]) + (f" (and {len(blocks) - 4} more)" if len(blocks) > 4 else "")
            words = ("NOT " if rule.elements_not else "") + " ".join(rule.elements)
            raise MergeInputError(
                input_name, f"entry #{rule.position} '{rule.text}': elements '{words}' match no key{where} of "
                            f"this {arch.label} model.",
                "check the element text against the key names (the Elements node and 'python -m merge_core "
                "elements FILE --block ID' list them" + ("; e.g. attn1, attn2, ff, proj_in" if arch.name_filter
                                                         else "") + "), or leave the elements empty for every "
                "key of the blocks.")


def elemental_alpha(rules: Sequence[ElementalRule], key: str, block: str, alpha: float,
                    full_key: bool = False, seed: int = 0) -> tuple[float, Optional[ElementalRule]]:
    """alpha after the rules (the last matching one wins) and the rule that set it, if any.

    ``seed`` fixes the per-key draws of random ratios (R, U, low~up)."""
    hit = None
    for rule in rules:
        if rule.matches(key, block, full_key):
            hit = rule
    return (hit.alpha_for(key, seed), hit) if hit is not None else (alpha, None)
