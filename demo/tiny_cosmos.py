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

from typing import Optional

import comfy.model_base
import comfy.supported_models
from tiny_builder import TinyBuilder
from tiny_models import TinyConfig

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


BUILDER = TinyBuilder(released=RELEASED, tiny=TINY, model_class=_model_class, configs=TINY_CONFIGS,
                      missing=missing)
register, build_model, save_diffusion_model = BUILDER.register, BUILDER.build_model, BUILDER.save_diffusion_model
diffusion_state_dict = BUILDER.diffusion_state_dict
