"""kohya-style LoRA module names for model keys, and the block of a LoRA module (docs/lora.md#lora-to-block-mapping,
docs/lora.md#extracting-a-lora-from-two-models).

Written names are the ones kohya's sd-scripts produce, which ComfyUI, A1111 and
kohya all read: SD1/SD2 U-Net modules in diffusers naming
(``lora_unet_down_blocks_0_attentions_0_proj_in``), SDXL U-Net modules in the
original naming (``lora_unet_input_blocks_4_1_proj_in``), text encoders as
``lora_te_`` (SD1/SD2), ``lora_te1_`` / ``lora_te2_`` (SDXL). Model keys may be
in checkpoint or ComfyUI naming. OpenCLIP text encoders (SD2, SDXL's second)
store q/k/v fused in ``in_proj_weight``: :func:`te_modules` splits them.
"""
from __future__ import annotations

import re
from typing import Optional

from ..architectures import ARCHITECTURES, Architecture, unet_relative
from .families import family_module, is_family, lora_family, metadata_family
from .families import module_block as family_module_block

# original (ldm) U-Net prefixes -> diffusers prefixes, for the SD1/SD2 layout
_RESNET_SUFFIX = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                  "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def _sd1_prefixes() -> list[tuple[str, str, bool]]:
    """(ldm prefix, diffusers prefix, is_resnet), longest ldm prefixes first."""
    table = [("input_blocks.0.0", "conv_in", False), ("time_embed.0", "time_embedding.linear_1", False),
             ("time_embed.2", "time_embedding.linear_2", False), ("out.0", "conv_norm_out", False),
             ("out.2", "conv_out", False), ("middle_block.0", "mid_block.resnets.0", True),
             ("middle_block.1", "mid_block.attentions.0", False), ("middle_block.2", "mid_block.resnets.1", True)]
    for i in range(4):
        for j in range(2):
            table.append((f"input_blocks.{1 + 3 * i + j}.0", f"down_blocks.{i}.resnets.{j}", True))
            if i < 3:
                table.append((f"input_blocks.{1 + 3 * i + j}.1", f"down_blocks.{i}.attentions.{j}", False))
        if i < 3:
            table.append((f"input_blocks.{3 + 3 * i}.0.op", f"down_blocks.{i}.downsamplers.0.conv", False))
        for j in range(3):
            table.append((f"output_blocks.{3 * i + j}.0", f"up_blocks.{i}.resnets.{j}", True))
            if i > 0:
                table.append((f"output_blocks.{3 * i + j}.1", f"up_blocks.{i}.attentions.{j}", False))
        if i < 3:
            table.append((f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.conv",
                          f"up_blocks.{i}.upsamplers.0.conv", False))
    return sorted(table, key=lambda t: -len(t[0]))


_SD1_TABLE = _sd1_prefixes()


def sd1_unet_to_diffusers(rel: str) -> Optional[str]:
    """``input_blocks.1.1.proj_in`` -> ``down_blocks.0.attentions.0.proj_in`` (no ``.weight``)."""
    for ldm, diff, resnet in _SD1_TABLE:
        if rel == ldm or rel.startswith(ldm + "."):
            rest = rel[len(ldm) + 1:]
            if resnet:
                renamed = next((v + rest[len(k):] for k, v in _RESNET_SUFFIX.items()
                                if rest == k or rest.startswith(k + ".")), None)
                if renamed is None:
                    return None
                rest = renamed
            return diff + ("." + rest if rest else "")
    return None


ATTENTION_PARTS = ("proj_in", "proj_out", ".attn1.", ".attn2.", ".ff.net.")
CONV_PARTS = ("in_layers.2", "out_layers.3", "skip_connection", ".op.", ".conv.")


