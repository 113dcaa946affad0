"""Text shown on a node after it runs (web/js/text_outputs.js renders ``ui.text``)."""
from __future__ import annotations

from .layout_names import sized_name

MAX_LINES = 400  # long tables (every key of a model) stay complete on the STRING output


def text_ui(*texts: str) -> dict:
    """``ui`` dict carrying the texts, each cut to MAX_LINES lines with a note saying so."""
    shown = []
    for text in texts:
        lines = text.splitlines()
        if len(lines) > MAX_LINES:
            text = "\n".join(lines[:MAX_LINES] + [f"... {len(lines) - MAX_LINES} more lines on the STRING output"])
        shown.append(text)
    return {"text": shown}


def merge_ui(report: str, recipe: str, arch) -> dict:
    """A merge node's ``ui``: its texts, and for a transformer family the layout it parsed the block
    weights against (``sd3:24``), so the block-weight editor shows that model's blocks after the run."""
    name = sized_name(arch)
    return text_ui(report, recipe) | ({"merge_suite_layout": [name]} if name else {})
