"""The main job: merge the shipped demo models in a real headless ComfyUI and show the merges as one grid.

    python demo/run_demo.py [--workflow NAME] [--base DIR]

Starts ComfyUI on a private base directory and runs the demo workflow
(example_workflows/demo_style_blend.json) on the models shipped in demo/models:
a base model and two style fine-tunes, merged seven ways and sampled with the
same prompts and seed into one labelled grid. MERGE_SUITE_CKPT_A and
MERGE_SUITE_CKPT_B naming your own SD1 checkpoints run the weight-sum part on
them instead. --workflow runs another example workflow on tiny random
checkpoints. Prints where the grid and the images were written.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = HERE / "models"
DEMO = "demo_style_blend"
REBUILD = "python demo/train/train.py --out demo/models --force"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "scripts"))
from server import ComfyServer  # noqa: E402
from workflow_api import to_prompt  # noqa: E402

import make_example_workflows as examples  # noqa: E402


class DemoModelError(Exception):
    """A shipped model that is missing or damaged: the message names the file and how to rebuild it."""


def user_checkpoints(ckpt_dir: Path) -> dict[str, str]:
    """Link the user's own checkpoints in, returning the names the workflow should use for A and B."""
    names = {}
    for tag in ("A", "B"):
        path = os.environ.get(f"MERGE_SUITE_CKPT_{tag}")
        if path:
            link = ckpt_dir / f"user_{tag.lower()}_{Path(path).name}"
            if not link.exists():
                link.symlink_to(Path(path).resolve())
            names[tag] = link.name
    return names


def card_hashes(card: Path) -> dict[str, str]:
    """sha256 per file name, from the model card's lines that name a .safetensors file and a 64-hex hash."""
    hashes = {}
    if card.is_file():
        for line in card.read_text(encoding="utf-8").splitlines():
            names = re.findall(r"[\w.-]+\.safetensors", line)
            digests = re.findall(r"\b[0-9a-f]{64}\b", line)
            if len(names) == 1 and len(digests) == 1:
                hashes[names[0]] = digests[0]
    return hashes


def safetensors_problem(path: Path) -> str:
    """Why the file is not a complete safetensors file, or '' when its header and size agree."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "is too short to be a safetensors file"
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 100_000_000):
            return "has a damaged safetensors header"
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "has a damaged safetensors header"
    try:
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError):
        return "has a damaged safetensors header"
    return "" if 8 + length + end == size else f"is truncated or damaged ({size} bytes, the header needs " \
        f"{8 + length + end})"


def check_shipped(names) -> None:
    """Every shipped model exists, is a whole safetensors file and has the model card's sha256 (if listed)."""
    hashes = card_hashes(MODELS / "README.md")
    for name in names:
        path = MODELS / name
        problem = "is missing" if not path.is_file() else safetensors_problem(path)
        if not problem and name in hashes:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            problem = "" if digest == hashes[name] else "does not have the sha256 the model card lists"
        if problem:
            raise DemoModelError(f"{path.relative_to(REPO)} {problem}; rebuild the demo models with: {REBUILD}")


def demo_workflow(ckpts: Path) -> tuple[dict, list[str]]:
    """The demo graph (UI format) and the shipped file names it loads; the user's A and B when given."""
    own = user_checkpoints(ckpts)
    if len(own) == 2:
        print(f"[demo] weight sums of your checkpoints {own['A']} and {own['B']}", flush=True)
        sampling = dict(examples.DEMO_SAMPLING, size=512)
        graph = examples.demo_style_blend(own, sampling, styles=(own["A"], own["B"]),
                                          prompts=examples.DEMO_PROMPTS[:1])
        return graph.to_json(), []
    if own:
        print("[demo] set both MERGE_SUITE_CKPT_A and MERGE_SUITE_CKPT_B to use your own checkpoints",
              flush=True)
    shipped = list(examples.DEMO_MODELS.values())
    check_shipped(shipped)
    return json.loads((REPO / "example_workflows" / f"{DEMO}.json").read_text()), shipped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", default=DEMO, help="name of a file in example_workflows/ (without .json); "
                        "others than the demo run on tiny random checkpoints")
    parser.add_argument("--base", default=str(REPO / "out" / "demo"), help="ComfyUI base directory to use")
    args = parser.parse_args()
    base = Path(args.base).resolve()
    server = ComfyServer(base)
    ckpts = base / "models" / "checkpoints"
    shipped = []
    if args.workflow == DEMO:
        try:
            workflow, shipped = demo_workflow(ckpts)
        except DemoModelError as exc:
            print(f"[demo] {exc}", file=sys.stderr)
            return 1
    else:
        print(f"[demo] building tiny demo checkpoints in {ckpts}", flush=True)
        subprocess.run([sys.executable, str(HERE / "make_checkpoints.py"), str(ckpts)], check=True,
                       stdout=subprocess.DEVNULL)
        workflow = json.loads((REPO / "example_workflows" / f"{args.workflow}.json").read_text())
    print(f"[demo] starting ComfyUI (log: {server.log_path})", flush=True)
    with server:
        info = server.get("/object_info")
        spec = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
        listed = spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])  # newer hosts: COMBO
        unseen = [name for name in shipped if name not in listed]
        if unseen:
            print(f"[demo] ComfyUI does not list {', '.join(unseen)}: the pack did not add demo/models to its "
                  f"checkpoint folders (see {server.log_path})", file=sys.stderr)
            return 1
        start = time.perf_counter()
        entry = server.run_prompt(to_prompt(workflow, info), timeout=3600.0)
        images = server.output_images(entry)
        print(f"[demo] '{args.workflow}' ran in {time.perf_counter() - start:.1f} s; "
              f"{len(images)} image(s) written to {base / 'output'}:")
        grids = [p for p in images if "grid" in p.name]
        if grids:
            print(f"[demo] the grid: {grids[0]}")
        for path in images:
            if path not in grids:
                print(f"  {path}")
    return 0 if images else 1


if __name__ == "__main__":
    raise SystemExit(main())
