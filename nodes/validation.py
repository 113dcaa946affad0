"""validate_inputs helpers: ComfyUI refuses a prompt with NaN or infinite settings before it runs.

Naming an input in validate_inputs turns off ComfyUI's own min/max check for it (and NaN passes
that check anyway, since every comparison with NaN is false), so the range is checked here too.
"""
from __future__ import annotations

import math
from typing import Any

from ..merge_core.errors import MergeInputError


def number_problems(cls: Any, values: dict) -> bool | str:
    """True when every float/int value in `values` is finite and inside its input's min/max, else a message
    naming the node and the input. Values not given (linked inputs are None at validation time) pass."""
    schema = cls.define_schema()  # not GET_SCHEMA: it caches on the class, and ComfyUI passes a locked copy
    limits = {inp.id: (getattr(inp, "min", None), getattr(inp, "max", None)) for inp in schema.inputs}
    name = schema.display_name or schema.node_id
    for key, value in values.items():
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            return MergeInputError(key, f"is {value!r}: a non-finite value would make every merged weight NaN.",
                                   "give a finite number.").describe(name)
        low, high = limits.get(key, (None, None))
        if low is not None and value < low or high is not None and value > high:
            return MergeInputError(key, f"is {value}, outside {low}..{high}.",
                                   f"give a value from {low} to {high}.").describe(name)
    return True
