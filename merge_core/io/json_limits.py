"""JSON parsing that a damaged or hostile file cannot turn into a raw traceback.

json.loads recurses once per nesting level: 100,000 nested brackets in a safetensors header, a cache file or
a recipe raise RecursionError (not a ValueError), which no caller expects and which escapes as a traceback.
``loads_bounded`` turns every failure (bad syntax, bad UTF-8, nesting too deep) into one ValueError whose
message names what was being read, so callers that already catch ValueError (and wrap it in their own
MergeInputError naming the file and the fix) need no other change.

Usage::

    from merge_core.io.json_limits import loads_bounded
    try:
        data = loads_bounded(raw, "the header of 'x.safetensors'")
    except ValueError as exc:
        raise MergeInputError("model_a", f"{exc}.", "download or save it again.") from None
"""
from __future__ import annotations

import json
from typing import Any, Union

# Deepest nesting any file of this pack legitimately has is a handful of levels; the interpreter's own
# recursion limit (about 1000) would be reached first by a hostile file, so this is the one that answers.
MAX_DEPTH = 200


class JSONLimitError(ValueError):
    """The text is not JSON this pack will read: invalid, or nested deeper than MAX_DEPTH."""


def _too_deep(data: Any, limit: int) -> bool:
    """Whether parsed data nests deeper than limit (iterative: a deep value cannot recurse here)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def loads_bounded(text: Union[str, bytes, bytearray], what: str, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads(text), or JSONLimitError (a ValueError) saying "<what> is not valid JSON (...)" or
    "<what> is nested more than N levels deep". Never RecursionError, whatever the text holds."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise JSONLimitError(f"{what} is nested more than {max_depth} levels deep (a damaged or hostile "
                             "file)") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise JSONLimitError(f"{what} is not valid JSON ({exc})") from None
    if _too_deep(data, max_depth):
        raise JSONLimitError(f"{what} is nested more than {max_depth} levels deep (a damaged or hostile file)")
    return data
