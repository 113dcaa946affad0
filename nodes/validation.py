"""validate_inputs helpers: ComfyUI refuses a prompt with NaN or infinite settings before it runs.

Naming an input in validate_inputs turns off ComfyUI's own min/max check for it (and NaN passes
that check anyway, since every comparison with NaN is false), so the range is checked here too.
"""
from __future__ import annotations

from typing import Any

from ..merge_core.errors import MergeInputError, require_finite


def number_problems(cls: Any, values: dict) -> bool | str:
    """True when every float/int value in `values` is finite and inside its input's min/max, else a message
    naming the node and the input. Values not given (linked inputs are None at validation time) pass."""
    schema = cls.define_schema()  # GET_SCHEMA would store it: refused on the locked clone ComfyUI validates with
    limits = {inp.id: (getattr(inp, "min", None), getattr(inp, "max", None)) for inp in schema.inputs}
    name = schema.display_name or schema.node_id
    for key, value in values.items():
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        try:
            require_finite(key, value)
        except MergeInputError as exc:
            return exc.describe(name)
        low, high = limits.get(key, (None, None))
        if low is not None and value < low or high is not None and value > high:
            return MergeInputError(key, f"is {value}, outside {low}..{high}.",
                                   f"give a value from {low} to {high}.").describe(name)
    return True


def settings_problems(cls: Any, values: dict, *checks) -> bool | str:
    """number_problems, the option lists of combos named in `values` (naming them turns ComfyUI's check
    off too), then each check: a callable that parses the text inputs with merge_core's own parsers and
    raises MergeInputError. Checks run only when every value they read is given (not a link)."""
    found = number_problems(cls, values)
    if found is not True:
        return found
    schema = cls.define_schema()  # GET_SCHEMA would store it: refused on the locked clone ComfyUI validates with
    name = schema.display_name or schema.node_id
    for inp in schema.inputs:
        options = getattr(inp, "options", None)
        value = values.get(inp.id)
        if options and isinstance(value, str) and value not in options:
            return MergeInputError(inp.id, f"'{value}' is not one of its options.",
                                   "choose one of: " + ", ".join(map(str, options[:20])) + ".").describe(name)
    if any(value is None for value in values.values()):
        checks = ()  # a linked input: its value is known only when the node runs, where the same parsers run
    try:
        for check in checks:
            check()
    except MergeInputError as exc:
        return exc.describe(name)
    return True
