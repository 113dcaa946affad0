"""Tiny LTXV, LTX-2, Mochi, HunyuanVideo, HunyuanImage 2.1 and Kandinsky 5 models built from ComfyUI's own
classes (width 64, two or three blocks), with the key names of the released models
(merge_core/architectures/keysets).

As in tiny_families: the host's detection reads the released key set's shapes (meta tensors) and only the size
settings are replaced; ``register()`` adds tiny configs so that UNETLoader loads the files (the host's
detection hard-codes full-size values: LTXV's 32 heads, Mochi's every width, HunyuanVideo's 128-wide heads).
A family whose class the running ComfyUI lacks (LTX-2 and Kandinsky 5 before 0.33) is named by
``missing(family)``.
"""
from __future__ import annotations

import comfy.supported_models
from tiny_builder import TinyBuilder, lacking_config, widths
from tiny_families import HEADS, ROPE, TEXT_WIDTH, WIDTH, _only
from tiny_models import TinyConfig
HEAD = WIDTH // HEADS
LTXV = dict(num_attention_heads=HEADS, attention_head_dim=HEAD, cross_attention_dim=WIDTH,
            caption_channels=TEXT_WIDTH, num_layers=2)
LTX2 = dict(LTXV, num_layers=2, audio_cross_attention_dim=TEXT_WIDTH, audio_attention_head_dim=TEXT_WIDTH // HEADS,
            audio_num_attention_heads=HEADS, caption_channels=WIDTH, connector_attention_head_dim=HEAD,
            connector_num_attention_heads=HEADS)
# Mochi's block asserts a 12288-wide feed-forward (1536 * 8): the tiny one keeps it (about 1.5M parameters a block)
MOCHI = dict(depth=3, num_heads=HEADS, hidden_size_x=WIDTH, hidden_size_y=TEXT_WIDTH, mlp_ratio_x=12288 / WIDTH,
             t5_feat_dim=TEXT_WIDTH, t5_token_length=8)
HUNYUAN_VIDEO = dict(hidden_size=WIDTH, num_heads=HEADS, depth=2, depth_single_blocks=3, axes_dim=ROPE,
                     context_in_dim=TEXT_WIDTH)
HUNYUAN_IMAGE_21 = dict(HUNYUAN_VIDEO, axes_dim=[HEAD // 2, HEAD // 2])
KANDINSKY5 = dict(model_dim=WIDTH, ff_dim=128, time_dim=TEXT_WIDTH, num_text_blocks=2, num_visual_blocks=3,
                  axes_dims=ROPE, in_text_dim=TEXT_WIDTH, in_text_dim2=TEXT_WIDTH)
TINY = {"ltxv": LTXV, "ltx2": LTX2, "mochi": MOCHI, "hunyuan-video": HUNYUAN_VIDEO,
        "hunyuan-image-21": HUNYUAN_IMAGE_21, "kandinsky5": KANDINSKY5}
# each family's released inventory (keysets/) and the host's model config (supported_models)
RELEASED = {"ltxv": "ltxv-2b", "ltx2": "ltx2-19b", "mochi": "mochi-preview", "hunyuan-video": "hunyuan-video",
            "hunyuan-image-21": "hunyuan-image-21", "kandinsky5": "kandinsky5-lite"}
HOST_CONFIG = {"ltxv": "LTXV", "ltx2": "LTXAV", "mochi": "GenmoMochi", "hunyuan-video": "HunyuanVideo",
               "hunyuan-image-21": "HunyuanImage21", "kandinsky5": "Kandinsky5"}
FAMILIES = tuple(TINY)


def missing(family: str) -> str:
    """Why the running ComfyUI cannot build this family ('' when it can)."""
    return lacking_config(HOST_CONFIG, family)


def _tiny_configs() -> tuple:
    host = comfy.supported_models
    configs = []

    class TinyLTXV(TinyConfig, host.LTXV):
        unet_config = {"image_model": "ltxv", "cross_attention_dim": WIDTH}
        unet_extra_config = _only(LTXV, "num_attention_heads", "attention_head_dim", "caption_channels")
    configs.append(TinyLTXV)
    if not missing("ltx2"):
        class TinyLTX2(TinyConfig, host.LTXAV):
            unet_config = {"image_model": "ltxav", "cross_attention_dim": WIDTH}
            unet_extra_config = _only(LTX2, "num_attention_heads", "attention_head_dim", "caption_channels",
                                      "audio_cross_attention_dim", "audio_attention_head_dim",
                                      "audio_num_attention_heads", "connector_attention_head_dim",
                                      "connector_num_attention_heads")
        configs.append(TinyLTX2)

    class TinyMochi(TinyConfig, host.GenmoMochi):
        """Detection reads no size: the config matches on the patch embedding's width and sets the rest."""
        unet_config = {"image_model": "mochi_preview"}
        unet_extra_config = _only(MOCHI, "depth", "num_heads", "hidden_size_x", "hidden_size_y", "mlp_ratio_x",
                                  "t5_feat_dim", "t5_token_length")

        @classmethod
        def tiny_match(cls, state_dict) -> bool:
            return widths(state_dict, "x_embedder.proj.weight") == [WIDTH]
    configs.append(TinyMochi)

    class TinyHunyuanVideo(TinyConfig, host.HunyuanVideo):
        unet_config = {"image_model": "hunyuan_video", "hidden_size": WIDTH, "vec_in_dim": 768}
        unet_extra_config = _only(HUNYUAN_VIDEO, "num_heads", "axes_dim")
    configs.append(TinyHunyuanVideo)

    class TinyHunyuanImage21(TinyConfig, host.HunyuanImage21):
        unet_config = {"image_model": "hunyuan_video", "hidden_size": WIDTH, "vec_in_dim": None, "byt5": True}
        unet_extra_config = _only(HUNYUAN_IMAGE_21, "num_heads", "axes_dim")
    configs.append(TinyHunyuanImage21)
    if not missing("kandinsky5"):
        class TinyKandinsky5(TinyConfig, host.Kandinsky5):
            unet_config = {"image_model": "kandinsky5", "model_dim": WIDTH}
            unet_extra_config = _only(KANDINSKY5, "axes_dims", "in_text_dim", "in_text_dim2")
        configs.append(TinyKandinsky5)
    return tuple(configs)


TINY_CONFIGS = _tiny_configs()


def _model_class(family: str):
    if family == "ltxv":
        from comfy.ldm.lightricks.model import LTXVModel
        return LTXVModel
    if family == "ltx2":
        from comfy.ldm.lightricks.av_model import LTXAVModel
        return LTXAVModel
    if family == "mochi":
        from comfy.ldm.genmo.joint_model.asymm_models_joint import AsymmDiTJoint
        return AsymmDiTJoint
    if family == "kandinsky5":
        from comfy.ldm.kandinsky5.model import Kandinsky5
        return Kandinsky5
    from comfy.ldm.hunyuan_video.model import HunyuanVideo
    return HunyuanVideo


# to_front: ahead of the host's full-size configs
BUILDER = TinyBuilder(released=RELEASED, tiny=TINY, model_class=_model_class, configs=TINY_CONFIGS,
                      missing=missing, to_front=True)
register, build_model, save_diffusion_model = BUILDER.register, BUILDER.build_model, BUILDER.save_diffusion_model
diffusion_state_dict = BUILDER.diffusion_state_dict
