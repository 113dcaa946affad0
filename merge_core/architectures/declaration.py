"""What a model family declares, and the one interpreter that turns a declaration into key -> block.

A family is data: its block list in weight-list order, ordered (pattern -> block) rules over keys
relative to the diffusion model, the prefixes of its other components (text encoders, VAE) with the
block they belong to, and a detection signature. Adding a family means adding a declaration; nothing
here branches on a family's name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from .keys import unet_relative


@dataclass(frozen=True)
class Signature:
    """How to recognise a family from key names alone.

    numbered: (container, lowest, highest) — the highest index of ``<container>.N`` among the
        diffusion-model keys must lie in [lowest, highest] (highest None: no upper bound).
    any_of: regexes over diffusion-relative keys; when given, one of them (or one of the
        text-encoder markers) must be present.
    text_encoder_markers: key prefixes that only this family's text encoders have; they decide
        on their own for a text-encoder-only source (a ComfyUI CLIP).
    needs_text_encoder: the diffusion layout is shared with another family, so only the text
        encoder can name this one (SD2 vs SD1).
    """

    numbered: tuple[tuple[str, int, Optional[int]], ...] = ()
    any_of: tuple[str, ...] = ()
    text_encoder_markers: tuple[str, ...] = ()
    needs_text_encoder: bool = False


@dataclass(frozen=True)
class Architecture:
    """One model family, declared: its blocks, its key -> block rules and its signature.

    rules: ordered (regex, block template) pairs over diffusion-relative keys, first match wins; the
        template is a block id or a format string fed the regex's groups as integers (``IN{0:02d}``).
    components: (prefix, block) pairs for keys outside the diffusion model (text encoders, VAE);
        keys that match none belong to `outside_block`.
    unmatched_block: the block of a diffusion-model key that no rule names.
    """

    name: str
    label: str
    blocks: tuple[str, ...]
    rules: tuple[tuple[str, str], ...]
    signature: Signature = Signature()
    components: tuple[tuple[str, str], ...] = ()
    outside_block: str = "BASE"
    unmatched_block: str = "BASE"
    _compiled: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_compiled", tuple((re.compile(p), t) for p, t in self.rules))
        named = {t for _, t in self.rules if "{" not in t} | {b for _, b in self.components}
        named |= {self.outside_block, self.unmatched_block}
        unknown = named - set(self.blocks)
        if unknown:
            raise ValueError(f"architecture {self.name}: rules name blocks outside its list: {sorted(unknown)}")

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def block_of(self, key: str) -> str:
        """Block id of a key in either naming."""
        rel = unet_relative(key)
        if rel is None:
            for prefix, block in self.components:
                if key.startswith(prefix):
                    return block
            return self.outside_block
        for regex, template in self._compiled:
            m = regex.match(rel)
            if m:
                return template.format(*(int(g) for g in m.groups()))
        return self.unmatched_block

    def block_index(self, key: str) -> int:
        return self.blocks.index(self.block_of(key))
