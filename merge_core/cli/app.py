"""The one argparse application: global options, the subcommand table, and how errors are printed.

Each subcommand lives in its own module with ``add_parser(sub)`` (which sets ``run``) and ``run(args)``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..errors import MergeInputError
from ..heap import keep_freed_buffers
from ..input_names import CLI, renamed
from ..io import mapped_file
from ..io.output_file import Stopped, install_signal_cleanup
from ..version import __version__
from . import analyze, blocks, combine, dice, elements, history, lora_extract, lora_merge, merge, pinpoint, rebasin
from .options import OneLineParser

# Where the heap policy and mapped inputs apply: measured on two- and three-model file merges (bench/RESULTS.md).
# The n-model methods' float32 temporaries are larger, and up to 128 MiB of them kept free would raise their
# measured peaks.
HEAP_COMMANDS = ("merge",)

# order of --help
COMMANDS = (merge, combine, analyze, lora_merge, lora_extract, dice, pinpoint, elements, blocks, history, rebasin)


def program_name() -> str:
    """How the user called us: the installed console script, or the module from a checkout."""
    return "merge-suite" if Path(sys.argv[0]).stem.startswith("merge-suite") else "python -m merge_core"


class _OneLinePerCommand(argparse.HelpFormatter):
    """Wide enough that the command list keeps one line per command (argparse measures the commands'
    names without their extra indent, which would push the longest one's help onto a second line)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=24, width=max(100, shutil.get_terminal_size().columns))

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += 4


def build_parser() -> argparse.ArgumentParser:
    prog = program_name()
    parser = OneLineParser(prog=prog, formatter_class=_OneLinePerCommand,
                           description="SuperMerger-compatible checkpoint merging, key by key.",
                           epilog=f"'{prog} COMMAND --help' shows a command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Run one command. Called as the program (no ``argv``: the console script, ``python -m merge_core``), the
    process is ours: a file merge's heap keeps freed tensor buffers for the next key (heap.py), and its inputs
    are read through mappings (io/mapped_file.py); called with ``argv`` from Python (a test, a script) it is a
    guest in the caller's process and leaves both as they are."""
    args = build_parser().parse_args(argv)
    if argv is None and args.command in HEAP_COMMANDS:
        keep_freed_buffers()
        mapped_file.enable()
    install_signal_cleanup(then_raise=True)  # SIGTERM/SIGHUP: like Ctrl+C, the output's temporary file goes
    try:
        return args.run(args)
    except KeyboardInterrupt as exc:  # Ctrl+C's KeyboardInterrupt has no text (an exception is always truthy)
        print(f"error: {args.command}: {str(exc) or 'interrupted'}; no output was written.", file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Stopped) else 130
    except MergeInputError as exc:
        print(f"error: {renamed(exc, CLI).describe(args.command)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {args.command}: {exc}", file=sys.stderr)
        return 2
