"""Puts the real ComfyUI on sys.path (before this repo, whose `nodes/` would shadow
ComfyUI's `nodes` module) and imports this pack as a package, as ComfyUI does."""
import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFY = Path(os.environ.get("COMFYUI_PATH") or REPO / ".host" / "ComfyUI").resolve()
PACK_NAME = "merge_suite"


def setup():
    if not (COMFY / "main.py").is_file():
        raise RuntimeError(f"ComfyUI not found at {COMFY}: run scripts/setup_host.sh or set COMFYUI_PATH")
    for path in (str(REPO / "demo"), str(COMFY)):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    from comfy.cli_args import args
    args.cpu = True
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK_NAME]