def unet_module(key: str, arch: Architecture, shape: tuple[int, ...], conv: bool) -> Optional[str]:
    """kohya name of a U-Net weight key, or None when kohya LoRA does not target it.

    Targets: the Linear and 1x1 conv layers of the transformer blocks; with
    ``conv``, also the resnet, downsample and upsample convolutions (LoCon).
    """
    if is_family(arch):
        return family_module(key, arch, shape, conv)
    rel = unet_relative(key)
    if rel is None or not rel.endswith(".weight") or len(shape) < 2:
        return None
    rel = rel[:-len(".weight")]
    dotted = "." + rel + "."
    if "transformer_blocks" in rel or "proj_in" in rel or "proj_out" in rel:
        if not any(p in dotted for p in ATTENTION_PARTS) or ".norm" in dotted:
            return None
    elif not (conv and len(shape) == 4 and any(p in dotted for p in CONV_PARTS)):
        return None
    if arch.name == "sdxl":
        return "lora_unet_" + rel.replace(".", "_")
    diff = sd1_unet_to_diffusers(rel)
    return None if diff is None else "lora_unet_" + diff.replace(".", "_")


_TE_PREFIXES = (  # (key prefix, kohya prefix for SD1/SD2, for SDXL, OpenCLIP layout)
    ("cond_stage_model.transformer.text_model.", "lora_te_text_model_", None, False),
    ("clip_l.transformer.text_model.", "lora_te_text_model_", "lora_te1_text_model_", False),
    ("text_encoders.clip_l.transformer.text_model.", None, "lora_te1_text_model_", False),  # Forge-style Flux
    ("conditioner.embedders.0.transformer.text_model.", None, "lora_te1_text_model_", False),
    ("clip_g.transformer.text_model.", None, "lora_te2_text_model_", False),
    ("clip_h.transformer.text_model.", "lora_te_text_model_", None, False),
    ("conditioner.embedders.1.model.transformer.", None, "lora_te2_text_model_", True),
    ("cond_stage_model.model.transformer.", "lora_te_text_model_", None, True),
)
_HF_TARGETS = re.compile(r"^encoder\.layers\.(\d+)\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$")
_OPENCLIP = re.compile(r"^resblocks\.(\d+)\.(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|"
                       r"mlp\.c_proj\.weight)$")
_OPENCLIP_NAMES = {"attn.out_proj.weight": "self_attn_out_proj", "mlp.c_fc.weight": "mlp_fc1",
                   "mlp.c_proj.weight": "mlp_fc2"}


def te_modules(key: str, arch: Architecture, shape: tuple[int, ...]) -> list[tuple[str, Optional[slice]]]:
    """kohya names of a text-encoder key, each with the row slice of the weight it covers.

    Targets: attention q/k/v/out projections and the two MLP layers (kohya's CLIPAttention/CLIPMLP).
    On the transformer families only CLIP-L is targeted (``lora_te1_``, as kohya's Flux LoRAs name it).
    """
    for prefix, te_sd1, te_sdxl, openclip in _TE_PREFIXES:
        if not key.startswith(prefix):
            continue
        lora_prefix = te_sdxl if arch.name == "sdxl" or is_family(arch) else te_sd1
        if lora_prefix is None:
            return []
        rest = key[len(prefix):]
        if not openclip:
            m = _HF_TARGETS.match(rest)
            return [(lora_prefix + rest[:-len(".weight")].replace(".", "_"), None)] if m else []
        m = _OPENCLIP.match(rest)
        if not m:
            return []
        layer, part = m.group(1), m.group(2)
        head = f"{lora_prefix}encoder_layers_{layer}_"
        if part == "attn.in_proj_weight":
            n = shape[0] // 3
            return [(head + f"self_attn_{x}_proj", slice(i * n, (i + 1) * n)) for i, x in enumerate("qkv")]
        return [(head + _OPENCLIP_NAMES[part], None)]
    return []


# --- the block of a LoRA module (for block weights) -------------------------------------

