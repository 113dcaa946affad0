"""Turn merge_core's input errors into messages that name the node."""
from __future__ import annotations

import functools

from ..merge_core.errors import MergeInputError


class MergeNodeError(ValueError):
    """Raised by a node; the message names the node, the input and the fix."""


def node_errors(display_name: str):
    """Decorator for a node's execute: MergeInputError -> MergeNodeError naming the node."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except MergeInputError as exc:
                raise MergeNodeError(exc.describe(display_name)) from None
        return inner
    return wrap
