"""The command line (``merge-suite`` / ``python -m merge_core``): one argparse application, one module per
subcommand."""
from .app import main

__all__ = ["main"]
