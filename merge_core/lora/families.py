"""LoRA module names on the declared transformer families (every family whose declaration gives its LoRA
naming a rank): the block of a module, the family of a LoRA file, and the names extraction writes.

A module name is turned into a key relative to the diffusion model, then the family's own declaration
(Architecture.block_of) names the block, so LoRA block weights follow the same rules as checkpoint merges.
Namings read: kohya (``lora_unet_double_blocks_0_img_attn_qkv``; underscores are resolved against the
family's numbered containers and top-level modules), diffusers/PEFT (``transformer.single_transformer_blocks.3
.attn.to_q``, OneTrainer's ``lora_transformer_…``; translated by the prefix table of the family's
declaration, LoraNaming.diffusers) and
ComfyUI's own (``diffusion_model.double_blocks.0.img_attn.qkv``). Text-encoder modules go to the base slot
(Flux.1: CLIP-L to CLIP, T5 to T5).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import re
from functools import lru_cache
from typing import Iterable, Optional

from ..architectures import ARCHITECTURES, KEPT, NO_BLOCK, Architecture, unet_relative
from ..architectures.registry import KEYSETS

_DOTTED_PREFIXES = ("base_model.model.transformer.", "transformer.", "base_model.model.", "unet.")
_UNDERSCORE_PREFIXES = ("lora_unet_", "lora_transformer_", "lycoris_")
_TEXT_ENCODER = re.compile(r"^(lora_te\d?_|text_encoder(_\d)?\.|text_encoders\.|te\d?\.)")
_T5 = re.compile(r"^(lora_te[23]_|text_encoder_2\.|text_encoders\.t5xxl\.)")
# the families LoRA names are resolved against, in the order that breaks ties (each declaration's
# LoraNaming.rank: a diffusers Flux LoRA that trains only double blocks looks like SD3 and Qwen-Image too)
LORA_FAMILIES: tuple[Architecture, ...] = tuple(sorted(
    (a for a in ARCHITECTURES.values() if a.lora.rank is not None), key=lambda a: a.lora.rank or 0))
LORA_ORDER = tuple(a.name for a in LORA_FAMILIES)


def is_family(arch: Architecture) -> bool:
    """A declared transformer family or automatic blocks (not SD1/SD2/SDXL, whose LoRA names keys.py reads)."""
    return not arch.name_filter


def _underscored(body: str, arch: Architecture) -> Optional[str]:
    """``double_blocks_0_img_attn_qkv`` -> ``double_blocks.0.img_attn_qkv``: a numbered container of the
    family, else the shortest leading module name (``final_layer``, ``img_in``) one of its rules names."""
    for part in sorted(arch.numbered, key=lambda p: -len(p.container)):
        stem = (part.container + part.separator).replace(".", "_")
        m = re.match(re.escape(stem) + r"(\d+)(?:_|$)", body)
        if m:
            return f"{part.container}{part.separator}{m.group(1)}.{body[m.end():]}"
    words = body.split("_")
    for i in range(1, len(words) + 1):
        rel = "_".join(words[:i]) + "." + "_".join(words[i:])
        if _rule_block(rel, arch) not in (None, NO_BLOCK):
            return rel
    return None


def _rule_block(rel: str, arch: Architecture) -> Optional[str]:
    block = arch.block_of("diffusion_model." + rel)
    return block if block in arch.blocks or block == NO_BLOCK else None


def _own_prefix(name: str, arch: Architecture, sep: str) -> str:
    """A diffusers-named module in the family's own naming (``sep``: "." dotted, "_" kohya-style)."""
    probe = name + sep  # a module may be the prefix itself (``x_embedder``)
    for diffusers, own in arch.lora.diffusers:
        if probe.startswith(diffusers.replace(".", sep)):
            return (own.replace(".", sep) + probe[len(diffusers):])[:-1]
    return name


def relative_name(name: str, arch: Architecture) -> Optional[str]:
    """The module's name relative to the family's diffusion model (dotted), or None outside it."""
    rel = unet_relative(name)
    if rel is not None:
        return rel
    dotted = next((name[len(p):] for p in _DOTTED_PREFIXES if name.startswith(p)), None)
    if dotted is not None:
        return _own_prefix(dotted, arch, ".")
    body = next((name[len(p):] for p in _UNDERSCORE_PREFIXES if name.startswith(p)), None)
    return None if body is None else _underscored(_own_prefix(body, arch, "_"), arch)


def module_block(name: str, arch: Architecture) -> Optional[str]:
    """Block id of a LoRA module on a family (the base slots for text encoders); None when unknown."""
    if _TEXT_ENCODER.match(name):
        return arch.blocks[1] if arch.base_blocks > 1 and _T5.match(name) else arch.blocks[0]
    rel = relative_name(name, arch)
    if rel is None:
        return None
    block = arch.block_of("diffusion_model." + rel + ".weight")
    return block if block in arch.blocks else None


def _numbered_hits(names: list[str], arch: Architecture) -> Optional[int]:
    """How many names fall into a numbered block of ``arch``'s full-size layout; None when some
    diffusion-model name has no block there."""
    hits = 0
    numbered = {i for part in arch.numbered for i in part.ids(part.default)}
    for name in names:
        if _TEXT_ENCODER.match(name):
            continue
        rel = relative_name(name, arch)
        block = None if rel is None else arch.block_of("diffusion_model." + rel + ".weight")
        if block in (None, NO_BLOCK, KEPT):
            return None
        hits += block in numbered
    return hits


