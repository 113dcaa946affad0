"""Independent transcription of the block rules of LTXV, LTX-2, Mochi, HunyuanVideo (1.5 included),
HunyuanImage 2.1 and Kandinsky 5.

Written from the task's description of each family and core ComfyUI's per-family merge sliders
(ModelMergeLTXV, ModelMergeMochiPreview), not from merge_core.architectures, so the tests compare two readings
of the rules. Keys are relative to the diffusion model (bare, as the diffusion-model files ship).
"""
import re

from spec_families import KEEP


def _indexed(rel, container, prefix):
    m = re.match(re.escape(container) + r"\.(\d+)\.", rel)
    return f"{prefix}{int(m.group(1)):02d}" if m else None


def _head(rel):
    return rel.split(".")[0]


def ltxv_block(rel):
    """Core's LTXV sliders grouped: patchify_proj/adaln_single/caption_projection the input, each
    transformer block its own, scale_shift_table/proj_out the output."""
    hit = _indexed(rel, "transformer_blocks", "T")
    if hit:
        return hit
    if _head(rel) in ("patchify_proj", "adaln_single", "caption_projection"):
        return "IN"
    return "OUT" if _head(rel) in ("scale_shift_table", "proj_out") else KEEP


def ltx2_block(rel):
    """LTXV's layout; the audio modules inside a block are that block's; the audio and cross-modal input
    embedders and the text connectors (video and audio) are the input; the audio output the output."""
    hit = _indexed(rel, "transformer_blocks", "T")
    if hit:
        return hit
    head = _head(rel)
    if head in ("patchify_proj", "adaln_single", "caption_projection", "audio_patchify_proj",
                "audio_adaln_single", "audio_caption_projection", "video_embeddings_connector",
                "audio_embeddings_connector") or (head.startswith("av_ca_") and head.endswith("_adaln_single")):
        return "IN"
    if head in ("scale_shift_table", "proj_out", "audio_scale_shift_table", "audio_proj_out"):
        return "OUT"
    return KEEP


def mochi_block(rel):
    """Core's Mochi sliders grouped: pos_frequencies/t_embedder/t5_y_embedder/t5_yproj and the patch
    embedder the input, each block its own, final_layer the output."""
    hit = _indexed(rel, "blocks", "B")
    if hit:
        return hit
    if _head(rel) in ("pos_frequencies", "x_embedder", "t_embedder", "t5_y_embedder", "t5_yproj"):
        return "IN"
    return "OUT" if _head(rel) == "final_layer" else KEEP


HUNYUAN_IMAGE_INPUTS = ("img_in", "time_in", "guidance_in", "txt_in", "byt5_in", "time_r_in")


def hunyuan_image_block(rel):
    """HunyuanImage 2.1: double and single blocks, its embedders (latent, time, guidance, text refiner, ByT5
    glyphs, mean-flow time) the input, final_layer the output."""
    hit = _indexed(rel, "double_blocks", "D") or _indexed(rel, "single_blocks", "S")
    if hit:
        return hit
    if _head(rel) in HUNYUAN_IMAGE_INPUTS:
        return "IN"
    return "OUT" if _head(rel) == "final_layer" else KEEP


def hunyuan_block(rel):
    """HunyuanVideo (1.0 and 1.5): HunyuanImage's blocks, with the CLIP vector, vision and condition-type
    embedders also the input."""
    if _head(rel) in ("vector_in", "vision_in", "cond_type_embedding"):
        return "IN"
    return hunyuan_image_block(rel)


def kandinsky5_block(rel):
    """Text blocks TX, visual blocks V, the four embeddings the input, out_layer the output."""
    hit = _indexed(rel, "text_transformer_blocks", "TX") or _indexed(rel, "visual_transformer_blocks", "V")
    if hit:
        return hit
    if _head(rel).endswith("_embeddings"):
        return "IN"
    return "OUT" if _head(rel) == "out_layer" else KEEP


TRANSCRIPTIONS = {"ltxv-2b": ltxv_block, "ltx2-19b": ltx2_block, "mochi-preview": mochi_block,
                  "hunyuan-video": hunyuan_block, "hunyuan-video-15": hunyuan_block,
                  "hunyuan-image-21": hunyuan_image_block, "kandinsky5-lite": kandinsky5_block}
