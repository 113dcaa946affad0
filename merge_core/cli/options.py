"""argparse pieces for the CLI: option types that refuse NaN, infinities, overflow and bad ranks at parse
time, and a parser whose errors are one line naming the option (no usage block, no traceback)."""
from __future__ import annotations

import argparse
import math
import sys
from contextlib import contextmanager

from ..architectures import SD1, SDXL
from ..errors import RATIO_LIMIT, MergeInputError


class OneLineParser(argparse.ArgumentParser):
    """``error: merge: --alpha: nan is not a finite number`` on one line, exit status 2."""

    def error(self, message: str):
        text = message[len("argument "):] if message.startswith("argument ") else message
        self.exit(2, f"error: {self.prog.split()[-1]}: {text} (see --help)\n")


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def ratio(text: str) -> float:
    """A finite number within +-RATIO_LIMIT (alpha, beta, gamma and other factors)."""
    value = finite(text)
    if abs(value) > RATIO_LIMIT:
        raise argparse.ArgumentTypeError(f"{text} is beyond +-{RATIO_LIMIT:g}: the merged weights would overflow")
    return value


def quantile(text: str) -> float:
    value = finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 1]; give a quantile such as 0.99")
    return value


def _whole(text: str, low: int, meaning: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text} is below {low}; {meaning}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1, "give 1 or more")


def non_negative_int(text: str) -> int:
    return _whole(text, 0, "give 0 or more")


# Layouts the weight generators (dice, pinpoint) produce weights for: the block count is the layout's.
LAYOUTS = {"sd1": SD1, "sdxl": SDXL}


@contextmanager
def weight_generator_errors(command: str):
    """Bad input to dice/pinpoint: one line naming the option, and the yielded list becomes non-empty (exit 2)."""
    failed: list[bool] = []
    try:
        yield failed
    except MergeInputError as exc:
        exc.input_name = "--" + exc.input_name.replace("_", "-") if exc.input_name not in ("targets", "values") \
            else exc.input_name
        print(f"error: {exc.describe(command)}", file=sys.stderr)
        failed.append(True)


def selection_text(args) -> str:
    """--include / --exclude as merge_core's include_exclude text ("" for neither)."""
    if args.include.strip():
        return f"include: {args.include}"
    return f"exclude: {args.exclude}" if args.exclude.strip() else ""


def print_report(plan, args) -> None:
    """--report blocks|keys: the applied-ratio report on stdout."""
    if args.report:
        from ..report import applied_report
        print(applied_report(plan, per_key=args.report == "keys"))
