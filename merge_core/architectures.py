"""Architectures as data: block lists, key -> block rules and detection.

Key names come in two namings and both are accepted everywhere:
checkpoint naming (``model.diffusion_model.*``, ``cond_stage_model.*``,
``conditioner.embedders.N.*``, ``first_stage_model.*``) and ComfyUI naming
(``diffusion_model.*``, ``clip_l.*``, ``clip_g.*``, ``clip_h.*``).
Block rules follow SuperMerger's (spec §4): ``time_embed`` and ``label_emb``
belong to IN00, the final ``out.`` layers to the last OUT block, and every key
outside the U-Net (text encoders, VAE, anything else) to BASE.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from .errors import MergeInputError

UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
TEXT_ENCODER_PREFIXES = (
    "cond_stage_model.", "conditioner.embedders.", "clip_l.", "clip_g.", "clip_h.",
    "text_encoders.", "te.",
)
VAE_PREFIXES = ("first_stage_model.", "vae.")

_INPUT = re.compile(r"^input_blocks\.(\d+)\.")
_OUTPUT = re.compile(r"^output_blocks\.(\d+)\.")


_SPLIT_IN_PROJ = re.compile(r"^(clip_[gh]\.transformer\.text_model\.encoder\.layers\.\d+\.self_attn\.)"
                            r"[qkv]_proj\.(weight|bias)$")


def fused_tensor_of(key: str) -> str:
    """The checkpoint tensor a key is one part of, in a name shared by its parts.

    ComfyUI splits each OpenCLIP attention ``in_proj_weight`` / ``in_proj_bias`` (SD2's
    CLIP-H, SDXL's CLIP-G) into q/k/v_proj; whole-tensor statistics (the cosine calc
    modes') must see the three parts as the one tensor a checkpoint stores. Any other
    key is its own tensor.
    """
    m = _SPLIT_IN_PROJ.match(key)
    return f"{m.group(1)}in_proj_{m.group(2)}" if m else key


def unet_relative(key: str) -> Optional[str]:
    """The key relative to the U-Net (``input_blocks.1...``), or None outside it."""
    for prefix in UNET_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return None


def _unet_block(rel: str, last_out: str) -> Optional[str]:
    if "time_embed" in rel or rel.startswith("label_emb"):
        return "IN00"
    if rel.startswith("out."):
        return last_out
    m = _INPUT.match(rel)
    if m:
        return f"IN{int(m.group(1)):02d}"
    if rel.startswith("middle_block."):
        return "M00"
    m = _OUTPUT.match(rel)
    if m:
        return f"OUT{int(m.group(1)):02d}"
    return None


@dataclass(frozen=True)
class Architecture:
    """One model family: its block list (weight-list order) and key -> block rule."""

    name: str
    label: str
    blocks: tuple[str, ...]
    unet_block: Callable[[str], Optional[str]]

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def block_of(self, key: str) -> str:
        """Block id of a key in either naming; BASE for everything outside the U-Net."""
        rel = unet_relative(key)
        if rel is None:
            return "BASE"
        block = self.unet_block(rel)
        return block if block is not None else "BASE"

    def block_index(self, key: str) -> int:
        return self.blocks.index(self.block_of(key))


SD1_BLOCKS = ("BASE",) + tuple(f"IN{i:02d}" for i in range(12)) + ("M00",) + tuple(
    f"OUT{i:02d}" for i in range(12))
SDXL_BLOCKS = ("BASE",) + tuple(f"IN{i:02d}" for i in range(9)) + ("M00",) + tuple(
    f"OUT{i:02d}" for i in range(9))

SD1 = Architecture("sd1", "SD1.x", SD1_BLOCKS, lambda rel: _unet_block(rel, "OUT11"))
SD2 = Architecture("sd2", "SD2.x", SD1_BLOCKS, lambda rel: _unet_block(rel, "OUT11"))
SDXL = Architecture("sdxl", "SDXL", SDXL_BLOCKS, lambda rel: _unet_block(rel, "OUT08"))

ARCHITECTURES = {a.name: a for a in (SD1, SD2, SDXL)}


def detect(keys: Iterable[str]) -> Optional[Architecture]:
    """Guess the architecture from key names alone (None when nothing is recognised).

    The U-Net layout decides the block map: twelve input blocks is the SD1/SD2
    layout, nine is SDXL. Text-encoder names then tell SD2 from SD1, and decide on
    their own for a text-encoder-only source (a ComfyUI CLIP).
    """
    max_input = -1
    has_label_emb = False
    sdxl_te = sd2_te = sd1_te = False
    for key in keys:
        rel = unet_relative(key)
        if rel is not None:
            m = _INPUT.match(rel)
            if m:
                max_input = max(max_input, int(m.group(1)))
            elif rel.startswith("label_emb"):
                has_label_emb = True
            continue
        if key.startswith(("conditioner.embedders.1.", "clip_g.")):
            sdxl_te = True
        elif key.startswith(("cond_stage_model.model.", "clip_h.")):
            sd2_te = True
        elif key.startswith(("cond_stage_model.transformer.", "clip_l.")):
            sd1_te = True
    if max_input >= 9:
        return SD2 if sd2_te else SD1
    if max_input >= 0:
        return SDXL if (has_label_emb or sdxl_te or max_input == 8) else None
    if sdxl_te:
        return SDXL
    if sd2_te:
        return SD2
    if sd1_te:
        return SD1
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
