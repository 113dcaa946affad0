"""The CLI's LoRA subcommands: ``lora-merge`` and ``lora-extract`` (on files)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .cli_types import finite, non_negative_int, positive_int, quantile, ratio
from .errors import MergeInputError
from .lora_api import extract_lora_files, extract_lora_from_loras, merge_lora_files
from .lora_files import METADATA_MODES, SAVE_DTYPES
from .lora_math import SVD_METHODS

OPTION_NAMES = {"lora_list": "the LoRA list", "lora_1": "LoRA 1", "lora_2": "LoRA 2", "rank": "--rank",
                "model_a": "TUNED", "model_b": "ORIGINAL", "filename": "-o", "alpha": "--alpha", "beta": "--beta",
                "gamma": "--gamma", "block_weights": "the LoRA list", "lbw_presets": "--presets",
                "conv_rank": "--conv-rank", "clamp_quantile": "--clamp", "te_min_diff": "--te-min-diff"}
LIST_HELP = "'file:ratio[:blocks]' items, comma-separated; blocks = a preset name or 12/17/20/26 values"


def add_parsers(sub) -> None:
    m = sub.add_parser("lora-merge", help="merge LoRA files into one (exact SVD or kohya's naive sum)")
    m.add_argument("loras", help=LIST_HELP + ", e.g. 'a.safetensors:0.8, b.safetensors:0.5:INS'")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--method", choices=["exact", "naive"], default="exact",
                   help="exact: SVD of sum r_i*dW_i (default); naive: kohya's factor-wise sum (equal ranks)")
    m.add_argument("--rank", type=positive_int, default=0,
                   help="exact: output rank, 1 or more (default: the largest input rank)")
    m.add_argument("--kohya-strength", action="store_true",
                   help="naive: kohya's ratio semantics (effect = ratio squared); default: linear")
    m.add_argument("--metadata", choices=METADATA_MODES, default="create new")
    _common(m)

    e = sub.add_parser("lora-extract", help="extract a LoRA from two checkpoints (or from two LoRAs with --loras)")
    e.add_argument("a", metavar="TUNED", help="tuned checkpoint (with --loras: LoRA 1 as 'file:ratio[:blocks]')")
    e.add_argument("b", metavar="ORIGINAL", help="original checkpoint (with --loras: LoRA 2)")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--loras", action="store_true", help="A and B are LoRAs: SuperMerger's extract (alpha, beta, gamma)")
    e.add_argument("--alpha", type=ratio, default=1.0, help="models: factor of A (delta = alpha*A - beta*B); "
                                                            "LoRAs: 0 = LoRA 1, 1 = LoRA 2")
    e.add_argument("--beta", type=ratio, default=1.0, help="models: factor of B; LoRAs: 1 keeps dissimilar features")
    e.add_argument("--gamma", type=ratio, default=1.0, help="LoRAs: similarity sharpness (>= 0)")
    e.add_argument("--rank", type=positive_int, default=64, help="rank of linear and 1x1 layers (default 64)")
    e.add_argument("--conv-rank", type=non_negative_int, default=0, help="rank of 3x3 convolutions (default 0: skipped)")
    e.add_argument("--te-min-diff", type=finite, default=0.1,
                   help="keep the text encoder only if some weight differs by more than this (default 0.1, kohya)")
    _common(e)


def _common(p) -> None:
    p.add_argument("--svd", choices=SVD_METHODS, default="full", help="full or randomized (torch.svd_lowrank)")
    p.add_argument("--clamp", type=quantile, default=None, metavar="Q",
                   help="clip factors to the Q quantile (kohya/LoraSave use 0.99; default off)")
    p.add_argument("--presets", default=None, help="file of extra block-weight presets, NAME:values per line")
    p.add_argument("--dtype", choices=list(SAVE_DTYPES), default="fp16", help="save precision (default fp16)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args) -> int:
    """Run a lora-* command; bad input raises MergeInputError (and file errors), which cli.main reports."""
    start = time.perf_counter()
    presets_text = Path(args.presets).read_text(encoding="utf-8") if args.presets else ""
    try:
        if args.command == "lora-merge":
            path, result = merge_lora_files(args.loras, args.output, method=args.method, rank=args.rank, svd=args.svd,
                                            clamp_quantile=args.clamp, kohya_strength=args.kohya_strength,
                                            metadata=args.metadata, lbw_presets=presets_text, save_dtype=args.dtype,
                                            overwrite=args.overwrite)
        elif args.loras:
            path, result = extract_lora_from_loras(args.a, args.b, args.output, alpha=args.alpha, beta=args.beta,
                                                   gamma=args.gamma, lbw_presets=presets_text, save_dtype=args.dtype,
                                                   overwrite=args.overwrite)
        else:
            path, result = extract_lora_files(args.a, args.b, args.output, alpha=args.alpha, beta=args.beta,
                                              rank=args.rank, conv_rank=args.conv_rank, svd=args.svd,
                                              clamp_quantile=args.clamp, te_min_diff=args.te_min_diff,
                                              save_dtype=args.dtype, overwrite=args.overwrite)
    except MergeInputError as exc:  # cli.main prints it, with the option's name
        exc.input_name = OPTION_NAMES.get(exc.input_name, exc.input_name)
        raise
    for line in result.report:
        print(line, file=sys.stderr)
    print(f"wrote {path} ({len(result.tensors) // 3} modules, {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0
