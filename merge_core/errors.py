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


def require_finite(input_name: str, value: float, fix: str = "give a finite number.") -> float:
    """Return value as a float, or raise: NaN or infinity in a setting would give an all-NaN model."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MergeInputError(input_name, f"is {value!r}, not a number.", fix) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise MergeInputError(input_name, f"is {number!r}: a non-finite value would make every merged weight NaN.",
                              fix)
    return number
