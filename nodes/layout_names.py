"""Layout names, as the block-weight editor and the merge nodes write and read them: ``sd1``, ``sdxl``, a
transformer family at full size (``flux1``), or a family with the block counts read from a model (``sd3:24``).

A merge node names the layout it used (sized_name, on its ui after a run) and the HTTP routes read the name
back (layout_arch); both come from here, so neither imports the other.
"""
from __future__ import annotations

import dataclasses
import re
from functools import lru_cache
from typing import Optional

from ..merge_core.architectures import SD1, SDXL, TRANSFORMERS, Architecture, Numbered

LAYOUTS = {"sd1": SD1, "sdxl": SDXL}  # SD2 shares SD1's block list; "auto" block-weight checks try these
# The transformer families at full size (a connected model's own layout comes from /merge_suite/layout).
FAMILIES: dict[str, Architecture] = {a.name: a for a in TRANSFORMERS}
ALL_LAYOUTS = LAYOUTS | FAMILIES


def sized_name(arch: Architecture) -> Optional[str]:
    """The layout name a merge node reports after a run: its family with the counts read from the model,
    in layout order (``sd3:24`` for SD3-medium's 24 joint blocks, ``flux1:19,38``), so that the editor
    shows the layout the node used rather than the full-size one. None for the SD layouts."""
    if arch.name not in FAMILIES:
        return None
    counts = dict(arch.counts)
    return arch.name + ":" + ",".join(str(counts.get(p.container, p.default)) for p in arch.numbered)


@lru_cache(maxsize=64)
def layout_arch(name: str) -> Optional[Architecture]:
    """A layout by name: SD, a transformer family at full size, or a family sized as sized_name writes it."""
    family, sized, counts = name.partition(":")
    arch = ALL_LAYOUTS.get(family)
    if not sized or arch is None:
        return None if sized else arch
    parts = counts.split(",")
    if family not in FAMILIES or len(parts) != len(arch.numbered) or \
            not all(re.fullmatch(r"[0-9]{1,3}", n) for n in parts):
        return None
    if any(int(n) > max_count(p) for p, n in zip(arch.numbered, parts)):
        return None  # no real model of the family has that many blocks: each check would cost their number
    return dataclasses.replace(arch, counts=tuple((p.container, int(n)) for p, n in zip(arch.numbered, parts)))


def max_count(part: Numbered) -> int:
    """The most blocks a sized layout may give a numbered container: twice the full-size model's count
    (16 for a container the full-size model lacks, such as Wan's VACE blocks), room for a larger variant."""
    return max(2 * part.default, 16)
