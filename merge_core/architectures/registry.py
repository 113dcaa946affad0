"""Every declared family, and detection by walking the declarations' signatures.

Detection reads the diffusion model's layout (numbered containers and marker keys) in any of the three
namings: ``model.diffusion_model.`` (checkpoints), ``diffusion_model.`` (ComfyUI) or bare keys (a
diffusion-model-only file, read as such only when no key carries a prefix), with the parameter names of
released files or those a host renamed on load (naming.py). The family found is sized
to the model (Architecture.sized); a model no declaration matches gets automatic blocks
(`detect_or_auto`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional

from ..errors import MergeInputError
from .auto import auto_architecture
from .declaration import Architecture, has_prefixed_keys
from .keys import unet_relative
from .sd import SD1, SD2, SDXL, SDXL_EXTENDED
from . import cosmos, image_models, transformers, video_models

TRANSFORMERS: tuple[Architecture, ...] = (*transformers.DECLARED, *image_models.DECLARED, *cosmos.DECLARED,
                                          *video_models.DECLARED)
FAMILIES: tuple[Architecture, ...] = (SD1, SD2, SDXL, *TRANSFORMERS)
# the full-size models' key inventories ({key: [shape, dtype]}, gzipped JSON), named by each family's keyset
KEYSETS = Path(__file__).resolve().parent / "keysets"
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in FAMILIES}
# Layouts a block-weight list may select instead of its family's own (by its length).
ALTERNATE_LAYOUTS: dict[str, tuple[Architecture, ...]] = {"sdxl": (SDXL_EXTENDED,)}
# When several signatures match, the family of the lowest detect_rank wins (each declaration says why).
DETECTION_ORDER: tuple[Architecture, ...] = tuple(sorted(FAMILIES, key=lambda a: a.detect_rank))
# A text-encoder-only source (a ComfyUI CLIP) is named by its encoders, in text_encoder_rank order.
TEXT_ENCODER_ORDER: tuple[Architecture, ...] = tuple(sorted(
    (a for a in FAMILIES if a.text_encoder_rank is not None), key=lambda a: a.text_encoder_rank or 0))


def _highest_indices(rel_keys: list[str], containers: set[str]) -> dict[str, int]:
    highest: dict[str, int] = {}
    for container in containers:
        pattern = re.compile(re.escape(container) + r"\.(\d+)\.")
        indices = [int(m.group(1)) for m in map(pattern.match, rel_keys) if m]
        if indices:
            highest[container] = max(indices)
    return highest


def _split(keys: Iterable[str]) -> tuple[list[str], list[str], bool]:
    """(diffusion-relative keys, other keys, bare): bare keys count as the diffusion model only when no
    key has a diffusion prefix."""
    keys = list(keys)
    if not has_prefixed_keys(keys):
        return keys, keys, True
    rel_keys: list[str] = []
    outside: list[str] = []
    for key in keys:
        rel = unet_relative(key)
        (outside if rel is None else rel_keys).append(key if rel is None else rel)
    return rel_keys, outside, False


def _layout_matches(arch: Architecture, rel_keys: list[str], highest: dict[str, int], te: bool) -> bool:
    sig = arch.signature
    if not sig.numbered or not all(
            c in highest and lo <= highest[c] and (hi is None or highest[c] <= hi) for c, lo, hi in sig.numbered):
        return False
    if sig.needs_text_encoder and not te:
        return False
    if arch.scale_norms:  # the signature names released files' keys: read a host's renamed ones as such
        rel_keys = [arch.released_relative(k) for k in rel_keys]

    def present(pattern: str) -> bool:
        regex = re.compile(pattern)
        return any(regex.match(k) for k in rel_keys)
    if sig.any_of and not te and not any(map(present, sig.any_of)):
        return False
    return all(map(present, sig.all_of)) and not any(map(present, sig.none_of))


def detect(keys: Iterable[str]) -> Optional[Architecture]:
    """Guess the family from key names alone, sized to the model (None when nothing is recognised).

    The diffusion model's layout (its numbered containers and marker keys) decides; a text encoder
    breaks ties between families with the same layout, and decides on its own for a source that has
    no diffusion-model keys (a ComfyUI CLIP).
    """
    keys = list(keys)
    rel_keys, outside, bare = _split(keys)
    families = DETECTION_ORDER

    def has_text_encoder(arch: Architecture) -> bool:
        sig = arch.signature
        return (bool(sig.text_encoder_markers) and any(k.startswith(sig.text_encoder_markers) for k in outside)
                and not (sig.text_encoder_absent and any(k.startswith(sig.text_encoder_absent) for k in outside)))

    containers = {c for a in families for c, _, _ in a.signature.numbered}
    highest = _highest_indices(rel_keys, containers)
    if highest:
        candidates = [(a, te) for a in families
                      if _layout_matches(a, rel_keys, highest, te := has_text_encoder(a))]
        with_te = [a for a, te in candidates if te]
        found = next(iter(with_te or [a for a, _ in candidates]), None)
        if found is not None:
            return found.sized(keys, bare) if found.numbered else _with_bare(found, bare)
    for arch in TEXT_ENCODER_ORDER:
        if has_text_encoder(arch):
            return arch
    return None


def _with_bare(arch: Architecture, bare: bool) -> Architecture:
    return arch.sized((), bare) if bare else arch


def detect_or_auto(keys: Iterable[str]) -> Optional[Architecture]:
    """The declared family of these keys, else automatic blocks (None when there is no diffusion model)."""
    keys = list(keys)
    found = detect(keys)
    if found is not None:
        return found
    return auto_architecture(keys, not has_prefixed_keys(keys))


def require_compatible(arch_a: Optional[Architecture], arch_b: Optional[Architecture],
                       input_name: str) -> None:
    """Models of two families, or of two sizes of one family, cannot be merged key by key."""
    if arch_a is None or arch_b is None:
        return
    if arch_a.name != arch_b.name and not {arch_a.name, arch_b.name} <= {"sd1", "sd2"}:
        raise MergeInputError(
            input_name,
            f"is {_article(arch_b.label)} {arch_b.label} model but model A is {arch_a.label}: "
            "two different families cannot be merged.",
            f"merge models of the same family ({arch_a.label} with {arch_a.label}).")
    if arch_a.blocks != arch_b.blocks:
        raise MergeInputError(
            input_name,
            f"has the {arch_b.label} layout {arch_b.layout_text()} but model A has {arch_a.layout_text()}.",
            "merge models of the same size (the same number of blocks).")


def _article(label: str) -> str:
    """'an SDXL' (read as letters), 'an automatic', 'a Flux.1'."""
    return "an" if label.startswith(("SD", "a", "A", "E", "I", "O", "U")) else "a"
