"""One error type for every bad input, so callers can name the input and the fix.

merge_core never prints a traceback at users: it raises MergeInputError, and the
ComfyUI layer (or the CLI) prefixes it with the node or option name.
"""
from __future__ import annotations


class MergeInputError(ValueError):
    """A user-facing input problem.

    input_name: the input or option that holds the bad value (e.g. "blocks_alpha").
    problem: what is wrong, quoting the offending fragment where there is one.
    fix: what the user should do instead.
    """

    def __init__(self, input_name: str, problem: str, fix: str = ""):
        self.input_name = input_name
        self.problem = problem
        self.fix = fix
        super().__init__(self.describe())

    def describe(self, where: str = "") -> str:
        head = f"{where}: " if where else ""
        text = f"{head}input '{self.input_name}': {self.problem}"
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


# Largest |ratio| (alpha, beta, block weight, elemental, Adjust or LoRA ratio) a setting may have: weights
# times a larger factor leave the float16 range, and 1e308 is already infinite in float32.
RATIO_LIMIT = 1000.0


def require_finite(input_name: str, value: float, fix: str = "give a finite number.", what: str = "") -> float:
    """Return value as a float, or raise: NaN or infinity in a setting would give an all-NaN model.
    ``what`` places the value inside a list, e.g. "value #3 "."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise MergeInputError(input_name, f"{what}is {value!r}, not a number.", fix) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise MergeInputError(input_name, f"{what}is {number!r}, not finite: a non-finite setting makes every "
                                          "merged weight NaN.", fix)
    return number


def require_ratio(input_name: str, value: float, what: str = "", limit: float = RATIO_LIMIT) -> float:
    """A finite ratio within +-limit, as a float (larger ones overflow the merged weights)."""
    number = require_finite(input_name, value, "give a finite number such as 0.5.", what)
    if abs(number) > limit:
        raise MergeInputError(input_name, f"{what}is {number:g}: beyond +-{limit:g} the merged weights overflow "
                                          "(float16/float32 turn them into infinities).",
                              f"give a value between {-limit:g} and {limit:g}.")
    return number


def require_seed(value, input_name: str = "seed") -> int:
    """A seed as an int (a whole float such as 3.0 is taken; NaN, inf or a non-number are refused)."""
    if isinstance(value, float):
        require_finite(input_name, value, "give a whole number such as 0.")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MergeInputError(input_name, f"is {value!r}, not a whole number.",
                              "give a whole number such as 0.") from None
