"""Full-size key inventories of the families in merge_core/architectures/cosmos.py, built on the meta
device from ComfyUI 0.33's classes (run through make_keysets.py).

Sizes are the released models', as model_detection.py configures them: Cosmos 1.0 Diffusion 7B and 14B
Text2World (GeneralDIT, 4096 wide / 28 blocks and 5120 wide / 36 blocks), Cosmos-Predict2 2B and 14B
Text2Image (MiniTrainDIT, 2048 wide / 28 blocks and 5120 wide / 36 blocks) and Anima (the Predict2 2B
layout with its 6-block LLM adapter).
"""
from __future__ import annotations

_COSMOS1 = dict(max_img_h=240, max_img_w=240, max_frames=128, in_channels=16, out_channels=16, patch_spatial=2,
                patch_temporal=1, block_config="FA-CA-MLP", concat_padding_mask=True, pos_emb_cls="rope3d",
                pos_emb_learnable=False, pos_emb_interpolation="crop", block_x_format="THWBD",
                affline_emb_norm=True, use_adaln_lora=True, adaln_lora_dim=256, extra_per_block_abs_pos_emb=True,
                extra_per_block_abs_pos_emb_type="learnable")
COSMOS1_7B = dict(_COSMOS1, model_channels=4096, num_blocks=28, num_heads=32)
COSMOS1_14B = dict(_COSMOS1, model_channels=5120, num_blocks=36, num_heads=40)
_PREDICT2 = dict(max_img_h=240, max_img_w=240, max_frames=128, in_channels=16, out_channels=16, patch_spatial=2,
                 patch_temporal=1, concat_padding_mask=True, crossattn_emb_channels=1024, pos_emb_cls="rope3d",
                 pos_emb_learnable=True, pos_emb_interpolation="crop", min_fps=1, max_fps=30, use_adaln_lora=True,
                 adaln_lora_dim=256, extra_per_block_abs_pos_emb=False, rope_enable_fps_modulation=False)
PREDICT2_2B = dict(_PREDICT2, model_channels=2048, num_blocks=28, num_heads=16)
PREDICT2_14B = dict(_PREDICT2, model_channels=5120, num_blocks=36, num_heads=40)

INVENTORIES: tuple[str, ...] = ("cosmos1-7b", "cosmos1-14b", "cosmos-predict2-2b", "cosmos-predict2-14b", "anima")


def build(name: str):
    """The model (on the meta device) of one inventory."""
    import torch

    import comfy.ops
    ops = dict(operations=comfy.ops.disable_weight_init, device=torch.device("meta"), dtype=torch.bfloat16)
    if name in ("cosmos1-7b", "cosmos1-14b"):
        from comfy.ldm.cosmos.model import GeneralDIT
        return GeneralDIT(**(COSMOS1_7B if name == "cosmos1-7b" else COSMOS1_14B), **ops)
    if name in ("cosmos-predict2-2b", "cosmos-predict2-14b"):
        from comfy.ldm.cosmos.predict2 import MiniTrainDIT
        return MiniTrainDIT(**(PREDICT2_2B if name == "cosmos-predict2-2b" else PREDICT2_14B), **ops)
    if name == "anima":
        from comfy.ldm.anima.model import Anima
        return Anima(**PREDICT2_2B, **ops)
    raise SystemExit(f"unknown inventory '{name}'")
