"""Image transformer families: Krea 2, LongCat-Image and AuraFlow.

Declared as the families of transformers.py are (see its docstring for what every family shares). Flux.2
Klein 4B and 9B are size variants of Flux.2 (transformers.FLUX2), not families of their own.
"""
from __future__ import annotations

from .declaration import LoraNaming, Numbered, Signature
from .transformers import FLUX_DIFFUSERS, modules, transformer

# Krea 2: one stream of 28 blocks; its text adapter (``txtfusion``: two layer-wise blocks, the projector that
# mixes the text encoder's layers, two refiner blocks) is a group of blocks of its own between IN and the stack
KREA2 = transformer(
    "krea2", "Krea 2", ("BASE", "IN", Numbered("txtfusion.layerwise_blocks", "TL", 2), "TP",
                        Numbered("txtfusion.refiner_blocks", "TR", 2), Numbered("blocks", "B", 28), "OUT"),
    ((modules("first", "tmlp", "txtmlp", "tproj"), "IN"), (modules(r"txtfusion\.projector"), "TP"),
     (modules("last"), "OUT")),
    Signature(numbered=(("blocks", 0, None),), all_of=(r"txtfusion\.projector\.", r"first\.weight$")),
    detect_rank=100, keyset="krea2",
    lora=LoraNaming(100, (("transformer_blocks.", "blocks."), ("text_fusion.", "txtfusion."), ("img_in.", "first."),
                          ("time_embed.", "tmlp."), ("time_mod_proj.", "tproj."), ("txt_in.", "txtmlp."),
                          ("final_layer.", "last."))))
# LongCat-Image: ComfyUI's Flux class without the pooled vector and guidance inputs (Qwen2.5-VL text); Flux.1's
# signature also fits it, so it ranks before Flux.1 and rules out Flux.1's ``vector_in`` (every Flux.1 has it),
# Flux.2's shared modulation and Chroma's guidance layer. Its LoRA names are Flux.1's (one LoRA group). Its
# RMSNorm scales keep the names a file gives them: ComfyUI's LongCat-Image loads ``.weight`` and renames nothing,
# so no released ``.scale`` name is imposed on a merged file (no scale_norms).
LONGCAT_IMAGE = transformer(
    "longcat_image", "LongCat-Image", ("BASE", "IN", Numbered("double_blocks", "D", 10),
                                       Numbered("single_blocks", "S", 20), "OUT"),
    ((r"\w+_in\.", "IN"), (modules("final_layer"), "OUT")),
    Signature(numbered=(("double_blocks", 0, None), ("single_blocks", 0, None)),
              all_of=(r"double_blocks\.0\.img_attn\.norm\.key_norm\.(?:weight|scale)$", r"img_in\.weight$",
                      r"txt_in\.weight$"),
              none_of=(r"vector_in\.", r"guidance_in\.", r"double_stream_modulation_img\.",
                       r"distilled_guidance_layer\.", r"txt_norm\.")),
    detect_rank=39, keyset="longcat-image",
    lora=LoraNaming(110, FLUX_DIFFUSERS, group="flux1"))
# AuraFlow: 4 joint (double) and 32 single layers; the names of core's ModelMergeAuraflow sliders
AURAFLOW = transformer(
    "auraflow", "AuraFlow",
    ("BASE", "IN", Numbered("double_layers", "D", 4), Numbered("single_layers", "S", 32), "OUT"),
    ((modules("init_x_linear", "positional_encoding", "cond_seq_linear", "register_tokens", "t_embedder"), "IN"),
     (modules("modF", "final_linear"), "OUT")),
    Signature(numbered=(("double_layers", 0, None),), all_of=(r"cond_seq_linear\.", r"init_x_linear\.")),
    detect_rank=100, keyset="auraflow",
    lora=LoraNaming(120, (("joint_transformer_blocks.", "double_layers."),
                          ("single_transformer_blocks.", "single_layers."), ("pos_embed.proj.", "init_x_linear."),
                          ("pos_embed.", "positional_encoding."), ("context_embedder.", "cond_seq_linear."),
                          ("time_step_proj.", "t_embedder."), ("norm_out.", "modF."), ("proj_out.", "final_linear."))))

DECLARED = (LONGCAT_IMAGE, KREA2, AURAFLOW)
