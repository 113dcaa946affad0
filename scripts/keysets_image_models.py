"""Full-size key inventories of the families in merge_core/architectures/image_models.py, built on the meta
device from ComfyUI 0.33's classes (run through make_keysets.py).

Krea 2 is its class's defaults (12.8B parameters); LongCat-Image is ComfyUI's Flux class with the values
0.33's detection and supported_models.LongCatImage set (10 double and 20 single blocks, Qwen2.5-VL's 3584-wide
text, no pooled vector, no guidance); AuraFlow the class defaults at the released width (4 joint and 32 single
layers, a 9216-token position table: v0.3); Flux.2 Klein 4B and 9B are Flux.2 at 3072 and 4096 wide with
5/20 and 8/24 blocks, their Qwen3 4B / 8B text (three hidden layers concatenated). The Klein files keep the
``.scale`` name BFL's releases give their RMSNorm parameters (0.33's class says ``.weight`` and its Flux.2 config
renames on load); LongCat-Image keeps the class's ``.weight``: 0.33's LongCatImage config renames nothing, so
the files it loads say ``.weight``.
"""
from __future__ import annotations

import re

FLUX_BASE = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, mlp_ratio=4.0, num_heads=24,
                 hidden_size=3072, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True)
LONGCAT_IMAGE = dict(FLUX_BASE, vec_in_dim=None, context_in_dim=3584, depth=10, depth_single_blocks=20,
                     guidance_embed=False, txt_ids_dims=[1, 2])
FLUX2_BASE = dict(image_model="flux2", in_channels=128, out_channels=128, patch_size=1, vec_in_dim=None,
                  mlp_ratio=3.0, axes_dim=[32, 32, 32, 32], theta=2000, qkv_bias=False, global_modulation=True,
                  mlp_silu_act=True, ops_bias=False, txt_ids_dims=[3])
KLEIN_4B = dict(FLUX2_BASE, hidden_size=3072, num_heads=24, context_in_dim=3 * 2560, depth=5, depth_single_blocks=20,
                guidance_embed=False)
KLEIN_9B = dict(FLUX2_BASE, hidden_size=4096, num_heads=32, context_in_dim=3 * 4096, depth=8, depth_single_blocks=24,
                guidance_embed=False)
AURAFLOW = dict(in_channels=4, out_channels=4, patch_size=2, dim=3072, n_layers=36, n_double_layers=4, n_heads=12,
                global_conddim=3072, cond_seq_dim=2048, max_seq=96 * 96)
INVENTORIES: tuple[str, ...] = ("krea2", "longcat-image", "auraflow", "flux2-klein-4b", "flux2-klein-9b")
_FLUX_NORM = re.compile(r"(?:double|single)_blocks\.\d+\.(?:(?:img|txt)_attn\.)?norm\.(?:query|key)_norm\.weight$")


class _ReleasedNames:
    """A module whose state dict names the Flux RMSNorm parameters ``.scale``, as the released files do."""

    def __init__(self, module):
        self.module = module

    def state_dict(self):
        return {k[:-len("weight")] + "scale" if _FLUX_NORM.match(k) else k: v
                for k, v in self.module.state_dict().items()}


def build(name: str):
    """The model (on the meta device) of one inventory."""
    import torch

    import comfy.ops
    ops = dict(operations=comfy.ops.disable_weight_init, device=torch.device("meta"), dtype=torch.bfloat16)
    if name == "krea2":
        from comfy.ldm.krea2.model import SingleStreamDiT
        return SingleStreamDiT(**ops)
    if name == "auraflow":
        from comfy.ldm.aura.mmdit import MMDiT
        return MMDiT(**AURAFLOW, **ops)
    if name == "longcat-image":
        from comfy.ldm.flux.model import Flux
        return Flux(**LONGCAT_IMAGE, **ops)
    if name in ("flux2-klein-4b", "flux2-klein-9b"):
        from comfy.ldm.flux.model import Flux
        return _ReleasedNames(Flux(**(KLEIN_4B if name == "flux2-klein-4b" else KLEIN_9B), **ops))
    raise SystemExit(f"unknown inventory '{name}'")
