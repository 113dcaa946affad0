"""Every declared family, and detection by walking the declarations' signatures."""
from __future__ import annotations

import re
from typing import Iterable, Optional

from ..errors import MergeInputError
from .declaration import Architecture
from .keys import unet_relative
from .sd import SD1, SD2, SDXL

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (SD1, SD2, SDXL)}
# When several signatures match, the first family here wins: a family whose text encoders include
# another's (SDXL has SD1's CLIP-L) or that needs its text encoder to be told apart (SD2) comes first.
DETECTION_ORDER: tuple[Architecture, ...] = (SDXL, SD2, SD1)


def _highest_indices(rel_keys: list[str], containers: set[str]) -> dict[str, int]:
    highest: dict[str, int] = {}
    for container in containers:
        pattern = re.compile(re.escape(container) + r"\.(\d+)\.")
        indices = [int(m.group(1)) for m in map(pattern.match, rel_keys) if m]
        if indices:
            highest[container] = max(indices)
    return highest


def detect(keys: Iterable[str]) -> Optional[Architecture]:
    """Guess the family from key names alone (None when nothing is recognised).

    The diffusion model's layout (its numbered containers and marker keys) decides; a text encoder
    breaks ties between families with the same layout, and decides on its own for a source that has
    no diffusion-model keys (a ComfyUI CLIP).
    """
    rel_keys: list[str] = []
    outside: list[str] = []
    for key in keys:
        rel = unet_relative(key)
        (outside if rel is None else rel_keys).append(key if rel is None else rel)
    families = DETECTION_ORDER

    def has_text_encoder(arch: Architecture) -> bool:
        markers = arch.signature.text_encoder_markers
        return bool(markers) and any(k.startswith(markers) for k in outside)

    containers = {c for a in families for c, _, _ in a.signature.numbered}
    highest = _highest_indices(rel_keys, containers)
    if highest:
        candidates = []
        for arch in families:
            sig = arch.signature
            if not sig.numbered or not all(
                    c in highest and lo <= highest[c] and (hi is None or highest[c] <= hi) for c, lo, hi in sig.numbered):
                continue
            te = has_text_encoder(arch)
            if sig.needs_text_encoder and not te:
                continue
            if sig.any_of and not te and not any(re.match(p, k) for p in sig.any_of for k in rel_keys):
                continue
            candidates.append((arch, te))
        with_te = [a for a, te in candidates if te]
        return (with_te or [a for a, _ in candidates] or [None])[0]
    for arch in families:
        if has_text_encoder(arch):
            return arch
    return None


def require_compatible(arch_a: Optional[Architecture], arch_b: Optional[Architecture],
                       input_name: str) -> None:
    if arch_a is None or arch_b is None:
        return
    if arch_a.name != arch_b.name and not {arch_a.name, arch_b.name} <= {"sd1", "sd2"}:
        raise MergeInputError(
            input_name,
            f"is an {arch_b.label} model but model A is {arch_a.label}.",
            "merge models of the same architecture (SD1 with SD1, SDXL with SDXL).")
