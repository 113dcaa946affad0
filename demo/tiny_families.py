"""Tiny transformer-family models (Flux.1 dev/schnell, Chroma, Flux.2, SD3, HiDream, Z-Image, Qwen-Image,
Wan 2.1) built from ComfyUI's own classes.

The configs are those of scripts/make_keysets.py shrunk to a width of 64 and a depth of two or three
blocks: the same key names as the released models, a few MB each. ComfyUI's key-based detection
hard-codes full-size values (Flux's 24 heads, Wan's 128-wide heads, ...), so ``register()`` adds a
tiny config per family that matches only these widths and sets the values detection cannot read;
then UNETLoader loads the diffusion-model files and CheckpointLoaderSimple the Forge-style Flux
checkpoint (tiny CLIP-L + T5 + a 16-channel TAESD VAE). Needs ComfyUI importable.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

import comfy.model_base
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.flux
from tiny_builder import MAX_PARAMETERS, TinyBuilder, widths  # noqa: F401 (MAX_PARAMETERS: importable from here as before)
from tiny_models import TINY_CLIP_L, TinyConfig, _fill

WIDTH, HEADS = 64, 2
ROPE = [8, 12, 12]  # sums to the head width (WIDTH // HEADS)
TINY_T5 = {"d_ff": 64, "d_kv": 16, "d_model": 32, "num_heads": 2, "num_layers": 2}
TEXT_WIDTH = TINY_T5["d_model"]

FLUX = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=TINY_CLIP_L["hidden_size"],
            context_in_dim=TEXT_WIDTH, hidden_size=WIDTH, mlp_ratio=4.0, num_heads=HEADS, depth=2,
            depth_single_blocks=3, axes_dim=ROPE, theta=10000, qkv_bias=True, guidance_embed=True)
FLUX2 = dict(image_model="flux2", in_channels=128, out_channels=128, patch_size=1, vec_in_dim=None,
             context_in_dim=TEXT_WIDTH, hidden_size=WIDTH, mlp_ratio=3.0, num_heads=HEADS, depth=2,
             depth_single_blocks=2, axes_dim=[8, 8, 8, 8], theta=2000, qkv_bias=False, guidance_embed=True,
             global_modulation=True, mlp_silu_act=True, ops_bias=False)
CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, patch_size=2, context_in_dim=TEXT_WIDTH,
              hidden_size=WIDTH, mlp_ratio=4.0, num_heads=HEADS, depth=2, depth_single_blocks=2, axes_dim=ROPE,
              theta=10000, qkv_bias=True, in_dim=64, out_dim=WIDTH, hidden_dim=WIDTH, n_layers=2)
SD3 = dict(in_channels=16, patch_size=2, depth=2, adm_in_channels=64, out_channels=16, pos_embed_max_size=8,
           num_patches=64, context_embedder_config={"target": "torch.nn.Linear",
                                                    "params": {"in_features": TEXT_WIDTH, "out_features": 128}})
Z_IMAGE = dict(patch_size=2, in_channels=16, dim=WIDTH, cap_feat_dim=TEXT_WIDTH, n_layers=2, n_heads=HEADS,
               n_kv_heads=HEADS, qk_norm=True, axes_dims=ROPE, axes_lens=[64, 64, 64], rope_theta=256.0,
               ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32,
               multiple_of=16)
QWEN_IMAGE = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=WIDTH // HEADS,
                  num_attention_heads=HEADS, joint_attention_dim=TEXT_WIDTH, axes_dims_rope=tuple(ROPE))
HIDREAM = dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, attention_head_dim=WIDTH // HEADS,
               num_attention_heads=HEADS, num_layers=2, num_single_layers=2, caption_channels=[TEXT_WIDTH, TEXT_WIDTH],
               text_emb_dim=TEXT_WIDTH, num_routed_experts=4, num_activated_experts=2, axes_dims_rope=ROPE,
               max_resolution=[16, 16], llama_layers=[0, 1, 1, 1])  # MoE feed-forward: 4 experts, as released
WAN = dict(model_type="t2v", dim=WIDTH, ffn_dim=128, num_heads=HEADS, num_layers=2, in_dim=16, out_dim=16,
           text_dim=TEXT_WIDTH, freq_dim=32)


def _only(config: dict, *names: str) -> dict:
    return {k: config[k] for k in names}


class TinyFluxClip(comfy.text_encoders.flux.FluxClipModel):
    def __init__(self, device="cpu", dtype=None, model_options=None):
        super().__init__(device=device, dtype=dtype, model_options={
            **(model_options or {}), "clip_l_model_config": TINY_CLIP_L, "t5xxl_model_config": TINY_T5})


class TinyFlux(TinyConfig, comfy.supported_models.Flux):
    unet_config = {"image_model": "flux", "guidance_embed": True, "hidden_size": WIDTH}
    unet_extra_config = _only(FLUX, "num_heads", "axes_dim")

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer, TinyFluxClip)


class TinyFluxSchnell(TinyConfig, comfy.supported_models.FluxSchnell):
    unet_config = {"image_model": "flux", "guidance_embed": False, "hidden_size": WIDTH}
    unet_extra_config = TinyFlux.unet_extra_config
    clip_target = TinyFlux.clip_target


class TinyFlux2(TinyConfig, comfy.supported_models.Flux2):
    unet_config = {"image_model": "flux2", "hidden_size": WIDTH}
    unet_extra_config = _only(FLUX2, "num_heads", "axes_dim")


class TinyChroma(TinyConfig, comfy.supported_models.Chroma):
    unet_config = {"image_model": "chroma", "hidden_size": WIDTH}
    unet_extra_config = _only(CHROMA, "num_heads", "axes_dim", "out_dim", "hidden_dim", "n_layers")


class TinyZImage(TinyConfig, comfy.supported_models.ZImage):
    unet_config = {"image_model": "lumina2", "dim": WIDTH}
    unet_extra_config = _only(Z_IMAGE, "n_heads", "n_kv_heads", "axes_dims", "axes_lens", "rope_theta",
                              "ffn_dim_multiplier", "z_image_modulation", "time_scale", "pad_tokens_multiple",
                              "multiple_of")


class TinyQwenImage(TinyConfig, comfy.supported_models.QwenImage):
    unet_config = {"image_model": "qwen_image", "num_layers": QWEN_IMAGE["num_layers"]}
    unet_extra_config = _only(QWEN_IMAGE, "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                              "axes_dims_rope")


class TinyHiDream(TinyConfig, comfy.supported_models.HiDream):
    """ComfyUI reads nothing of HiDream's size from the keys (every value is the full-size one), so this
    config matches on the patch embedding's width and sets the rest."""
    unet_extra_config = _only(HIDREAM, "attention_head_dim", "num_attention_heads", "num_layers", "num_single_layers",
                              "caption_channels", "text_emb_dim", "axes_dims_rope", "max_resolution", "llama_layers")

    @classmethod
    def tiny_match(cls, state_dict) -> bool:
        return widths(state_dict, "x_embedder.proj.weight") == [WIDTH]