def sized_for_lora(arch: Architecture, names: Iterable[str]) -> Architecture:
    """The full-size layout (SuperMerger's 61 slots for Flux.1), widened when a LoRA names a higher index."""
    found: dict[str, int] = {}
    for name in names:
        rel = relative_name(name, arch) or ""
        for part in arch.numbered:
            m = re.match(part.index_pattern, rel)
            if m:
                found[part.container] = max(found.get(part.container, 0), int(m.group(1)) + 1)
    counts = tuple((p.container, max(p.default, found.get(p.container, 0))) for p in arch.numbered)
    return dataclasses.replace(arch, counts=counts)


def lora_family(names: Iterable[str]) -> Optional[Architecture]:
    """The transformer family a LoRA's module names belong to (full-size layout), None when none fits:
    every diffusion-model module must have a block there, and at least one a numbered one; the family
    explaining the most modules wins. kohya and ComfyUI names are matched against each family's full-size
    key inventory first (block indices aside): the family whose model has the most of these modules wins, so a
    family with a catch-all rule (Wan's input side explains any name) or more blocks by default does not take
    another's LoRA; diffusers names, translated by prefix only, go by the count, then by LORA_ORDER."""
    names = list(names)
    fitting = [(hits, arch) for arch in LORA_FAMILIES if (hits := _numbered_hits(names, arch))]
    if not fitting:
        return None
    if len(fitting) == 1:  # no choice to make: no inventory is read
        return sized_for_lora(fitting[0][1], names)
    scored = [(_known_modules(names, arch), hits, arch) for hits, arch in fitting]
    best = max(scored, key=lambda s: s[:2])[2]  # max keeps the first of equals: LORA_ORDER breaks ties
    return sized_for_lora(best, names)


_DIGITS = re.compile(r"\d+")


@lru_cache(maxsize=None)
def _inventory_modules(keyset: str) -> frozenset[str]:
    """The weights of a family's full-size key inventory as underscored module names with their indices
    elided (``double_blocks_N_img_attn_qkv``), the form a kohya name is compared in."""
    path = KEYSETS / f"{keyset}.json.gz"
    if not keyset or not path.is_file():
        return frozenset()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        keys = json.load(f)
    rels = ((unet_relative(k) or k) for k in keys)
    return frozenset(_DIGITS.sub("N", rel[:-len(".weight")].replace(".", "_")) for rel in rels
                     if rel.endswith(".weight"))


def _known_modules(names: list[str], arch: Architecture) -> int:
    """How many of a LoRA's kohya or ComfyUI-named modules the family's full-size model has (any size)."""
    known = _inventory_modules(arch.keyset)
    count = 0
    for name in names:
        if name.startswith(("lora_unet_", "lycoris_")) or unet_relative(name) is not None:
            rel = relative_name(name, arch)
            count += rel is not None and _DIGITS.sub("N", rel.replace(".", "_")) in known
    return count


def base_model_version(arch: Architecture) -> str:
    """kohya's ``ss_base_model_version`` that extraction writes for the family (metadata.py)."""
    return arch.lora.base_model_version or arch.name


def modelspec_architecture(arch: Architecture) -> str:
    """SAI's ``modelspec.architecture`` that extraction writes for the family."""
    return arch.lora.modelspec or f"{arch.name}/lora"


def metadata_family(metadata, names: Iterable[str]) -> Optional[Architecture]:
    """The transformer family a LoRA's own metadata names (``modelspec.architecture`` or
    ``ss_base_model_version``, as extraction writes them), sized for its names; None when the metadata
    names none, or names one that does not explain the modules (metadata copied from another LoRA).

    Names alone cannot tell a Qwen-Image LoRA of up to 19 blocks from a Flux.1 one (both have
    ``transformer_blocks.N``): the file's own word decides where it has one."""
    if not metadata:
        return None
    claimed = set()
    version = metadata.get("ss_base_model_version")
    spec = metadata.get("modelspec.architecture")
    for family in LORA_FAMILIES:
        if version in {family.name, base_model_version(family)} or \
                spec in {f"{family.name}/lora", modelspec_architecture(family)}:
            claimed.add(family)
    if len(claimed) != 1:
        return None
    arch = claimed.pop()
    names = list(names)
    if not _numbered_hits(names, arch):  # None (a module outside the family) or no numbered block
        return None
    return sized_for_lora(arch, names)


def family_module(key: str, arch: Architecture, shape: tuple[int, ...], conv: bool) -> Optional[str]:
    """kohya name (``lora_unet_<key with _>``, which ComfyUI maps for every model) of a diffusion-model
    weight a LoRA can hold: linear layers, and with ``conv`` 2-D convolutions; None otherwise."""
    rel = arch.relative(key)
    if rel is None or not rel.endswith(".weight") or not (len(shape) == 2 or (conv and len(shape) == 4)):
        return None
    if arch.block_of(key) not in arch.blocks:
        return None
    return "lora_unet_" + rel[:-len(".weight")].replace(".", "_")




def explained_by(names: Iterable[str], model: Architecture) -> bool:
    """Whether a model's own family explains a LoRA's module names (every diffusion-model module has a block
    there, one at least a numbered one). Names alone cannot tell some families apart (a HunyuanVideo LoRA of its
    blocks reads as Flux.1, an LTX-2 LoRA of its video blocks as LTXV): such a LoRA is the model's own."""
    if not is_family(model) or model.name == "auto":
        return False
    return bool(_numbered_hits(list(names), model))


def fits_model(lora: Optional[Architecture], model: Architecture) -> bool:
    """Whether a LoRA of family ``lora`` may be applied to a model of family ``model``. Names alone cannot
    tell SD1 from SD2, nor Flux.1 from Chroma and Flux.2, so those count as one; an unrecognised LoRA or a
    model on automatic blocks is left to ComfyUI's key map."""
    if lora is None or model.name == "auto":
        return True
    return lora.lora_group == model.lora_group
