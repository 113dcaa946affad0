"""Automatic blocks for a model no declaration matches (AuraFlow, LTXV, Mochi, Cosmos, HunyuanVideo, ...).

The layout comes from the key names alone, as an ordinary declaration read by the one interpreter:
BASE (everything outside the diffusion model), then, in order of first appearance, one block per
index of every numbered container (``<container>.<i>``) and one block per other top-level module.
Every floating-point tensor is merged, as for the declared transformer families.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

from .declaration import NO_BLOCK, Architecture
from .keys import unet_relative
from .transformers import VAE_KEPT

_NUMBERED = re.compile(r"^([^.]+)\.(\d+)(?:\.|$)")
AUTO = "auto"  # the name of every automatic layout


def auto_architecture(keys: Iterable[str], bare: bool) -> Optional[Architecture]:
    """Automatic blocks for these keys; None when no key belongs to a diffusion model."""
    blocks: dict[str, None] = {}
    containers: dict[str, None] = {}
    for key in keys:
        rel = key if bare else unet_relative(key)
        if rel is None:
            continue
        m = _NUMBERED.match(rel)
        if m:
            containers[m.group(1)] = None
            blocks[f"{m.group(1)}.{int(m.group(2))}"] = None
        else:
            blocks[rel.split(".", 1)[0]] = None
    if not blocks:
        return None
    rules = [(re.escape(c) + r"\.(\d+)(?:\.|$)", c + ".{0}") for c in containers]
    rules += [(re.escape(b) + r"(?:\.|$)", b) for b in blocks if b.split(".", 1)[0] not in containers]
    return Architecture(AUTO, "automatic blocks", ("BASE", *blocks), tuple(rules), components=VAE_KEPT,
                        unmatched_block=NO_BLOCK, bare=bare)
