"""Full-size key inventories of the families in merge_core/architectures/video_models.py, built on the meta
device from ComfyUI 0.33's classes (run through make_keysets.py).

Sizes are the released models': LTX-Video 2B (the class defaults, 28 blocks, the count core's ModelMergeLTXV
has sliders for), LTX-2 19B (LTXAVModel's defaults, 48 audio-video blocks), Mochi 1 preview (the values
model_detection.py sets), HunyuanVideo T2V 720p (20 double / 40 single blocks, CLIP-L vector input, guidance),
HunyuanImage 2.1 (the same class: 3584 wide, 2-D patches, ByT5 glyph input, no vector input), HunyuanVideo 1.5
(54 double blocks, no single blocks, vision input: a size variant of HunyuanVideo) and Kandinsky 5.0 Lite video
(the class defaults: 2 text blocks, 32 visual blocks).
"""
from __future__ import annotations

MOCHI = dict(depth=48, patch_size=2, num_heads=24, hidden_size_x=3072, hidden_size_y=1536, mlp_ratio_x=4.0,
             mlp_ratio_y=4.0, learn_sigma=False, in_channels=12, qk_norm=True, qkv_bias=False, out_bias=True,
             attn_drop=0.0, patch_embed_bias=True, posenc_preserve_area=True, timestep_mlp_bias=True,
             attend_to_padding=False, timestep_scale=1000.0, use_t5=True, t5_feat_dim=4096, t5_token_length=256,
             rope_theta=10000.0)
HUNYUAN_VIDEO = dict(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
                     mlp_ratio=4.0, num_heads=24, depth=20, depth_single_blocks=40, axes_dim=[16, 56, 56], theta=256,
                     patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False,
                     use_cond_type_embedding=False, vision_in_dim=None, meanflow_sum=False)
HUNYUAN_IMAGE_21 = dict(HUNYUAN_VIDEO, in_channels=64, out_channels=64, vec_in_dim=None, context_in_dim=3584,
                        hidden_size=3584, num_heads=28, axes_dim=[64, 64], patch_size=[1, 1], guidance_embed=False,
                        byt5=True)
HUNYUAN_VIDEO_15 = dict(HUNYUAN_VIDEO, in_channels=65, out_channels=32, vec_in_dim=None, context_in_dim=3584,
                        hidden_size=2048, num_heads=16, depth=54, depth_single_blocks=0, patch_size=[1, 1, 1],
                        guidance_embed=False, byt5=True, use_cond_type_embedding=True, vision_in_dim=1152)

INVENTORIES: tuple[str, ...] = ("ltxv-2b", "ltx2-19b", "mochi-preview", "hunyuan-video", "hunyuan-image-21",
                                "hunyuan-video-15", "kandinsky5-lite")


def build(name: str):
    """The model (on the meta device) of one inventory."""
    import torch

    import comfy.ops
    ops = dict(operations=comfy.ops.disable_weight_init, device=torch.device("meta"), dtype=torch.bfloat16)
    if name == "ltxv-2b":
        from comfy.ldm.lightricks.model import LTXVModel
        return LTXVModel(**ops)
    if name == "ltx2-19b":
        from comfy.ldm.lightricks.av_model import LTXAVModel
        return LTXAVModel(**ops)
    if name == "mochi-preview":
        from comfy.ldm.genmo.joint_model.asymm_models_joint import AsymmDiTJoint
        return AsymmDiTJoint(**MOCHI, **ops)
    if name.startswith("hunyuan-"):
        from comfy.ldm.hunyuan_video.model import HunyuanVideo
        config = {"hunyuan-video": HUNYUAN_VIDEO, "hunyuan-image-21": HUNYUAN_IMAGE_21,
                  "hunyuan-video-15": HUNYUAN_VIDEO_15}
        return HunyuanVideo(**config[name], **ops)
    if name == "kandinsky5-lite":
        from comfy.ldm.kandinsky5.model import Kandinsky5
        return Kandinsky5(**ops)
    raise SystemExit(f"unknown inventory '{name}'")
