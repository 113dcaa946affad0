"""The ComfyUI side of the merge history: where the log lives (ComfyUI's user directory) and how nodes record.

merge_core.history keeps the file; this module turns a node's run into an entry (its recipe, its input
files with what is cheaply known about them, the prompt id) and skips a merge this server already recorded,
so a graph re-run after its cache was dropped adds nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..merge_core.history import FILE_NAME, History, enabled

_LOGS: dict[str, History] = {}


def history_path() -> Path:
    import folder_paths
    return Path(folder_paths.get_user_directory()) / "merge_suite" / FILE_NAME


def comfy_history() -> Optional[History]:
    """The server's log (one History per path, so its search index is kept), or None when it is turned off."""
    if not enabled():
        return None
    path = str(history_path())
    if path not in _LOGS:
        _LOGS[path] = History(path)
    return _LOGS[path]
