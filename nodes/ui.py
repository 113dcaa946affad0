"""Text shown on a node after it runs (web/js/text_outputs.js renders ``ui.text``)."""
from __future__ import annotations

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
