"""Regenerate the full-size key inventories of the transformer families (merge_core/architectures/keysets/).

Each model is built from ComfyUI's own classes on the ``meta`` device (no weights, no download), at the
size of the released model, and its state-dict key names, shapes and dtypes are stored as gzipped JSON
``{key: [shape, dtype]}``, the format of sd1/sdxl. Unit tests read these files, so they need no ComfyUI.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/make_keysets.py [name ...]

Flux.1-dev is stored as a Forge-style full checkpoint (``model.diffusion_model.``, ``text_encoders.clip_l.``,
``text_encoders.t5xxl.``, ``vae.``), SD3.5-large as a checkpoint with its three text encoders; the other
inventories are diffusion-model-only files (bare keys), the form those models are distributed in.
"""
from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "merge_core" / "architectures" / "keysets"
FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=768,
                context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19,
                depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True)
FLUX2_DEV = dict(image_model="flux2", in_channels=128, out_channels=128, patch_size=1, vec_in_dim=None,
                 context_in_dim=15360, hidden_size=6144, mlp_ratio=3.0, num_heads=48, depth=8,
                 depth_single_blocks=48, axes_dim=[32, 32, 32, 32], theta=2000, qkv_bias=False,
                 guidance_embed=True, global_modulation=True, mlp_silu_act=True, ops_bias=False)
CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, patch_size=2, context_in_dim=4096,
              hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38,
              axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, in_dim=64, out_dim=3072, hidden_dim=5120,
              n_layers=5)
SD3_MEDIUM = dict(in_channels=16, patch_size=2, depth=24, adm_in_channels=2048, out_channels=16,
                  pos_embed_max_size=192, num_patches=36864,
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": 4096, "out_features": 1536}})
SD35_LARGE = dict(SD3_MEDIUM, depth=38, pos_embed_max_size=192, qk_norm="rms",
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": 4096, "out_features": 2432}})
SD35_MEDIUM = dict(SD3_MEDIUM, pos_embed_max_size=384, num_patches=147456, qk_norm="rms",
                   x_block_self_attn_layers=list(range(13)))
HIDREAM = dict(image_model="hidream", patch_size=2, attention_head_dim=128, axes_dims_rope=[64, 32, 32],
               caption_channels=[4096, 4096], max_resolution=[128, 128], in_channels=16,
               llama_layers=list(range(32)) + [31] * 16, num_attention_heads=20, num_routed_experts=4,
               num_activated_experts=2, num_layers=16, num_single_layers=32, out_channels=16, text_emb_dim=2048)
LUMINA2 = dict(patch_size=2, in_channels=16, dim=2304, cap_feat_dim=2304, n_layers=26, n_heads=24, n_kv_heads=8,
               qk_norm=True, axes_dims=[32, 32, 32], axes_lens=[300, 512, 512], ffn_dim_multiplier=4.0)
Z_IMAGE = dict(patch_size=2, in_channels=16, dim=3840, cap_feat_dim=2560, n_layers=30, n_heads=30, n_kv_heads=30,
               qk_norm=True, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
               ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32)
WAN_14B = dict(model_type="t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16, out_dim=16)
WAN_1_3B = dict(model_type="t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16, out_dim=16)
WAN22_5B = dict(model_type="t2v", dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48)


def build(name: str):
    """(module, prefix) of one inventory, built on the meta device."""
    import torch

    import comfy.ops
    ops = dict(operations=comfy.ops.disable_weight_init, device=torch.device("meta"), dtype=torch.bfloat16)
    if name in ("flux1-dev", "flux1-schnell"):
        from comfy.ldm.flux.model import Flux
        return Flux(**dict(FLUX_DEV, guidance_embed=name == "flux1-dev"), **ops)
    if name == "flux2-dev":
        from comfy.ldm.flux.model import Flux
        return Flux(**FLUX2_DEV, **ops)
    if name == "chroma":
        from comfy.ldm.chroma.model import Chroma
        return Chroma(**CHROMA, **ops)
    if name.startswith("sd3"):
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
        return MMDiT(**{"sd3-medium": SD3_MEDIUM, "sd35-large": SD35_LARGE, "sd35-medium": SD35_MEDIUM}[name], **ops)
    if name == "hidream-full":
        from comfy.ldm.hidream.model import HiDreamImageTransformer2DModel
        return HiDreamImageTransformer2DModel(**HIDREAM, **ops)
    if name in ("lumina2", "z-image"):
        from comfy.ldm.lumina.model import NextDiT
        return NextDiT(**(LUMINA2 if name == "lumina2" else Z_IMAGE), **ops)
    if name == "qwen-image":
        from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
        return QwenImageTransformer2DModel(**ops)
    if name.startswith("wan"):
        from comfy.ldm.wan.model import VaceWanModel, WanModel
        if name == "wan21-vace-14b":
            return VaceWanModel(**dict(WAN_14B, model_type="vace"), vace_layers=8, vace_in_dim=96, **ops)
        return WanModel(**{"wan21-14b": WAN_14B, "wan21-1.3b": WAN_1_3B, "wan22-5b": WAN22_5B}[name], **ops)
    raise SystemExit(f"unknown inventory '{name}'")


def flux_components() -> dict:
    """CLIP-L, T5-XXL and the Flux VAE as a Forge-style file stores them."""
    import torch

    import comfy.ldm.models.autoencoder
    import comfy.text_encoders.flux
    with torch.device("meta"):
        te = comfy.text_encoders.flux.FluxClipModel(device="meta", dtype=torch.bfloat16)
        vae = comfy.ldm.models.autoencoder.AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": VAE_PARAMS},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": VAE_PARAMS})
    out = {f"text_encoders.{k}": v for k, v in te.state_dict().items()}
    out.update({f"vae.{k}": v for k, v in vae.state_dict().items()})
    return out


VAE_PARAMS = dict(double_z=True, z_channels=16, resolution=256, in_channels=3, out_ch=3, ch=128,
                  ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
INVENTORIES = ("flux1-dev", "flux1-schnell", "flux2-dev", "chroma", "sd3-medium", "sd35-large", "sd35-medium",
               "hidream-full", "lumina2", "z-image", "qwen-image", "wan21-14b", "wan21-1.3b", "wan21-vace-14b",
               "wan22-5b")


# more families, one module each beside this script: INVENTORIES (names) and build(name) -> state dict source
GROUPS = ("keysets_image_models", "keysets_cosmos", "keysets_video_models")


def _group_of(name: str):
    import importlib
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for module in map(importlib.import_module, GROUPS):
        if name in module.INVENTORIES:
            return module
    return None


def inventory(name: str) -> dict:
    group = _group_of(name) if name not in INVENTORIES else None
    sd = (group.build(name) if group is not None else build(name)).state_dict()
    if name == "flux1-dev":
        sd = {f"model.diffusion_model.{k}": v for k, v in sd.items()} | flux_components()
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sd.items()}


def main(names: list[str]) -> None:
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    from comfy.cli_args import args
    args.cpu = True
    every = list(INVENTORIES)
    for group in GROUPS:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        every += __import__(group).INVENTORIES
    for name in names or every:
        keys = inventory(name)
        with gzip.open(OUT / f"{name}.json.gz", "wt", encoding="utf-8", compresslevel=9) as f:
            json.dump(keys, f, separators=(",", ":"))
        print(f"{name}: {len(keys)} keys")


if __name__ == "__main__":
    main(sys.argv[1:])
