"""The U-Net families: SD1, SD2 and SDXL, declared with SuperMerger's block rules (docs/merging.md#block-weights).

``time_embed`` and ``label_emb`` belong to IN00, the final ``out.`` layers to the last OUT block,
and every key outside the U-Net (text encoders, VAE, anything else) to BASE.
"""
from __future__ import annotations

from .declaration import Architecture, LoraNaming, Signature


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
    "sd1", "SD1.x", SD1_BLOCKS, unet_rules("OUT11"), name_filter=True,
    signature=Signature(numbered=(("input_blocks", 9, None),),
                        text_encoder_markers=("cond_stage_model.transformer.", "clip_l.")),
    detect_rank=30, text_encoder_rank=80, keyset="sd1",
    lora=LoraNaming(base_model_version="sd_v1", modelspec="stable-diffusion-v1/lora"))
SD2 = Architecture(
    "sd2", "SD2.x", SD1_BLOCKS, unet_rules("OUT11"), name_filter=True,
    signature=Signature(numbered=(("input_blocks", 9, None),),
                        text_encoder_markers=("cond_stage_model.model.", "clip_h."), needs_text_encoder=True),
    detect_rank=20, text_encoder_rank=70, keyset="sd1",
    lora=LoraNaming(group="sd1", base_model_version="sd_v2", modelspec="stable-diffusion-v2-512/lora"))
SDXL = Architecture(
    "sdxl", "SDXL", SDXL_BLOCKS, unet_rules("OUT08"), name_filter=True,
    signature=Signature(numbered=(("input_blocks", 0, 8),), any_of=(r"label_emb", r"input_blocks\.8\."),
                        text_encoder_markers=("conditioner.embedders.1.", "clip_g.")),
    detect_rank=10, text_encoder_rank=60, keyset="sdxl",
    lora=LoraNaming(base_model_version="sdxl_base_v1-0", modelspec="stable-diffusion-xl-v1-base/lora"))


def _extended_blocks() -> tuple[str, ...]:
    """SuperMerger's 110 fine names (docs/merging.md#sdxl-blocks-and-the-110-value-extended-list), in the order of a
    110-value weight list."""
    def run(head: str) -> list[str]:
        return [f"{head}{t}" for t in range(10)]
    return tuple(["CLIPL", "CLIPG", "IN0", "IN00", "IN10", "IN20", "IN30", "IN40", "IN41", "IN410", "IN411",
                  "IN50", "IN51", "IN510", "IN511", "IN60", "IN70", "IN71", *run("IN71"), "IN80", "IN81", *run("IN81"),
                  "MID00", "MID10", *run("MID10"), "MID20", "OUT00", "OUT01", *run("OUT01"), "OUT10", "OUT11",
                  *run("OUT11"), "OUT20", "OUT21", *run("OUT21"), "OUT22", "OUT30", "OUT31", "OUT310", "OUT311",
                  "OUT40", "OUT41", "OUT410", "OUT411", "OUT50", "OUT51", "OUT510", "OUT511", "OUT52", "OUT60",
                  "OUT70", "OUT80", "OUT9", "TIME", "LABEL", "VAE"])


# SDXL's extended layout (SuperMerger 2025-11-27, docs/merging.md#sdxl-blocks-and-the-110-value-extended-list): a
# 110-value list gives each key the
# value of its fine name — section, block and sub-block digits, plus the transformer block. The VAE's
# coarse block is BASE, so it takes the first value (CLIPL's), not the VAE slot, as in SuperMerger.
SDXL_EXTENDED = Architecture(
    "sdxl_extended", "SDXL (110 extended)", _extended_blocks(),
    ((r"label_emb", "LABEL"), (r".*time_embed", "TIME"), (r"out\.", "OUT9"),
     (r"input_blocks\.(\d)\.(\d)\.transformer_blocks\.(\d+)\.", "IN{0}{1}{2}"),
     (r"input_blocks\.(\d)\.(\d)\.", "IN{0}{1}"),
     (r"middle_block\.(\d)\.transformer_blocks\.(\d+)\.", "MID{0}0{1}"), (r"middle_block\.(\d)\.", "MID{0}0"),
     (r"output_blocks\.(\d)\.(\d)\.transformer_blocks\.(\d+)\.", "OUT{0}{1}{2}"),
     (r"output_blocks\.(\d)\.(\d)\.", "OUT{0}{1}")),
    components=(("conditioner.embedders.0.", "CLIPL"), ("clip_l.", "CLIPL"),
                ("conditioner.embedders.1.", "CLIPG"), ("clip_g.", "CLIPG")),
    outside_block="CLIPL", unmatched_block="CLIPL", name_filter=True)
