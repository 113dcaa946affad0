"""Sanity grid of the demo models, sampled through ComfyUI's own loader, sampler and VAE:
``python demo/train/sample_grid.py [--models DIR] [--out out/demo_models_grid.png]``.

Rows: base, pastel, stripes (each file loaded as Load Checkpoint loads it); columns: captions. Euler, 20 steps,
CFG 6, empty negative prompt, the same seed per column.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import train  # noqa: E402

PROMPTS = ["a red circle on the left", "a blue square in the middle", "a green triangle on the right",
           "a yellow circle in the middle", "a red square on the right", "a blue triangle on the left"]


def load(path: Path):
    import comfy.sd
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
    return model, clip, vae


def conditioning(clip, text: str):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


@torch.no_grad()
def sample(model, clip, vae, text: str, seed: int, size: int = 64, steps: int = 20, cfg: float = 6.0):
    import comfy.sample
    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    out = comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", conditioning(clip, text),
                              conditioning(clip, ""), latent, denoise=1.0, seed=seed)
    return (vae.decode(out)[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=REPO / "demo" / "models")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo_models_grid.png")
    parser.add_argument("--seeds", type=int, default=1, help="rows per model (seeds 0..n-1)")
    ns = parser.parse_args(argv)
    torch.set_num_threads(train.THREADS)
    train.setup_comfy()
    from PIL import Image
    rows = []
    for style in train.STYLES:
        model, clip, vae = load(ns.models / train.FILE_NAME.format(style))
        for seed in range(ns.seeds):
            rows.append(np.concatenate([sample(model, clip, vae, p, seed + 17 * i) for i, p in enumerate(PROMPTS)],
                                       axis=1))
    grid = np.concatenate(rows, axis=0)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(ns.out)
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
