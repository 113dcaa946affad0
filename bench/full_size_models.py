"""Full-size SD1.5 / SDXL ComfyUI ModelPatchers for benchmarks, built without loading any file.

The U-Net config is detected by ComfyUI from the real key inventory (shapes only,
as meta tensors), then the model is built with ComfyUI's own classes. Weights
are left as uninitialised fp16 storage (no memory touched) unless ``fill`` asks
for seeded random values.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
import comfy_env  # noqa: E402

comfy_env.setup()

import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
from comfy import model_detection  # noqa: E402
from synth import keyset  # noqa: E402

PREFIX = "model.diffusion_model."


def build(layout: str, fill_seed: int | None = None, dtype: torch.dtype = torch.float16):
    """layout: a key inventory (sd1, sdxl, flux1-dev, ...); weights stored in ``dtype``."""
    shapes = keyset(layout)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith(PREFIX)}
    config = model_detection.model_config_from_unet(meta, PREFIX)
    if config is None:
        raise RuntimeError(f"ComfyUI did not recognise the {layout} key set")
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, "")
    if fill_seed is not None:
        gen = torch.Generator().manual_seed(fill_seed)
        pool = (torch.randn(1 << 24, generator=gen) * 0.05).to(dtype)
        with torch.no_grad():
            for i, p in enumerate(model.diffusion_model.parameters()):
                n = p.numel()
                reps = math.ceil(n / pool.numel())
                src = pool.roll(i * 7919) if reps == 1 else pool.repeat(reps)
                p.copy_(src[:n].reshape(p.shape))
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())
