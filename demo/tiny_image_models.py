"""Tiny Krea 2, LongCat-Image and AuraFlow models built from ComfyUI's own classes (width 64, two or three
blocks), with the key names of the released models (merge_core/architectures/keysets).

As in tiny_families: the host's detection reads the released key set's shapes (meta tensors) and only the size
settings are replaced; ``register()`` adds tiny configs so that UNETLoader loads the files (the host's
detection hard-codes full-size values: Krea 2's 128-wide heads, AuraFlow's 3072 width). A family whose class
the running ComfyUI lacks (Krea 2 and LongCat-Image before 0.33) is listed by ``missing(family)``.
"""
from __future__ import annotations

import comfy.supported_models
from tiny_builder import TinyBuilder, lacking_config, widths
from tiny_families import HEADS, ROPE, TEXT_WIDTH, WIDTH, _only
from tiny_models import TinyConfig
KREA2 = dict(features=WIDTH, heads=HEADS, kvheads=1, layers=3, txtdim=TEXT_WIDTH, txtlayers=3, txtheads=HEADS,
             txtkvheads=HEADS, tdim=32)
LONGCAT_IMAGE = dict(hidden_size=WIDTH, num_heads=HEADS, axes_dim=ROPE, context_in_dim=48, depth=2,
                     depth_single_blocks=3)
AURAFLOW = dict(dim=WIDTH, n_heads=HEADS, global_conddim=WIDTH, cond_seq_dim=TEXT_WIDTH, n_double_layers=2,
                n_layers=4, max_seq=64)
TINY = {"krea2": KREA2, "longcat-image": LONGCAT_IMAGE, "auraflow": AURAFLOW}
HOST_CONFIG = {"krea2": "Krea2", "longcat-image": "LongCatImage", "auraflow": "AuraFlow"}  # supported_models
RELEASED = {family: family for family in TINY}  # each keyset is named after its family
FAMILIES = tuple(TINY)


def missing(family: str) -> str:
    """Why the running ComfyUI cannot build this family ('' when it can)."""
    return lacking_config(HOST_CONFIG, family)


def _tiny_configs() -> tuple:
    configs = []
    if not missing("krea2"):
        class TinyKrea2(TinyConfig, comfy.supported_models.Krea2):
            unet_config = {"image_model": "krea2", "features": WIDTH}
            unet_extra_config = _only(KREA2, "heads", "kvheads", "txtheads", "txtkvheads", "tdim")
        configs.append(TinyKrea2)
    if not missing("longcat-image"):
        class TinyLongCatImage(TinyConfig, comfy.supported_models.LongCatImage):
            unet_config = {"image_model": "flux", "guidance_embed": False, "vec_in_dim": None, "hidden_size": WIDTH,
                           "context_in_dim": LONGCAT_IMAGE["context_in_dim"]}
            unet_extra_config = {**_only(LONGCAT_IMAGE, "num_heads", "axes_dim"), "txt_ids_dims": [1, 2]}
        configs.append(TinyLongCatImage)

    class TinyAuraFlow(TinyConfig, comfy.supported_models.AuraFlow):
        """Detection reads no width: the config matches on the image embedding's and sets the rest."""
        unet_config = {"cond_seq_dim": TEXT_WIDTH}
        unet_extra_config = _only(AURAFLOW, "dim", "n_heads", "global_conddim")

        @classmethod
        def tiny_match(cls, state_dict) -> bool:
            return widths(state_dict, "init_x_linear.weight") == [WIDTH]
    configs.append(TinyAuraFlow)
    return tuple(configs)


TINY_CONFIGS = _tiny_configs()


def _model_class(family: str):
    if family == "krea2":
        from comfy.ldm.krea2.model import SingleStreamDiT
        return SingleStreamDiT
    if family == "longcat-image":
        from comfy.ldm.flux.model import Flux
        return Flux
    from comfy.ldm.aura.mmdit import MMDiT
    return MMDiT


# to_front: ahead of tiny_families' Flux configs, whose tiny schnell would otherwise also claim the tiny
# LongCat-Image (no guidance input either)
BUILDER = TinyBuilder(released=RELEASED, tiny=TINY, model_class=_model_class, configs=TINY_CONFIGS,
                      missing=missing, to_front=True)
register, build_model, save_diffusion_model = BUILDER.register, BUILDER.build_model, BUILDER.save_diffusion_model
diffusion_state_dict = BUILDER.diffusion_state_dict
