"""Include / Exclude (docs/merging.md#include-and-exclude): which keys take part in the merge at all.

A selection is a mode (include or exclude) and a list of targets: block ids and
ranges (``OUT03-OUT05``), ``VAE``, ``Adjust`` (the six Adjust keys) and element
substrings. The first matching test decides, in SuperMerger's order: block,
Adjust key, element substring, VAE. With exclude, a hit keeps A (and gets no
Adjust); with include, only hits are merged. Element strings are trimmed (quirk 30
fixed) and, like elemental rules, match the key without its U-Net prefix unless
full-key matching is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..architectures import Architecture
from ..errors import MergeInputError
from ..methods.adjust import adjust_target
from .elemental import strip_prefix
from .specs import expand_token, unknown_block_error

MODES = ("include", "exclude")


@dataclass(frozen=True)
class Selection:
    mode: str
    blocks: frozenset
    elements: tuple[str, ...]
    vae: bool
    adjust: bool
    text: str
    targets: tuple[str, ...] = ()  # the tokens as written, each checked to select some key

    def merges(self, key: str, block: str, full_key: bool = False, arch: Optional[Architecture] = None) -> bool:
        hit = (block in self.blocks
               or (self.adjust and adjust_target(key, arch) is not None)
               or any(e in (key if full_key else strip_prefix(key)) for e in self.elements)
               or (self.vae and is_vae(key)))
        return hit if self.mode == "include" else not hit

    def require_matches(self, keys_and_blocks, arch: Architecture, full_key: bool = False,
                        input_name: str = "include_exclude") -> None:
        """Raise for the first target that selects no key of this model: a typo (``--include 💥``)
        would otherwise merge nothing (include) or everything (exclude) and look like success."""
        pairs = list(keys_and_blocks)
        for token in self.targets:
            if not any(_target_hits(token, key, block, arch, full_key) for key, block in pairs):
                raise MergeInputError(
                    input_name, f"target '{token}' selects no key of this {arch.label} model.",
                    f"use block ids or ranges ({', '.join(arch.blocks[:2])}, ..., {arch.blocks[-1]}, "
                    f"{arch.blocks[4]}-{arch.blocks[6]}), VAE, Adjust, or part of a key name such as attn2 "
                    "(the Elements node and 'python -m merge_core elements FILE' list them).")


def is_vae(key: str) -> bool:
    return key.startswith(("first_stage_model.", "vae."))


def _target_hits(token: str, key: str, block: str, arch: Architecture, full_key: bool) -> bool:
    if token == "VAE":
        return is_vae(key)
    if token == "Adjust":
        return adjust_target(key, arch) is not None
    named = expand_token(token, arch)
    if named is not None:
        return block in named
    return token in (key if full_key else strip_prefix(key))


def parse_selection(text: Optional[str], arch: Architecture, input_name: str = "include_exclude",
                    mode: Optional[str] = None) -> Optional[Selection]:
    """``"include: IN01 M00 attn2"`` or ``"exclude: OUT03-OUT05, VAE"`` (targets separated by spaces or
    commas); with ``mode`` given, the text is the target list alone. None when empty."""
    if text is None or not text.strip():
        return None
    body = text.strip()
    if mode is None:
        head, sep, rest = body.partition(":")
        if not sep or head.strip().lower() not in MODES:
            raise MergeInputError(input_name, f"'{body[:40]}' does not start with 'include:' or 'exclude:'.",
                                  "write e.g. 'exclude: OUT03-OUT05 VAE' or 'include: IN01 IN02 attn2'.")
        mode, body = head.strip().lower(), rest
    blocks: set[str] = set()
    elements: list[str] = []
    vae = adjust = False
    targets = tuple(dict.fromkeys(body.replace(",", " ").split()))
    for token in targets:
        ends = token.split("-")
        if token == "VAE":
            vae = True
        elif token == "Adjust":
            adjust = True
        elif (named := expand_token(token, arch)) is not None:
            blocks.update(named)
        elif len(ends) == 2 and any(e in arch.blocks for e in ends):
            raise unknown_block_error(token, arch, input_name, f"range '{token}': ")
        else:
            elements.append(token)
    if not (blocks or elements or vae or adjust):
        return None
    return Selection(mode, frozenset(blocks), tuple(elements), vae, adjust, text.strip(), targets)
