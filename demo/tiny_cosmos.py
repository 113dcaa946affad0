"""Tiny Cosmos-family models (Cosmos 1 7B/14B, Cosmos-Predict2 2B/14B, Anima) built from ComfyUI's own classes.

Each configuration is the one ComfyUI's detection reads from the released model's key inventory (meta tensors,
no memory), shrunk to a width of 64 and two or three blocks: the same key names as the released models, a few
MB each. Detection hard-codes the full-size block and head counts (Cosmos 1's 28/36 blocks, 16/40 heads), so
``register()`` adds a tiny config per family that matches only these widths and sets them. Anima's LLM adapter
has no size settings in ComfyUI (a 32128 x 1024 embedding and six 1024-wide blocks: over 100M parameters), so
the tiny Anima builds the same adapter class at a small width. ComfyUI 0.3.75 has no Anima: `missing` says
so. Needs ComfyUI importable.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Optional

import torch

import comfy.model_base
import comfy.ops
import comfy.sd
import comfy.supported_models
import comfy.utils
from tiny_families import MAX_PARAMETERS
from tiny_models import TinyConfig, _fill

WIDTH, HEADS = 64, 2
ADAPTER_WIDTH = 32  # Anima's LLM adapter: the text encoder's width in, the cross-attention context out
ADAPTER = dict(source_dim=ADAPTER_WIDTH, target_dim=ADAPTER_WIDTH, model_dim=ADAPTER_WIDTH, num_layers=2,
               num_heads=HEADS)

# family: the released model's key inventory (bare keys) whose detected configuration is shrunk
RELEASED = {"cosmos1": "cosmos1-7b", "cosmos-predict2": "cosmos-predict2-2b", "anima": "anima"}
TINY = {"cosmos1": dict(model_channels=WIDTH, num_blocks=2, num_heads=HEADS),
        "cosmos-predict2": dict(model_channels=WIDTH, num_blocks=3, num_heads=HEADS),
        "anima": dict(model_channels=WIDTH, num_blocks=2, num_heads=HEADS, crossattn_emb_channels=ADAPTER_WIDTH,
                      tiny_adapter=ADAPTER)}
FAMILIES = tuple(RELEASED)


def missing(family: str) -> Optional[str]:
    """Why the running ComfyUI cannot build the family's tiny model (None when it can)."""
    if family == "anima" and not hasattr(comfy.supported_models, "Anima"):
        return "this ComfyUI has no Anima (comfy/ldm/anima: ComfyUI 0.33 and later)"
    return None


class TinyCosmos1(TinyConfig, comfy.supported_models.CosmosT2V):
    unet_config = {"image_model": "cosmos", "in_channels": 16, "model_channels": WIDTH}
    unet_extra_config = {"num_blocks": TINY["cosmos1"]["num_blocks"], "num_heads": HEADS}


class TinyCosmosPredict2(TinyConfig, comfy.supported_models.CosmosT2IPredict2):
    """0.33 counts the blocks; 0.3.75 sets 28 or 36 by the width, so the count is set here."""
    unet_config = {"image_model": "cosmos_predict2", "in_channels": 16, "model_channels": WIDTH}
    unet_extra_config = {"num_blocks": TINY["cosmos-predict2"]["num_blocks"], "num_heads": HEADS}


TINY_CONFIGS: tuple = (TinyCosmos1, TinyCosmosPredict2)

if missing("anima") is None:
    from comfy.ldm.anima.model import Anima, LLMAdapter
    from comfy.ldm.cosmos.predict2 import MiniTrainDIT

    class TinyAnimaDiT(Anima):
        """ComfyUI's Anima with its LLM adapter built at ``tiny_adapter``'s size instead of the released one."""

        def __init__(self, *args, tiny_adapter: dict, **kwargs):
            MiniTrainDIT.__init__(self, *args, **kwargs)
            self.llm_adapter = LLMAdapter(**tiny_adapter, device=kwargs.get("device"), dtype=kwargs.get("dtype"),
                                          operations=kwargs.get("operations"))

    class TinyAnimaModel(comfy.model_base.Anima):
        def __init__(self, model_config, model_type=comfy.model_base.ModelType.FLOW, device=None):
            comfy.model_base.BaseModel.__init__(self, model_config, model_type, device=device,
                                                unet_model=TinyAnimaDiT)

    class TinyAnima(TinyConfig, comfy.supported_models.Anima):
        unet_config = {"image_model": "anima", "model_channels": WIDTH}
        unet_extra_config = {k: TINY["anima"][k] for k in ("num_heads", "crossattn_emb_channels", "tiny_adapter")}

        def get_model(self, state_dict, prefix="", device=None):
            return TinyAnimaModel(self, device=device)

    TINY_CONFIGS += (TinyAnima,)


def register() -> None:
    """Let UNETLoader recognise the tiny family files (idempotent)."""
    models = comfy.supported_models.models
    for cls in TINY_CONFIGS:
        if cls not in models:
            models.insert(0, cls)


def released_keys(family: str) -> dict[str, tuple[list, str]]:
    """{key: (shape, dtype)} of the family's released diffusion model (bare keys)."""
    path = Path(__file__).resolve().parents[1] / "merge_core" / "architectures" / "keysets"
    with gzip.open(path / f"{RELEASED[family]}.json.gz") as f:
        return {k: tuple(v) for k, v in json.loads(f.read()).items()}


def host_config(family: str) -> dict:
    """The family's configuration as the running ComfyUI detects it from the released keys, shrunk."""
    from comfy import model_detection
    meta = {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
            for k, (shape, dtype) in released_keys(family).items()}
    detected = model_detection.detect_unet_config(meta, "")
    if detected is None:
        raise RuntimeError(f"this ComfyUI does not recognise the released {family} key set")
    return {**detected, **TINY[family]}


def _model_class(family: str):
    if family == "cosmos1":
        from comfy.ldm.cosmos.model import GeneralDIT
        return GeneralDIT
    if family == "cosmos-predict2":
        from comfy.ldm.cosmos.predict2 import MiniTrainDIT
        return MiniTrainDIT
    if family == "anima":
        return TinyAnimaDiT
    raise ValueError(f"unknown tiny family '{family}' (one of {', '.join(FAMILIES)})")


@torch.no_grad()
def diffusion_state_dict(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A diffusion-model-only state dict (bare keys), every float tensor random so two seeds differ everywhere."""
    reason = missing(family)
    if reason:
        raise RuntimeError(reason)
    module = _model_class(family)(**host_config(family), operations=comfy.ops.disable_weight_init,
                                  device=torch.device("cpu"), dtype=torch.float32)
    count = sum(p.numel() for p in module.parameters())
    if count > MAX_PARAMETERS:
        raise RuntimeError(f"tiny {family} has {count:,} parameters: a size setting of TINY['{family}'] no longer "
                           "applies to this ComfyUI's model class")
    _fill(module, seed, all_random=True)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def build_model(family: str, seed: int = 0):
    """A ModelPatcher loaded the way UNETLoader loads a diffusion-model file."""
    register()
    return comfy.sd.load_diffusion_model_state_dict(diffusion_state_dict(family, seed))


def save_diffusion_model(path: str | os.PathLike, family: str, seed: int) -> Path:
    """A diffusion-model-only safetensors file that UNETLoader loads once register() ran."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file(diffusion_state_dict(family, seed), str(path))
    return path
