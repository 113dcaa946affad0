"""The transformer families, declared: Flux.1, Chroma, Flux.2, SD3/SD3.5, HiDream, Z-Image/Lumina 2,
Qwen-Image and Wan 2.1/2.2 (VACE included).

Key names are relative to the diffusion model. Every floating-point tensor is merged (no name
filter); a key no rule names keeps A and is listed in the report; the VAE keeps A (SuperMerger's Flux
rule, applied to every family here: a merged VAE is never what these merges are for). Block counts
are the full-size model's until a model's keys size them (Architecture.sized).
"""
from __future__ import annotations

from .declaration import KEPT, NO_BLOCK, Architecture, LoraNaming, Numbered, Signature

VAE_KEPT = (("vae.", KEPT), ("first_stage_model.", KEPT))


def modules(*names: str) -> str:
    """A rule pattern for top-level modules (``x_embedder.`` or a bare parameter ``pos_embed``)."""
    return r"(?:" + "|".join(names) + r")(?:\.|$)"


def transformer(name: str, label: str, layout, rules, signature: Signature, components=(), **kw) -> Architecture:
    return Architecture(name, label, layout, rules, signature, components + VAE_KEPT,
                        unmatched_block=kw.pop("unmatched_block", NO_BLOCK), **kw)


DOUBLE, SINGLE = Numbered("double_blocks", "D", 19), Numbered("single_blocks", "S", 38)
# the signature is keyed to released files (``.scale``); a model a host loaded as ``.weight`` is read
# under that name through the family's scale_norms (naming.py)
FLUX_LIKE = (r"double_blocks\.0\.img_attn\.norm\.key_norm\.scale$",)
# the RMSNorm scales of released files: the query/key norms of every block (Flux.1, Flux.2, Chroma), and
# Chroma's guidance-layer norms and (Chroma Radiance) its NeRF head's norms
FLUX_NORMS = r"(?:double|single)_blocks\.\d+\.(?:(?:img|txt)_attn\.)?norm\.(?:query|key)_norm"
CHROMA_NORMS = FLUX_NORMS + r"|distilled_guidance_layer\.norms\.\d+|nerf_blocks\.\d+\.norm|nerf_final_layer\w*\.norm"


# diffusers/PEFT LoRA module prefix -> the family's own prefix: enough to name the block, not the exact key
FLUX_DIFFUSERS = (("single_transformer_blocks.", "single_blocks."), ("transformer_blocks.", "double_blocks."),
                  ("x_embedder.", "img_in."), ("context_embedder.", "txt_in."),
                  ("time_text_embed.guidance_embedder.", "guidance_in."),
                  ("time_text_embed.text_embedder.", "vector_in."), ("time_text_embed.", "time_in."),
                  ("time_guidance_embed.", "time_in."), ("norm_out.", "final_layer."), ("proj_out.", "final_layer."))


def encoders(*names: str) -> tuple[str, ...]:
    """Text-encoder key prefixes in both namings: a checkpoint's ``text_encoders.t5xxl.``, a CLIP's ``t5xxl.``."""
    return tuple(p + n + "." for n in names for p in ("text_encoders.", ""))

FLUX1 = transformer(
    "flux1", "Flux.1", ("CLIP", "T5", "IN", DOUBLE, SINGLE, "OUT"),
    ((r"\w+_in\.", "IN"), (modules("final_layer"), "OUT")),
    Signature(numbered=(("double_blocks", 0, None), ("single_blocks", 0, None)),
              all_of=(*FLUX_LIKE, r"img_in\.weight$"),
              none_of=(r"double_stream_modulation_img\.", r"distilled_guidance_layer\."),
              text_encoder_markers=encoders("t5xxl"), text_encoder_absent=encoders("clip_g")),
    (("text_encoders.clip_l.", "CLIP"), ("clip_l.", "CLIP"), ("text_encoders.t5xxl.", "T5"), ("t5xxl.", "T5")),
    outside_block="CLIP", base_blocks=2, scale_norms=FLUX_NORMS, detect_rank=42, text_encoder_rank=10,
    lora=LoraNaming(10, FLUX_DIFFUSERS, base_model_version="flux1", modelspec="flux-1-dev/lora"), keyset="flux1-dev")
CHROMA = transformer(
    "chroma", "Chroma", ("BASE", "IN", DOUBLE, SINGLE, "OUT"),
    ((r"\w+_in\.", "IN"), (modules("distilled_guidance_layer", r"nerf_image_embedder"), "IN"),
     (modules("final_layer", r"nerf_blocks", r"nerf_final_layer\w*"), "OUT")),
    Signature(numbered=(("double_blocks", 0, None), ("single_blocks", 0, None)),
              all_of=(*FLUX_LIKE, r"distilled_guidance_layer\.")), scale_norms=CHROMA_NORMS,
    detect_rank=41, lora=LoraNaming(70, FLUX_DIFFUSERS, group="flux1"), keyset="chroma")
