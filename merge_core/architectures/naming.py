"""Released names of the parameters a ComfyUI host renames when it loads a model.

Flux.1, Flux.2 and Chroma files, as their authors release them, name every RMSNorm parameter
``…norm.scale``. ComfyUI 0.33 loads them as ``…norm.weight`` and keeps that name when it saves a model
(0.3.75 keeps ``.scale``). A family declares which parameters these are (Architecture.scale_norms), and
whatever compares key names across models or hosts (detection, block rules, file key matching) reads
them under the released name: a family is recognised by what its released files contain, whichever
ComfyUI built the model, and a file saved by 0.33 pairs key for key with an original download.
"""
from __future__ import annotations

import re
from typing import Optional

SCALE, WEIGHT = ".scale", ".weight"


def released_relative(scale_norms: Optional[re.Pattern], rel: str) -> str:
    """A diffusion-relative key under its released name (``….key_norm.weight`` -> ``….key_norm.scale``)
    when the family declares it an RMSNorm scale; any other key as it is."""
    if scale_norms is not None and rel.endswith(WEIGHT) and scale_norms.fullmatch(rel[:-len(WEIGHT)]):
        return rel[:-len(WEIGHT)] + SCALE
    return rel
