"""What ``lora-merge`` and ``lora-extract`` share: the SVD and save options, input names, the closing lines."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import MergeInputError
from ..input_names import CLI_LORA, renamed
from ..lora.files import SAVE_DTYPES
from ..lora.linalg import SVD_METHODS
from .options import quantile

LIST_HELP = "'file:ratio[:blocks]' items, comma-separated; blocks = a preset name or 12/17/20/26 values"



def add_common(p) -> None:
    p.add_argument("--svd", choices=SVD_METHODS, default="full", help="full or randomized (torch.svd_lowrank)")
    p.add_argument("--clamp", type=quantile, default=None, metavar="Q",
                   help="clip factors to the Q quantile (kohya/LoraSave use 0.99; default off)")
    p.add_argument("--presets", default=None, help="file of extra block-weight presets, NAME:values per line")
    p.add_argument("--dtype", choices=list(SAVE_DTYPES), default="fp16", help="save precision (default fp16)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def presets_text(args) -> str:
    return Path(args.presets).read_text(encoding="utf-8") if args.presets else ""


@contextmanager
def cli_names():
    """Library input names (``lora_list``, ``rank``...) become the options the user typed; app.main prints."""
    try:
        yield
    except MergeInputError as exc:
        renamed(exc, CLI_LORA)
        raise


def report(path, result, start: float) -> int:
    for line in result.report:
        print(line, file=sys.stderr)
    print(f"wrote {path} ({len(result.tensors) // 3} modules, {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0
