"""Key namings shared by every family: where the diffusion model, text encoders and VAE live.

Key names come in two namings and both are accepted everywhere: checkpoint naming
(``model.diffusion_model.*``, ``cond_stage_model.*``, ``conditioner.embedders.N.*``,
``first_stage_model.*``) and ComfyUI naming (``diffusion_model.*``, ``clip_l.*``, ``clip_g.*``, ...).
"""
from __future__ import annotations

import re
from typing import Optional

UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
TEXT_ENCODER_PREFIXES = (
    "cond_stage_model.", "conditioner.embedders.", "clip_l.", "clip_g.", "clip_h.",
    "text_encoders.", "te.",
)
VAE_PREFIXES = ("first_stage_model.", "vae.")


def unet_relative(key: str) -> Optional[str]:
    """The key relative to the diffusion model (``input_blocks.1...``), or None outside it."""
    for prefix in UNET_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return None


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
