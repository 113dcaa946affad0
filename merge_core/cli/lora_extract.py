"""``lora-extract TUNED ORIGINAL -o OUT``: a LoRA from two checkpoints (SVD of the difference), or from two LoRAs."""
from __future__ import annotations

import time

from ..lora.api import extract_lora_files, extract_lora_from_loras
from .history import add_history_option, lora_extract_entry, record
from .lora_options import add_common, cli_names, presets_text, report
from .options import finite, non_negative_int, positive_int, ratio


def add_parser(sub) -> None:
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
    e.add_argument("--conv-rank", type=non_negative_int, default=0,
                   help="rank of 3x3 convolutions (default 0: skipped)")
    e.add_argument("--te-min-diff", type=finite, default=0.1,
                   help="keep the text encoder only if some weight differs by more than this (default 0.1, kohya)")
    add_common(e)
    add_history_option(e)
    e.set_defaults(run=run)


def run(args) -> int:
    start = time.perf_counter()
    presets = presets_text(args)
    with cli_names():
        if args.loras:
            path, result = extract_lora_from_loras(args.a, args.b, args.output, alpha=args.alpha, beta=args.beta,
                                                   gamma=args.gamma, lbw_presets=presets,
                                                   save_dtype=args.dtype, overwrite=args.overwrite)
        else:
            path, result = extract_lora_files(args.a, args.b, args.output, alpha=args.alpha, beta=args.beta,
                                              rank=args.rank, conv_rank=args.conv_rank, svd=args.svd,
                                              clamp_quantile=args.clamp, te_min_diff=args.te_min_diff,
                                              save_dtype=args.dtype, overwrite=args.overwrite)
    record(args, lambda: lora_extract_entry(args, presets, path))
    return report(path, result, start)