_DIFFUSERS_BLOCKS = (
    (re.compile(r"^down_blocks_(\d+)_(attentions|resnets)_(\d+)_"), lambda m: f"IN{1 + 3 * int(m[1]) + int(m[3]):02d}"),
    (re.compile(r"^down_blocks_(\d+)_downsamplers_"), lambda m: f"IN{3 + 3 * int(m[1]):02d}"),
    (re.compile(r"^mid_block_"), lambda m: "M00"),
    (re.compile(r"^up_blocks_(\d+)_(attentions|resnets)_(\d+)_"), lambda m: f"OUT{3 * int(m[1]) + int(m[3]):02d}"),
    (re.compile(r"^up_blocks_(\d+)_upsamplers_"), lambda m: f"OUT{3 * int(m[1]) + 2:02d}"),
    (re.compile(r"^(conv_in|time_embedding)"), lambda m: "IN00"),
    (re.compile(r"^input_blocks_(\d+)_"), lambda m: f"IN{int(m[1]):02d}"),
    (re.compile(r"^middle_block_"), lambda m: "M00"),
    (re.compile(r"^output_blocks_(\d+)_"), lambda m: f"OUT{int(m[1]):02d}"),
    (re.compile(r"^(time_embed|label_emb)"), lambda m: "IN00"),
)
UNET_LORA_PREFIXES = ("lora_unet_", "lycoris_")


def module_block(name: str, arch: Architecture) -> Optional[str]:
    """Block id of a LoRA module name; BASE for text encoders; None when unknown."""
    if is_family(arch):
        return family_module_block(name, arch)
    if name.startswith(("lora_te", "text_encoder")):
        return "BASE"
    if name.startswith("diffusion_model."):  # ComfyUI's own naming (LoraSave)
        return arch.block_of(name + ".weight")
    body = next((name[len(p):] for p in UNET_LORA_PREFIXES if name.startswith(p)), None)
    if body is None:
        return None
    if body.startswith(("conv_out", "conv_norm_out", "out_")):
        return arch.blocks[-1]
    for pattern, block in _DIFFUSERS_BLOCKS:
        m = pattern.match(body)
        if m:
            found = block(m)
            return found if found in arch.blocks else None
    return None


def lora_architecture(names) -> Optional[str]:
    """'sdxl' or 'sd1' from LoRA module names (docs/lora.md#lora-family-detection), None when nothing is recognised.

    SDXL: ``lora_te1_``/``lora_te2_`` text encoders, or original-naming U-Net modules
    that never go past block 8. SD1/SD2: ``lora_te_``, diffusers U-Net names, or blocks 9-11.
    """
    max_block, unet = -1, False
    names = list(names)
    comfy_named = [n + ".weight" for n in names if n.startswith("diffusion_model.")]
    if comfy_named:  # ComfyUI's own naming (LoraSave): the model keys themselves
        from ..architectures import detect
        arch = detect(comfy_named)
        if arch is not None:
            return "sdxl" if arch.name == "sdxl" else "sd1"
    for n in names:
        if n.startswith(("lora_te1_", "lora_te2_")):
            return "sdxl"
        if n.startswith("lora_te_") or re.match(r"^lora_unet_(down_blocks|up_blocks|mid_block)_", n):
            return "sd1"
        m = re.match(r"^lora_unet_(input|output)_blocks_(\d+)_", n)
        if m:
            max_block = max(max_block, int(m[2]))
        unet = unet or n.startswith("lora_unet_")
    if max_block >= 9:
        return "sd1"
    return "sdxl" if unet else None


def lora_arch(names, metadata=None) -> Optional[Architecture]:
    """The family of a LoRA: the transformer family its own metadata names when that explains its modules
    (families.metadata_family), else from its module names: a transformer family (full-size layout), else
    SD1 or SDXL (docs/lora.md#lora-family-detection); None when nothing is recognised."""
    names = list(names)
    family = metadata_family(metadata, names) or lora_family(names)
    if family is not None:
        return family
    kind = lora_architecture(names)
    return None if kind is None else ARCHITECTURES[kind]
