"""Automatic blocks for a model no declaration matches.

The layout comes from the key names alone, as an ordinary declaration read by the one interpreter, in
block order rather than the files' alphabetical key order (a positional weight list must land where a
user counting the model's blocks expects):

1. BASE (everything outside the diffusion model);
2. the input-side top-level modules (every module not named as output-side), alphabetically;
3. the numbered stacks (``blocks.N``, ``double_layers.N``: a top-level container whose entries are
   modules with layers of their own), alphabetically, each in index order (``blocks.2`` before
   ``blocks.10``), one block per index;
4. the output-side top-level modules (a name with a word ``final``, ``last``, ``out``, ``output``,
   ``head``, ``unpatchify``, or a bare ``norm``), alphabetically.

A small numbered container (``tmlp.0.weight``, ``tmlp.2.bias``: an ``nn.Sequential`` of single
layers) is one module, so one block. Module order is read from names only, never from the order the
keys arrive in, so a model loaded in ComfyUI and its file give the same layout. Every floating-point
tensor is merged, as for the declared transformer families.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

from .declaration import NO_BLOCK, Architecture
from .keys import unet_relative
from .transformers import VAE_KEPT

_NUMBERED = re.compile(r"^([^.]+)\.(\d+)\.(.+)$")
_OUTPUT_WORDS = {"final", "last", "out", "output", "head", "unpatchify"}
AUTO = "auto"  # the name of every automatic layout
RULE = ("automatic blocks: BASE, input-side modules, numbered stacks by index, output-side modules "
        "(names with final/last/out/output/head/unpatchify, or norm); alphabetical within each group")


def is_output_side(module: str) -> bool:
    """Whether a top-level module's name says it comes after the blocks."""
    return module == "norm" or bool(_OUTPUT_WORDS & set(module.lower().split("_")))


def _index_key(block: str) -> tuple:
    container, _, index = block.partition(".")
    return container, int(index) if index else -1


def auto_architecture(keys: Iterable[str], bare: bool) -> Optional[Architecture]:
    """Automatic blocks for these keys; None when no key belongs to a diffusion model."""
    modules: set[str] = set()
    numbered: dict[str, set[int]] = {}  # container -> indices
    stacks: set[str] = set()  # containers with an entry that holds a module (``blocks.0.attn.weight``)
    for key in keys:
        rel = key if bare else unet_relative(key)
        if rel is None:
            continue
        m = _NUMBERED.match(rel)
        if m:
            numbered.setdefault(m.group(1), set()).add(int(m.group(2)))
            if "." in m.group(3):
                stacks.add(m.group(1))
        else:
            modules.add(rel.split(".", 1)[0])
    modules |= set(numbered) - stacks  # a small container of single layers is one module
    modules -= stacks
    if not modules and not stacks:
        return None
    before = sorted(m for m in modules if not is_output_side(m))
    after = sorted(m for m in modules if is_output_side(m))
    stacked = sorted((f"{c}.{i}" for c in stacks for i in numbered[c]), key=_index_key)
    rules = [(re.escape(c) + r"\.(\d+)\.", c + ".{0}") for c in sorted(stacks)]
    rules += [(re.escape(b) + r"(?:\.|$)", b) for b in (*before, *after)]
    return Architecture(AUTO, "automatic blocks", ("BASE", *before, *stacked, *after), tuple(rules),
                        components=VAE_KEPT, unmatched_block=NO_BLOCK, bare=bare)
