"""The main job: merge two checkpoints in a real headless ComfyUI and sample from the result.

    python demo/run_demo.py [--workflow NAME] [--base DIR]

Starts ComfyUI on a private base directory, builds tiny demo checkpoints there
unless MERGE_SUITE_CKPT_A / MERGE_SUITE_CKPT_B name real SD1 checkpoints of
yours, runs an example workflow (merge -> KSampler -> VAE decode -> save)
through the HTTP API and prints where the images were written.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from server import ComfyServer  # noqa: E402
from workflow_api import to_prompt  # noqa: E402


def user_checkpoints(ckpt_dir: Path) -> dict[str, str]:
    """Link the user's own checkpoints in, returning the names the workflow should use instead."""
    swap = {}
    for tag in ("A", "B"):
        path = os.environ.get(f"MERGE_SUITE_CKPT_{tag}")
        if path:
            link = ckpt_dir / f"user_{tag.lower()}_{Path(path).name}"
            if not link.exists():
                link.symlink_to(Path(path).resolve())
            swap[f"tiny_sd1_{tag.lower()}.safetensors"] = link.name
    return swap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", default="merge_checkpoints_block_weights",
                        help="name of a file in example_workflows/ (without .json)")
    parser.add_argument("--base", default=str(REPO / "out" / "demo"), help="ComfyUI base directory to use")
    args = parser.parse_args()
    base = Path(args.base).resolve()
    server = ComfyServer(base)
    ckpts = base / "models" / "checkpoints"
    swap = user_checkpoints(ckpts)
    if len(swap) < 2:
        print(f"[demo] building tiny demo checkpoints in {ckpts}", flush=True)
        subprocess.run([sys.executable, str(HERE / "make_checkpoints.py"), str(ckpts)], check=True,
                       stdout=subprocess.DEVNULL)
        swap = {}
    workflow = json.loads((REPO / "example_workflows" / f"{args.workflow}.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "CheckpointLoaderSimple" and node["widgets_values"][0] in swap:
            node["widgets_values"][0] = swap[node["widgets_values"][0]]
    print(f"[demo] starting ComfyUI (log: {server.log_path})", flush=True)
    with server:
        prompt = to_prompt(workflow, server.get("/object_info"))
        start = time.perf_counter()
        entry = server.run_prompt(prompt)
        images = server.output_images(entry)
        print(f"[demo] '{args.workflow}' ran in {time.perf_counter() - start:.1f} s; "
              f"{len(images)} image(s) written to {base / 'output'}:")
        for path in images:
            print(f"  {path}")
    return 0 if images else 1


if __name__ == "__main__":
    raise SystemExit(main())
