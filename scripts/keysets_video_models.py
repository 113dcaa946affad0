"""Full-size key inventories of the families in merge_core/architectures/video_models.py, built on the meta
device from ComfyUI 0.33's classes (run through make_keysets.py)."""
from __future__ import annotations

INVENTORIES: tuple[str, ...] = ()


def build(name: str):
    """The model (on the meta device) of one inventory."""
    raise SystemExit(f"unknown inventory '{name}'")
