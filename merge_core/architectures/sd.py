"""The U-Net families: SD1, SD2 and SDXL, declared with SuperMerger's block rules (spec §4).

``time_embed`` and ``label_emb`` belong to IN00, the final ``out.`` layers to the last OUT block,
and every key outside the U-Net (text encoders, VAE, anything else) to BASE.
"""
from __future__ import annotations

from .declaration import Architecture, Signature


def unet_blocks(n_in_out: int) -> tuple[str, ...]:
    """BASE, IN00..IN{n-1}, M00, OUT00..OUT{n-1}: SuperMerger's weight-list order."""
    return ("BASE",) + tuple(f"IN{i:02d}" for i in range(n_in_out)) + ("M00",) + tuple(
        f"OUT{i:02d}" for i in range(n_in_out))


def unet_rules(last_out: str) -> tuple[tuple[str, str], ...]:
    return (
        (r".*time_embed", "IN00"),
        (r"label_emb", "IN00"),
        (r"out\.", last_out),
        (r"input_blocks\.(\d+)\.", "IN{0:02d}"),
        (r"middle_block\.", "M00"),
        (r"output_blocks\.(\d+)\.", "OUT{0:02d}"),
    )


SD1_BLOCKS = unet_blocks(12)
SDXL_BLOCKS = unet_blocks(9)

SD1 = Architecture(
    "sd1", "SD1.x", SD1_BLOCKS, unet_rules("OUT11"),
    Signature(numbered=(("input_blocks", 9, None),),
              text_encoder_markers=("cond_stage_model.transformer.", "clip_l.")))
SD2 = Architecture(
    "sd2", "SD2.x", SD1_BLOCKS, unet_rules("OUT11"),
    Signature(numbered=(("input_blocks", 9, None),),
              text_encoder_markers=("cond_stage_model.model.", "clip_h."), needs_text_encoder=True))
SDXL = Architecture(
    "sdxl", "SDXL", SDXL_BLOCKS, unet_rules("OUT08"),
    Signature(numbered=(("input_blocks", 0, 8),), any_of=(r"label_emb", r"input_blocks\.8\."),
              text_encoder_markers=("conditioner.embedders.1.", "clip_g.")))
