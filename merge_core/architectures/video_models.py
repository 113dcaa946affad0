"""Video transformer families: LTXV, LTX-2 (audio-video), Mochi, HunyuanVideo (and HunyuanImage 2.1, the same
class) and Kandinsky 5.

Declared as the families of transformers.py are (see its docstring for what every family shares). LTX-2's
audio side follows the video side: the audio modules inside a block are that block's, its audio input
projections, time embeddings, cross-modal gates and text connectors are IN, its audio output projection OUT.
"""
from __future__ import annotations

from .declaration import KEPT, LoraNaming, Numbered, Signature
from .transformers import FLUX_DIFFUSERS, modules, transformer

# the checkpoint's modules beside the diffusion model that a merge keeps from A (LTX-2 bundles its audio VAE
# and vocoder)
AUDIO_KEPT = (("audio_vae.", KEPT), ("vocoder.", KEPT))

LTX_DIFFUSERS = (("audio_proj_in.", "audio_patchify_proj."), ("audio_time_embed.", "audio_adaln_single."),
                 ("proj_in.", "patchify_proj."), ("time_embed.", "adaln_single."))
LTXV = transformer(
    "ltxv", "LTXV", ("BASE", "IN", Numbered("transformer_blocks", "T", 28), "OUT"),
    ((modules("patchify_proj", "adaln_single", "caption_projection"), "IN"),
     (modules("scale_shift_table", "proj_out"), "OUT")),
    Signature(numbered=(("transformer_blocks", 0, None),), all_of=(r"adaln_single\.", r"patchify_proj\."),
              none_of=(r"audio_adaln_single\.",)),
    keyset="ltxv-2b", lora=LoraNaming(200, LTX_DIFFUSERS))
LTX2 = transformer(
    "ltx2", "LTX-2", ("BASE", "IN", Numbered("transformer_blocks", "T", 48), "OUT"),
    ((modules("patchify_proj", "adaln_single", "caption_projection", "audio_patchify_proj", "audio_adaln_single",
              "audio_caption_projection", r"av_ca_\w+_adaln_single", r"\w+_embeddings_connector"), "IN"),
     (modules("scale_shift_table", "proj_out", "audio_scale_shift_table", "audio_proj_out"), "OUT")),
    Signature(numbered=(("transformer_blocks", 0, None),), all_of=(r"audio_adaln_single\.", r"patchify_proj\.")),
    components=AUDIO_KEPT, keyset="ltx2-19b",
    # ranked after LTXV: an LTXV LoRA's names are LTX-2 names too, while an LTX-2 LoRA names more blocks
    lora=LoraNaming(201, LTX_DIFFUSERS))
MOCHI = transformer(
    "mochi", "Mochi", ("BASE", "IN", Numbered("blocks", "B", 48), "OUT"),
    ((modules("pos_frequencies", "x_embedder", "t_embedder", "t5_y_embedder", "t5_yproj"), "IN"),
     (modules("final_layer"), "OUT")),
    Signature(numbered=(("blocks", 0, None),), all_of=(r"t5_yproj\.", r"x_embedder\.")),
    keyset="mochi-preview",
    lora=LoraNaming(210, (("transformer_blocks.", "blocks."), ("patch_embed.", "x_embedder."),
                          ("time_embed.", "t_embedder."), ("norm_out.", "final_layer."),
                          ("proj_out.", "final_layer."))))
# the input side of the HunyuanVideo class: latent patches, time, guidance, the text token refiner, the ByT5 glyph
# mapper and mean-flow time; HunyuanVideo also has the CLIP vector (1.0), vision and condition-type inputs (1.5),
# which HunyuanImage 2.1 never has (so a LoRA naming them is not read as HunyuanImage's)
HUNYUAN_IMAGE_IN = ("img_in", "time_in", "guidance_in", "txt_in", "byt5_in", "time_r_in")
HUNYUAN_VIDEO_IN = (*HUNYUAN_IMAGE_IN, "vector_in", "vision_in", "cond_type_embedding")
HUNYUAN_DIFFUSERS = (("context_embedder_2.", "byt5_in."), *FLUX_DIFFUSERS)
HUNYUAN_IMAGE_21 = transformer(
    "hunyuan_image21", "HunyuanImage 2.1", ("BASE", "IN", Numbered("double_blocks", "D", 20),
                                            Numbered("single_blocks", "S", 40), "OUT"),
    ((modules(*HUNYUAN_IMAGE_IN), "IN"), (modules("final_layer"), "OUT")),
    Signature(numbered=(("double_blocks", 0, None), ("single_blocks", 0, None)),
              all_of=(r"txt_in\.individual_token_refiner\.", r"byt5_in\."),
              none_of=(r"vector_in\.", r"vision_in\.", r"cond_type_embedding\.")),
    # ranked before HunyuanVideo, whose signature (the class's token refiner) it also matches
    detect_rank=98, keyset="hunyuan-image-21",
    # the same class as HunyuanVideo: a LoRA of blocks only cannot be told from a HunyuanVideo one
    lora=LoraNaming(221, HUNYUAN_DIFFUSERS, group="hunyuan_video"))
HUNYUAN_VIDEO = transformer(
    "hunyuan_video", "HunyuanVideo", ("BASE", "IN", Numbered("double_blocks", "D", 20),
                                      Numbered("single_blocks", "S", 40), "OUT"),
    ((modules(*HUNYUAN_VIDEO_IN), "IN"), (modules("final_layer"), "OUT")),
    # its patch embedding is ``img_in.proj`` (Flux's is ``img_in``); 1.5 has double blocks only
    Signature(numbered=(("double_blocks", 0, None),), all_of=(r"txt_in\.individual_token_refiner\.",)),
    detect_rank=99, keyset="hunyuan-video",
    # its blocks' kohya names are Flux.1's: a LoRA of blocks only, up to Flux.1's 19 double / 38 single, reads
    # as Flux.1; its own input modules (img_in.proj, the token refiner) or more blocks name HunyuanVideo
    lora=LoraNaming(220, HUNYUAN_DIFFUSERS),
    variants=(((20, 40), "HunyuanVideo"), ((54, 0), "HunyuanVideo 1.5")))
KANDINSKY5 = transformer(
    "kandinsky5", "Kandinsky 5", ("BASE", "IN", Numbered("text_transformer_blocks", "TX", 2),
                                  Numbered("visual_transformer_blocks", "V", 32), "OUT"),
    ((modules("time_embeddings", "text_embeddings", "pooled_text_embeddings", "visual_embeddings"), "IN"),
     (modules("out_layer"), "OUT")),
    Signature(numbered=(("visual_transformer_blocks", 0, None),), all_of=(r"visual_embeddings\.",)),
    keyset="kandinsky5-lite", lora=LoraNaming(230))

DECLARED = (LTXV, LTX2, MOCHI, HUNYUAN_IMAGE_21, HUNYUAN_VIDEO, KANDINSKY5)
