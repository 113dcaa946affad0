"""Write the tiny demo checkpoints (SD1 and SDXL layouts, three seeds each) into a folder.

    python demo/make_checkpoints.py DIR [UNET_DIR]

Files: tiny_sd1_{a,b,c}.safetensors and tiny_sdxl_{a,b,c}.safetensors (about
45 MB each), and tiny_sd1_merged.safetensors: A and B merged by the CLI, with the
SuperMerger recipe (and input hashes) that the Load Recipe example re-creates.
Model families (demo/tiny_families.py): tiny_flux1-dev_{a,b}.safetensors, Forge-style Flux.1 checkpoints, in
DIR; tiny_{sd3,z-image,qwen-image,wan21}_{a,b}.safetensors and tiny_flux1-dev_{a,b,c}.safetensors (for the
file-merge example), diffusion-model files for Load Diffusion Model, in UNET_DIR (default: the diffusion_models
folder beside DIR). A few MB each.
Existing files are kept. Needs ComfyUI (scripts/setup_host.sh).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from server import comfy_path  # noqa: E402

NAMES = {f"tiny_{layout}_{tag}.safetensors": (layout, seed)
         for layout in ("sd1", "sdxl") for tag, seed in (("a", 1), ("b", 2), ("c", 3))}
MERGED = "tiny_sd1_merged.safetensors"
FLUX_CHECKPOINTS = {f"tiny_flux1-dev_{tag}.safetensors": seed for tag, seed in (("a", 1), ("b", 2))}
UNETS = {f"tiny_{family}_{tag}.safetensors": (family, seed)
         for family in ("sd3", "z-image", "qwen-image", "wan21") for tag, seed in (("a", 1), ("b", 2))} | \
    {f"tiny_flux1-dev_{tag}.safetensors": ("flux1-dev", seed) for tag, seed in (("a", 1), ("b", 2), ("c", 3))}


def _comfy() -> None:
    sys.path.insert(0, str(comfy_path()))
    from comfy.cli_args import args
    args.cpu = True


def _write(path: Path, save, *args) -> None:
    """Write through a hidden temporary name, renamed when complete: ``save(tmp, *args)`` writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.part"
    save(tmp, *args)
    tmp.rename(path)


def main(folder: str, unet_folder: str | None = None) -> list[Path]:
    out = Path(folder)
    unets = Path(unet_folder) if unet_folder else out.parent / "diffusion_models"
    missing = [n for n in NAMES if not (out / n).exists()]
    if missing:
        _comfy()
        import tiny_models
        for name in missing:
            layout, seed = NAMES[name]
            _write(out / name, tiny_models.save_checkpoint, layout, seed)
    family_missing = [out / n for n in FLUX_CHECKPOINTS if not (out / n).exists()] + \
        [unets / n for n in UNETS if not (unets / n).exists()]
    if family_missing:
        _comfy()
        import tiny_families
        for path in family_missing:
            if path.parent == out and path.name in FLUX_CHECKPOINTS:  # the same names in diffusion_models
                _write(path, tiny_families.save_flux_checkpoint, "flux1-dev", FLUX_CHECKPOINTS[path.name])
            else:
                _write(path, tiny_families.save_diffusion_model, *UNETS[path.name])
    merged = out / MERGED
    if not merged.exists():
        sys.path.insert(0, str(HERE.parent))
        from merge_core.api import merge_files
        merge_files(str(out / "tiny_sd1_a.safetensors"), str(out / "tiny_sd1_b.safetensors"), None, str(merged),
                    mode="Weight sum", alpha=0.4, blocks_alpha="GRAD_V", hash_inputs=True)
    return [out / n for n in NAMES] + [merged] + [out / n for n in FLUX_CHECKPOINTS] + [unets / n for n in UNETS]


if __name__ == "__main__":
    for path in main(sys.argv[1] if len(sys.argv) > 1 else ".", sys.argv[2] if len(sys.argv) > 2 else None):
        print(path)
