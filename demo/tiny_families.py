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
import comfy.ops
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.utils
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
        width = [v.shape[0] for k, v in (state_dict or {}).items() if k.endswith("x_embedder.proj.weight")]
        return width == [WIDTH]


class TinyWan(TinyConfig, comfy.supported_models.WAN21_T2V):
    unet_config = {"image_model": "wan2.1", "model_type": "t2v", "dim": WIDTH}
    unet_extra_config = _only(WAN, "num_heads", "text_dim", "freq_dim")


TINY_CONFIGS = (TinyFlux, TinyFluxSchnell, TinyFlux2, TinyChroma, TinyHiDream, TinyZImage, TinyQwenImage,
                TinyWan)


def register() -> None:
    """Let UNETLoader / CheckpointLoaderSimple recognise the tiny family files (idempotent)."""
    models = comfy.supported_models.models
    for cls in TINY_CONFIGS:
        if cls not in models:
            models.insert(0, cls)


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
MAX_PARAMETERS = 20_000_000  # a tiny model is a few MB; more means a size setting did not take


def released_keys(family: str) -> dict[str, tuple[list, str]]:
    """{key: (shape, dtype)} of the family's released diffusion model (bare keys)."""
    import gzip
    import json
    name, prefix = RELEASED[family]
    path = Path(__file__).resolve().parents[1] / "merge_core" / "architectures" / "keysets" / f"{name}.json.gz"
    with gzip.open(path) as f:
        inventory = json.loads(f.read())
    return {k[len(prefix):]: tuple(v) for k, v in inventory.items() if k.startswith(prefix)}


def host_config(family: str) -> dict:
    """The family's model configuration as the running ComfyUI derives it, shrunk to the tiny size.

    ComfyUI's detection reads the released model's shapes (meta tensors, no memory) and adds whatever its own
    model class needs in that release (0.33's Flux takes ``txt_ids_dims``, its Chroma ``vec_in_dim``); only
    the size settings are then replaced. So no constructor signature is hard-coded here, and a ComfyUI
    release that adds a setting still builds the tiny models.
    """
    from comfy import model_detection
    meta = {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
            for k, (shape, dtype) in released_keys(family).items()}
    detected = model_detection.detect_unet_config(meta, "")
    if detected is None:
        raise RuntimeError(f"this ComfyUI does not recognise the released {family} key set")
    return {**detected, **TINY[family]}


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


def _diffusion_module(family: str) -> torch.nn.Module:
    module = _model_class(family)(**host_config(family), operations=comfy.ops.disable_weight_init,
                                  device=torch.device("cpu"), dtype=torch.float32)
    count = sum(p.numel() for p in module.parameters())
    if count > MAX_PARAMETERS:
        raise RuntimeError(f"tiny {family} has {count:,} parameters: a size setting of TINY['{family}'] no longer "
                           "applies to this ComfyUI's model class")
    return module


def released_naming(family: str, state_dict: dict) -> dict:
    """Keys renamed to the released files' names where the host's class names a parameter otherwise.

    ComfyUI 0.33 builds Flux's and Chroma's RMSNorm scales as ``.weight`` (it renames ``.scale`` on load); the
    released files, and so the test files, say ``.scale``.
    """
    released = released_keys(family)
    out = {}
    for key, value in state_dict.items():
        if key not in released and key.endswith(".weight") and key[:-len("weight")] + "scale" in released:
            key = key[:-len("weight")] + "scale"
        out[key] = value
    return out


FAMILIES = tuple(RELEASED)


@torch.no_grad()
def diffusion_state_dict(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A diffusion-model-only state dict (bare keys, as ComfyUI's ModelSave and the releases store them).

    Every float tensor is random (norm scales around 1), so that models of two seeds differ at every key.
    """
    module = _diffusion_module(family)
    _fill(module, seed, all_random=True)
    gen = torch.Generator().manual_seed(seed + 500)
    for buf in module.buffers():  # SD3's pos_embed: a learned table stored as a buffer (uninitialised here)
        if buf.is_floating_point():
            buf.copy_(torch.randn(buf.shape, generator=gen) * 0.05)
    return released_naming(family, {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()})


def build_model(family: str, seed: int = 0):
    """A ModelPatcher loaded the way UNETLoader loads a diffusion-model file (register() first)."""
    register()
    return comfy.sd.load_diffusion_model_state_dict(diffusion_state_dict(family, seed))


def save_diffusion_model(path: str | os.PathLike, family: str, seed: int) -> Path:
    """A diffusion-model-only safetensors file that UNETLoader loads once register() ran."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file(diffusion_state_dict(family, seed), str(path))
    return path


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
