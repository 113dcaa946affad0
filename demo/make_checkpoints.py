"""Write the tiny demo checkpoints (SD1 and SDXL layouts, three seeds each) into a folder.

    python demo/make_checkpoints.py DIR

Files: tiny_sd1_{a,b,c}.safetensors and tiny_sdxl_{a,b,c}.safetensors (about
45 MB each), and tiny_sd1_merged.safetensors: A and B merged by the CLI, with the
SuperMerger recipe (and input hashes) that the Load Recipe example re-creates.
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


def main(folder: str) -> list[Path]:
    out = Path(folder)
    missing = [n for n in NAMES if not (out / n).exists()]
    if missing:
        sys.path.insert(0, str(comfy_path()))
        from comfy.cli_args import args
        args.cpu = True
        import tiny_models
        for name in missing:
            layout, seed = NAMES[name]
            tmp = out / f".{name}.part"
            tiny_models.save_checkpoint(tmp, layout, seed)
            tmp.rename(out / name)
    merged = out / MERGED
    if not merged.exists():
        sys.path.insert(0, str(HERE.parent))
        from merge_core.api import merge_files
        merge_files(str(out / "tiny_sd1_a.safetensors"), str(out / "tiny_sd1_b.safetensors"), None, str(merged),
                    mode="Weight sum", alpha=0.4, blocks_alpha="GRAD_V", hash_inputs=True)
    return [out / n for n in NAMES] + [merged]


if __name__ == "__main__":
    for path in main(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(path)
