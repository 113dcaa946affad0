"""Tiny SD1-, SD2- and SDXL-layout models built from ComfyUI's own classes.

Same key names as the full models (input_blocks.0-11 for SD1 and SD2, 0-8 plus
label_emb for SDXL; clip_l, OpenCLIP-H clip_h (SD2, v-prediction) and clip_g
text encoders) at a width that samples on a CPU in a second. Used by the tests and by the demo when a user has no
checkpoints. Needs ComfyUI importable (its folder on sys.path).

``register()`` adds TinySD15/TinySD20/TinySDXL configs to ComfyUI's model list so that
CheckpointLoaderSimple recognises tiny checkpoint files (full-size configs
require 320 channels and refuse them).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.model_base
from comfy import model_detection, sd1_clip, sdxl_clip
from comfy.text_encoders import sd2_clip

TINY_CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
               "num_hidden_layers": 3, "projection_dim": 32}
TINY_CLIP_G = dict(TINY_CLIP_L)

SD1_UNET = {
    "model_channels": 32, "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
    "attention_resolutions": [4, 2, 1], "transformer_depth": 1, "context_dim": 32,
    "use_linear_in_transformer": False, "adm_in_channels": None, "use_spatial_transformer": True,
    "legacy": False, "in_channels": 4, "out_channels": 4, "image_size": 32, "num_heads": 2,
    "num_head_channels": -1, "use_temporal_attention": False, "use_checkpoint": False,
}
SD2_UNET = dict(SD1_UNET, use_linear_in_transformer=True, num_heads=-1, num_head_channels=16)
SDXL_UNET = {
    "model_channels": 32, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 1, 1, 1, 1], "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
    "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": 64,
    "num_classes": "sequential", "adm_in_channels": 32 + 6 * 256, "use_spatial_transformer": True,
    "legacy": False, "in_channels": 4, "out_channels": 4, "image_size": 32, "num_heads": -1,
    "num_head_channels": 16, "use_temporal_attention": False, "use_checkpoint": False,
}


class TinySD1Clip(sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
        super().__init__(device=device, dtype=dtype,
                         model_options={**(model_options or {}), "clip_l_model_config": TINY_CLIP_L}, **kwargs)


class TinySD2Clip(sd2_clip.SD2ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
        super().__init__(device=device, dtype=dtype,
                         model_options={**(model_options or {}), "clip_h_model_config": TINY_CLIP_L}, **kwargs)


class TinySDXLClip(sdxl_clip.SDXLClipModel):
    def __init__(self, device="cpu", dtype=None, model_options=None):
        super().__init__(device=device, dtype=dtype, model_options={
            **(model_options or {}), "clip_l_model_config": TINY_CLIP_L, "clip_g_model_config": TINY_CLIP_G})


class TinyConfig:
    """Mixin of every tiny model config: its ``matches`` takes whatever arguments the host passes (0.33 added
    ``unet_key_prefix``) and answers False on any error, so a tiny config can never break the loading of a
    real checkpoint. ``tiny_match(state_dict)`` adds a config's own test on the weights."""

    @classmethod
    def matches(cls, unet_config, state_dict=None, *args, **kwargs):
        try:
            return bool(super().matches(unet_config, state_dict, *args, **kwargs) and cls.tiny_match(state_dict))
        except Exception:  # noqa: BLE001 - a tiny config that cannot judge a file does not claim it
            return False

    @classmethod
    def tiny_match(cls, state_dict) -> bool:
        return True


class TinySD15(TinyConfig, comfy.supported_models.SD15):
    unet_config = {"context_dim": 32, "model_channels": 32, "use_linear_in_transformer": False,
                   "adm_in_channels": None, "use_temporal_attention": False}
    unet_extra_config = {"num_heads": 2, "num_head_channels": -1}

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(sd1_clip.SD1Tokenizer, TinySD1Clip)


class TinySD20(TinyConfig, comfy.supported_models.SD20):
    """SD2.x 768-v layout: OpenCLIP-H text encoder, linear transformer projections, v-prediction."""
    unet_config = {"context_dim": 32, "model_channels": 32, "use_linear_in_transformer": True,
                   "adm_in_channels": None, "use_temporal_attention": False}
    unet_extra_config = {"num_heads": -1, "num_head_channels": 16}

    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.V_PREDICTION

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(sd2_clip.SD2Tokenizer, TinySD2Clip)


class TinySDXL(TinyConfig, comfy.supported_models.SDXL):
    unet_config = {"model_channels": 32, "use_linear_in_transformer": True,
                   "transformer_depth": [0, 0, 1, 1, 1, 1], "context_dim": 64,
                   "adm_in_channels": 32 + 6 * 256, "use_temporal_attention": False}

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(sdxl_clip.SDXLTokenizer, TinySDXLClip)


def register() -> None:
    """Let ComfyUI's checkpoint loader recognise tiny checkpoints (idempotent)."""
    models = comfy.supported_models.models
    for cls in (TinySDXL, TinySD20, TinySD15):
        if cls not in models:
            models.insert(0, cls)


@torch.no_grad()
def _fill(module: torch.nn.Module, seed: int, all_random: bool = False) -> None:
    """ComfyUI layers start uninitialised: norms 1/0, biases 0, weights small random.

    all_random: every parameter random (norms around 1), so that models of different
    seeds differ at every key (parity tests compare each key of two merges).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if all_random:
            base = 1.0 if ("norm" in name and p.dim() == 1) else 0.0
            p.copy_((base + torch.randn(p.shape, generator=gen) * 0.05).to(p.dtype))
        elif name.endswith("bias"):
            p.zero_()
        elif "norm" in name and p.dim() == 1:
            p.fill_(1.0)
        else:
            p.copy_((torch.randn(p.shape, generator=gen) * 0.05).to(p.dtype))


LAYOUTS = {"sd1": (TinySD15, SD1_UNET), "sd2": (TinySD20, SD2_UNET), "sdxl": (TinySDXL, SDXL_UNET)}


def _unet_config(layout: str) -> dict:
    cfg = dict(LAYOUTS[layout][1])
    return cfg if layout == "sdxl" else model_detection.convert_config(cfg)


def build_model(layout: str, seed: int = 0, all_random: bool = False):
    """A ModelPatcher over a tiny U-Net of the given layout ("sd1", "sd2" or "sdxl")."""
    cls = LAYOUTS[layout][0]
    mc = cls(_unet_config(layout))
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({}, "")
    _fill(model.diffusion_model, seed, all_random)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def build_clip(layout: str, seed: int = 0, all_random: bool = False):
    cls = LAYOUTS[layout][0]
    target = cls(_unet_config(layout)).clip_target()
    clip = comfy.sd.CLIP(target)
    _fill(clip.cond_stage_model, seed + 1000, all_random)
    return clip


def build_vae(seed: int = 0):
    from comfy.taesd.taesd import TAESD
    taesd = TAESD()
    _fill(taesd, seed + 2000)  # comfy.ops layers start uninitialised (NaN garbage)
    sd = taesd.state_dict()
    sd["vae_scale"] = torch.tensor(1.0)
    sd["vae_shift"] = torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd)


def save_checkpoint(path: str | os.PathLike, layout: str, seed: int, vae_seed: int | None = None,
                    all_random: bool = False) -> Path:
    """Write a tiny checkpoint that CheckpointLoaderSimple loads once register() ran."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.sd.save_checkpoint(str(path), build_model(layout, seed, all_random), build_clip(layout, seed, all_random),
                             build_vae(seed if vae_seed is None else vae_seed))
    return path