FLUX2 = transformer(
    "flux2", "Flux.2", ("BASE", "IN", Numbered("double_blocks", "D", 8), Numbered("single_blocks", "S", 48), "OUT"),
    ((r"\w+_in\.", "IN"), (r"(?:double|single)_stream_modulation\w*\.", "IN"), (modules("final_layer"), "OUT")),
    Signature(numbered=(("double_blocks", 0, None), ("single_blocks", 0, None)),
              all_of=(*FLUX_LIKE, r"double_stream_modulation_img\.")), scale_norms=FLUX_NORMS,
    detect_rank=40, lora=LoraNaming(80, FLUX_DIFFUSERS, group="flux1"), keyset="flux2-dev",
    # Klein: the Flux.2 layout with fewer blocks (its own text encoder); a Klein with a dev file is refused by
    # their different block counts
    variants=(((8, 48), "Flux.2 dev"), ((5, 20), "Flux.2 Klein 4B"), ((8, 24), "Flux.2 Klein 9B")))
SD3 = transformer(
    "sd3", "SD3/SD3.5", ("BASE", "IN", Numbered("joint_blocks", "J", 38), "OUT"),
    ((modules("pos_embed", "x_embedder", "context_embedder", "y_embedder", "t_embedder", "register",
              "context_processor"), "IN"),
     (modules("final_layer"), "OUT")),
    Signature(numbered=(("joint_blocks", 0, None),), all_of=(r"x_embedder\.",),
              text_encoder_markers=encoders("t5xxl") + ("text_encoders.clip_g.",)),  # T5, or a checkpoint's CLIP-G
    detect_rank=50, text_encoder_rank=20, keyset="sd35-large",
    lora=LoraNaming(20, (("transformer_blocks.", "joint_blocks."), ("time_text_embed.", "t_embedder."),
                         ("norm_out.", "final_layer."), ("proj_out.", "final_layer.")),
                    base_model_version="sd3", modelspec="stable-diffusion-v3-medium/lora"))
HIDREAM = transformer(
    "hidream", "HiDream", ("BASE", "IN", Numbered("double_stream_blocks", "D", 16),
                           Numbered("single_stream_blocks", "S", 32), "OUT"),
    ((modules(r"\w+_embedder", "caption_projection"), "IN"), (modules("final_layer"), "OUT")),
    Signature(numbered=(("double_stream_blocks", 0, None), ("single_stream_blocks", 0, None))),
    detect_rank=60, lora=LoraNaming(40), keyset="hidream-full")
LUMINA2 = transformer(
    "lumina2", "Z-Image/Lumina 2", ("BASE", "IN", Numbered("noise_refiner", "NR", 2),
                                    Numbered("context_refiner", "CR", 2), Numbered("layers", "L", 30), "OUT"),
    ((modules("x_embedder", "t_embedder", "cap_embedder", r"\w+_pad_token"), "IN"),
     (modules("norm_final", "final_layer"), "OUT")),
    Signature(numbered=(("layers", 0, None), ("noise_refiner", 0, None)), all_of=(r"cap_embedder\.",),
              text_encoder_markers=encoders("qwen3_4b", "gemma2_2b")),
    detect_rank=70, text_encoder_rank=30, keyset="z-image",
    lora=LoraNaming(50, (("time_caption_embed.", "t_embedder."), ("norm_out.", "final_layer."))))
QWEN_IMAGE = transformer(
    "qwen_image", "Qwen-Image", ("BASE", "IN", Numbered("transformer_blocks", "T", 60), "OUT"),
    ((modules("img_in", "txt_norm", "txt_in", "time_text_embed"), "IN"), (modules("norm_out", "proj_out"), "OUT")),
    Signature(numbered=(("transformer_blocks", 0, None),), all_of=(r"txt_norm\.", r"img_in\."),
              text_encoder_markers=encoders("qwen25_7b")),
    detect_rank=80, text_encoder_rank=40, lora=LoraNaming(30), keyset="qwen-image")
WAN = transformer(
    "wan", "Wan 2.1/2.2", ("BASE", "IN", Numbered("blocks", "B", 40), Numbered("vace_blocks", "V", 0), "OUT"),
    ((modules("head"), "OUT"), (r".", "IN")),  # every other input-side module (embeddings, VACE/camera inputs)
    Signature(numbered=(("blocks", 0, None),), all_of=(r"head\.modulation$", r"patch_embedding\."),
              text_encoder_markers=encoders("umt5xxl")),
    detect_rank=90, text_encoder_rank=50, keyset="wan21-14b",
    lora=LoraNaming(60, (("condition_embedder.", "time_embedding."), ("proj_out.", "head."),
                         ("scale_shift_table.", "head.modulation."))))

DECLARED = (FLUX2, CHROMA, FLUX1, SD3, HIDREAM, LUMINA2, QWEN_IMAGE, WAN)