class TinyWan(TinyConfig, comfy.supported_models.WAN21_T2V):
    unet_config = {"image_model": "wan2.1", "model_type": "t2v", "dim": WIDTH}
    unet_extra_config = _only(WAN, "num_heads", "text_dim", "freq_dim")


TINY_CONFIGS = (TinyFlux, TinyFluxSchnell, TinyFlux2, TinyChroma, TinyHiDream, TinyZImage, TinyQwenImage,
                TinyWan)

# Each family's released model, as the full-size key inventory that ships with merge_core (name, key prefix):
# the host's own detection reads its configuration from these shapes, and the tiny model keeps the key names
# of these files.
RELEASED = {"flux1-dev": ("flux1-dev", "model.diffusion_model."), "flux1-schnell": ("flux1-schnell", ""),
            "flux2": ("flux2-dev", ""), "chroma": ("chroma", ""), "sd3": ("sd3-medium", ""),
            "hidream": ("hidream-full", ""), "z-image": ("z-image", ""), "qwen-image": ("qwen-image", ""),
            "wan21": ("wan21-1.3b", "")}
TINY = {"flux1-dev": dict(FLUX, guidance_embed=True), "flux1-schnell": dict(FLUX, guidance_embed=False),
        "flux2": FLUX2, "chroma": CHROMA, "sd3": SD3, "hidream": HIDREAM, "z-image": Z_IMAGE,
        "qwen-image": QWEN_IMAGE, "wan21": WAN}
FAMILIES = tuple(RELEASED)


def _model_class(family: str):
    if family in ("flux1-dev", "flux1-schnell", "flux2"):
        from comfy.ldm.flux.model import Flux
        return Flux
    if family == "chroma":
        from comfy.ldm.chroma.model import Chroma
        return Chroma
    if family == "sd3":
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
        return MMDiT
    if family == "hidream":
        from comfy.ldm.hidream.model import HiDreamImageTransformer2DModel
        return HiDreamImageTransformer2DModel
    if family == "z-image":
        from comfy.ldm.lumina.model import NextDiT
        return NextDiT
    if family == "qwen-image":
        from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
        return QwenImageTransformer2DModel
    if family == "wan21":
        from comfy.ldm.wan.model import WanModel
        return WanModel
    raise ValueError(f"unknown tiny family '{family}' (one of {', '.join(FAMILIES)})")


# SD3's learned position table is a buffer: fill_buffers makes it random too
BUILDER = TinyBuilder(released={f: name for f, (name, _) in RELEASED.items()},
                      prefixes={f: prefix for f, (_, prefix) in RELEASED.items()}, tiny=TINY,
                      model_class=_model_class, configs=TINY_CONFIGS, fill_buffers=True)
register, build_model, save_diffusion_model = BUILDER.register, BUILDER.build_model, BUILDER.save_diffusion_model
diffusion_state_dict = BUILDER.diffusion_state_dict


def build_flux_clip(seed: int = 0):
    """The tiny Flux text encoders (CLIP-L + T5) as a ComfyUI CLIP."""
    clip = comfy.sd.CLIP(TinyFlux(dict(FLUX)).clip_target())
    _fill(clip.cond_stage_model, seed + 1000, all_random=True)
    return clip


def build_flux_vae(seed: int = 0):
    """A 16-channel TAESD: decodes Flux latents, stored under ``vae.`` in a Forge-style file."""
    from comfy.taesd.taesd import TAESD
    taesd = TAESD(latent_channels=16)
    _fill(taesd, seed + 2000)
    sd = taesd.state_dict()
    sd["vae_scale"] = torch.tensor(1.0)
    sd["vae_shift"] = torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd)


def save_flux_checkpoint(path: str | os.PathLike, family: str, seed: int) -> Path:
    """A Forge-style Flux.1 checkpoint (model.diffusion_model., text_encoders.clip_l./t5xxl., vae.)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.sd.save_checkpoint(str(path), build_model(family, seed), build_flux_clip(seed), build_flux_vae(seed))
    return path
