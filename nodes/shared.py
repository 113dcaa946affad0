"""What every node module uses: the menu categories, a progress bar that honours Cancel, a running node's label."""
from __future__ import annotations

from typing import Callable, Optional

CATEGORY = "merge_suite"
OPTIONS_CATEGORY = CATEGORY + "/options"
SWEEP_CATEGORY = CATEGORY + "/sweep"
LORA_CATEGORY = CATEGORY + "/lora"


def progress_bar(total: int) -> Callable[[int, int], None]:
    """ComfyUI progress bar whose updates also honour the Cancel button."""
    import comfy.model_management
    import comfy.utils
    bar = comfy.utils.ProgressBar(total)

    def update(done: int, of: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, of)
    return update


def node_label(cls, display: str) -> tuple[str, Optional[str]]:
    """(label, node id) of a running node, for messages sent after it ran (at model load)."""
    node_id = getattr(getattr(cls, "hidden", None), "unique_id", None)
    return (f"{display} (node {node_id})" if node_id is not None else display), node_id
