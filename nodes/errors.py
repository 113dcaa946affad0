"""Turn merge_core's input errors into messages that name the node."""
from __future__ import annotations

from contextlib import contextmanager

from ..merge_core.errors import MergeInputError


class MergeNodeError(ValueError):
    """Raised by a node; the message names the node, the input and the fix."""


@contextmanager
def named_errors(display_name: str):
    """Re-raise MergeInputError as MergeNodeError prefixed with the node's display name."""
    try:
        yield
    except MergeInputError as exc:
        raise MergeNodeError(exc.describe(display_name)) from None
