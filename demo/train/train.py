"""Rebuild the three demo checkpoints from nothing: ``python demo/train/train.py --out DIR [--force]``.

Stages, all on the CPU with a fixed seed, thread count and data order (scenes.py draws the data):
1. the TAESD autoencoder, on 32 x 32 crops (aligned to the 8-pixel latent grid) of scenes in all three styles;
   its vae_scale / vae_shift are then set so that the SD1 latent format gives latents of unit spread;
2. the base U-Net on base-style scenes, through ComfyUI's own model object (process_latent_in, the SD1
   discrete eps schedule, apply_model), min-SNR weighted x0 loss, 10% empty captions for CFG, EMA weights;
3. two fine-tunes, each a copy of the base U-Net trained on the same scenes and captions drawn in its style.
The CLIP-L text encoder (width 32) stays frozen at a seeded random initialisation: distinct caption words give
distinct embeddings. The fine-tunes start from the base's fp16-rounded weights and share its CLIP and VAE
exactly. The files are fp16 with the training settings in their metadata. Writing over existing files needs
--force.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import scenes  # noqa: E402

STYLES = ("base", "pastel", "stripes")
FILE_NAME = "merge-suite-demo-{}.safetensors"
SIZE = 64
THREADS = 1  # one thread: reproducible, and on a busy 2-core machine ten times faster than two
SETTINGS = {
    "image_size": SIZE, "threads": THREADS, "seed": 20240601,
    "vae_images_per_style": 384, "vae_steps": 500, "vae_batch": 16, "vae_crop": 32, "vae_lr": 5e-4,
    "unet_images_per_style": 1536, "unet_batch": 32, "unet_lr": 1e-3, "base_steps": 2400, "base_ema": 0.998,
    "finetune_steps": 600, "finetune_lr": 4e-4, "finetune_ema": 0.99, "caption_dropout": 0.1,
    "min_snr_gamma": 5.0, "warmup_steps": 100,
}


def setup_comfy():
    """Put ComfyUI first on sys.path (this repo's nodes/ would shadow its nodes module), CPU mode; load
    nodes/demo_models.py by path."""
    comfy_dir = Path(os.environ.get("COMFYUI_PATH") or REPO / ".host" / "ComfyUI").resolve()
    if not (comfy_dir / "comfy").is_dir():
        sys.exit(f"ComfyUI not found at {comfy_dir}: set COMFYUI_PATH")
    sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args
    args.cpu = True
    spec = importlib.util.spec_from_file_location("merge_suite_demo_models", REPO / "nodes" / "demo_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register_model_config()
    return module


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@torch.no_grad()
def reset_layers(module: torch.nn.Module) -> None:
    """PyTorch's default initialisation (ComfyUI's layers skip it and start uninitialised)."""
    for m in module.modules():
        for cls in (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm):
            if isinstance(m, cls):
                cls.reset_parameters(m)
                break


@torch.no_grad()
def fp16_round(module: torch.nn.Module) -> None:
    """Round the weights to what the fp16 file will hold, so later stages see the shipped values."""
    for p in module.parameters():
        p.copy_(p.half().float())


def images_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(255)  # (N, H, W, 3) in 0..1, ComfyUI's IMAGE layout


# ----------------------------------------------------------------------------------------------------- VAE
@torch.no_grad()
def colour_passthrough_init(taesd) -> None:
    """Start the autoencoder as a working one: channels 0-2 carry R, G, B through every layer (identity taps,
    2 x 2 box filters in the strided convolutions, residual branches nearly silent), so encode gives each
    8 x 8 cell's mean colour and decode paints it back. Training from there only has to add the detail
    (edges, outlines, stripes); from scratch, a few hundred CPU steps do not even learn the colours."""
    for m in taesd.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.mul_(0.1)
            if m.bias is not None:
                m.bias.zero_()
    rgb = range(3)
    enc, dec = taesd.taesd_encoder, taesd.taesd_decoder
    for conv in [enc[0], enc[14], dec[1], dec[7], dec[12], dec[17], dec[19]]:
        for c in rgb:
            conv.weight[c, c, 1, 1] += 1.0
    for conv in [enc[2], enc[6], enc[10]]:
        for c in rgb:
            conv.weight[c, c, 1:3, 1:3] += 0.25


def train_vae(settings: dict):
    from comfy.taesd.taesd import TAESD
    torch.manual_seed(settings["seed"])
    gen = torch.Generator().manual_seed(settings["seed"] + 1)
    count = settings["vae_images_per_style"]
    pixels = torch.cat([images_tensor(scenes.dataset(settings["seed"] + 10, count, style, SIZE)[0])
                        for style in STYLES]).permute(0, 3, 1, 2)
    taesd = TAESD()
    reset_layers(taesd)
    colour_passthrough_init(taesd)
    params = list(taesd.taesd_encoder.parameters()) + list(taesd.taesd_decoder.parameters())
    opt = torch.optim.Adam(params, lr=settings["vae_lr"])
    crop, batch, steps = settings["vae_crop"], settings["vae_batch"], settings["vae_steps"]
    offsets = (SIZE - crop) // 8 + 1
    started = time.time()
    for step in range(steps):
        idx = torch.randint(len(pixels), (batch,), generator=gen)
        oy, ox = (torch.randint(offsets, (2,), generator=gen) * 8).tolist()
        x = pixels[idx, :, oy:oy + crop, ox:ox + crop]
        z = taesd.taesd_encoder(x)
        y = taesd.taesd_decoder(z)
        grad = ((y.diff(dim=2) - x.diff(dim=2)).abs().mean() + (y.diff(dim=3) - x.diff(dim=3)).abs().mean())
        loss = torch.nn.functional.mse_loss(y, x) + 0.2 * grad + 1e-4 * z.pow(2).mean()
        for g in opt.param_groups:
            g["lr"] = settings["vae_lr"] * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae {step}/{steps} loss {loss.item():.5f} ({time.time() - started:.0f} s)")
    fp16_round(taesd)
    with torch.no_grad():
        sample = pixels[::6]
        raw = taesd.taesd_encoder(sample)
        recon = taesd.taesd_decoder(raw)
    mean, std = raw.mean().item(), raw.std().item()
    import comfy.latent_formats
    factor = comfy.latent_formats.SD15().scale_factor
    scale = float(torch.tensor(std * factor).half())
    shift = float(torch.tensor(-mean / scale).half())
    log(f"vae raw latent mean {mean:.3f} std {std:.3f} -> vae_scale {scale:.5f} vae_shift {shift:.5f}; "
        f"reconstruction mse {torch.nn.functional.mse_loss(recon, sample).item():.5f}")
    sd = taesd.state_dict()
    sd["vae_scale"] = torch.tensor(scale)
    sd["vae_shift"] = torch.tensor(shift)
    import comfy.sd
    return comfy.sd.VAE(sd=sd)


# ------------------------------------------------------------------------------------------------- CLIP
def build_clip(demo, seed: int):
    import comfy.sd
    clip = comfy.sd.CLIP(demo.config_class()(demo.unet_build_config()).clip_target())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in clip.cond_stage_model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name and p.dim() == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        fp16_round(clip.cond_stage_model)
    return clip


@torch.no_grad()
def encode_captions(clip, captions: list[str]) -> torch.Tensor:
    return torch.cat([clip.encode_from_tokens(clip.tokenize(c)) for c in captions]).float()


# ------------------------------------------------------------------------------------------------ U-Net
def build_unet(demo, seed: int):
    mc = demo.config_class()(demo.unet_build_config())
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({}, "")
    torch.manual_seed(seed)
    reset_layers(model.diffusion_model)
    with torch.no_grad():  # zero the last layer of each residual branch and the output: training starts calm
        for name, m in model.diffusion_model.named_modules():
            if name == "out.2" or name.endswith("out_layers.3") or name.endswith("proj_out"):
                m.weight.zero_()
                m.bias.zero_()
    return model


@torch.no_grad()
def encode_latents(model, vae, style: str, settings: dict) -> tuple[torch.Tensor, list[str]]:
    images, captions = scenes.dataset(settings["seed"] + 20, settings["unet_images_per_style"], style, SIZE)
    pixels = images_tensor(images)
    latents = torch.cat([vae.encode(pixels[i:i + 128]) for i in range(0, len(pixels), 128)]).float()
    x0 = model.process_latent_in(latents)
    log(f"{style}: {len(x0)} latents, mean {x0.mean().item():.3f} std {x0.std().item():.3f}")
    return x0, captions


def train_unet(model, x0, caption_ids, conds, empty_id, steps, lr, ema_decay, seed, settings, label):
    gen = torch.Generator().manual_seed(seed)
    sampling = model.model_sampling
    sigmas = sampling.sigmas.float()
    params = list(model.diffusion_model.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batch, gamma = settings["unet_batch"], settings["min_snr_gamma"]
    started, running = time.time(), 0.0
    model.train()
    for step in range(steps):
        idx = torch.randint(len(x0), (batch,), generator=gen)
        ids = caption_ids[idx].clone()
        ids[torch.rand(batch, generator=gen) < settings["caption_dropout"]] = empty_id
        sigma = sigmas[torch.randint(len(sigmas), (batch,), generator=gen)]
        noise = torch.randn(x0[idx].shape, generator=gen)
        target = x0[idx]
        pred = model.apply_model(target + sigma.view(-1, 1, 1, 1) * noise, sigma, c_crossattn=conds[ids])
        weight = torch.clamp(1 / sigma ** 2, max=gamma)
        loss = (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        warm = min(1.0, (step + 1) / settings["warmup_steps"])
        for g in opt.param_groups:
            g["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p, 1 - decay)
        running += loss.item()
        if step % 100 == 99 or step == steps - 1:
            log(f"{label} {step + 1}/{steps} loss {running / ((step % 100) + 1):.4f} "
                f"({time.time() - started:.0f} s)")
            running = 0.0
    model.eval()
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    fp16_round(model.diffusion_model)


# ------------------------------------------------------------------------------------------------- save
def save(path: Path, model, clip, vae, style: str, settings: dict, seconds: dict) -> None:
    import comfy.utils
    sd = model.state_dict_for_saving(clip.get_sd(), vae.get_sd(), None)
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    metadata = {
        "modelspec.title": f"Merge Suite demo ({style})",
        "modelspec.architecture": "merge-suite-demo/sd1-tiny",
        "merge_suite_demo.style": style,
        "merge_suite_demo.training": json.dumps(settings, sort_keys=True),
        "merge_suite_demo.seconds": json.dumps(seconds, sort_keys=True),
        "merge_suite_demo.captions": "a {colour} {shape} {place}; see demo/train/scenes.py",
    }
    comfy.utils.save_torch_file(sd, str(path), metadata=metadata)
    log(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def settings_key(settings: dict) -> str:
    import hashlib
    vae_keys = sorted(k for k in settings if k.startswith("vae") or k in ("seed", "image_size"))
    return hashlib.sha256(json.dumps({k: settings[k] for k in vae_keys}).encode()).hexdigest()[:12]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder of the three checkpoints")
    parser.add_argument("--force", action="store_true", help="overwrite existing checkpoints")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count (quick trials)")
    parser.add_argument("--cache", type=Path, help="keep the trained VAE here and reuse it (same settings)")
    ns = parser.parse_args(argv)
    targets = {style: ns.out / FILE_NAME.format(style) for style in STYLES}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not ns.force:
        print(f"refusing to overwrite {', '.join(existing)} (pass --force)", file=sys.stderr)
        return 2
    settings = dict(SETTINGS)
    for key in ("vae_steps", "base_steps", "finetune_steps"):
        settings[key] = max(1, int(settings[key] * ns.scale))
    torch.set_num_threads(THREADS)
    demo = setup_comfy()
    ns.out.mkdir(parents=True, exist_ok=True)
    seconds, t0 = {}, time.time()

    vae_cache = ns.cache / f"vae-{settings_key(settings)}.safetensors" if ns.cache else None
    if vae_cache is not None and vae_cache.exists():
        import comfy.sd
        import comfy.utils
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae_cache)))
        log(f"vae from {vae_cache}")
    else:
        vae = train_vae(settings)
        if vae_cache is not None:
            import comfy.utils
            ns.cache.mkdir(parents=True, exist_ok=True)
            comfy.utils.save_torch_file(vae.get_sd(), str(vae_cache))
    seconds["vae"] = round(time.time() - t0)
    clip = build_clip(demo, settings["seed"] + 30)
    captions = scenes.all_captions()
    conds = encode_captions(clip, captions + [""])
    empty_id = len(captions)
    model = build_unet(demo, settings["seed"] + 40)
    data = {style: encode_latents(model, vae, style, settings) for style in STYLES}

    def ids_of(caps):
        return torch.tensor([captions.index(c) for c in caps])

    t1 = time.time()
    x0, caps = data["base"]
    train_unet(model, x0, ids_of(caps), conds, empty_id, settings["base_steps"], settings["unet_lr"],
               settings["base_ema"], settings["seed"] + 50, settings, "base")
    seconds["base"] = round(time.time() - t1)
    base_state = {k: v.clone() for k, v in model.diffusion_model.state_dict().items()}
    save(targets["base"], model, clip, vae, "base", settings, seconds)
    for n, style in enumerate(STYLES[1:]):
        t1 = time.time()
        model.diffusion_model.load_state_dict(base_state)
        x0, caps = data[style]
        train_unet(model, x0, ids_of(caps), conds, empty_id, settings["finetune_steps"], settings["finetune_lr"],
                   settings["finetune_ema"], settings["seed"] + 60 + n, settings, style)
        seconds[style] = round(time.time() - t1)
        save(targets[style], model, clip, vae, style, settings, seconds)
    log(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
