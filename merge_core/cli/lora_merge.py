"""``lora-merge LIST -o OUT``: LoRA files merged into one (exact SVD of the weighted sum, or kohya's naive sum)."""
from __future__ import annotations

import time

from ..lora.api import merge_lora_files
from ..lora.metadata import METADATA_MODES
from .history import add_history_option, lora_merge_entry, record
from .lora_options import LIST_HELP, add_common, cli_names, presets_text, report
from .options import positive_int


def add_parser(sub) -> None:
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
    add_common(m)
    add_history_option(m)
    m.set_defaults(run=run)


def run(args) -> int:
    start = time.perf_counter()
    presets = presets_text(args)
    with cli_names():
        path, result = merge_lora_files(args.loras, args.output, method=args.method, rank=args.rank, svd=args.svd,
                                        clamp_quantile=args.clamp, kohya_strength=args.kohya_strength,
                                        metadata=args.metadata, lbw_presets=presets, save_dtype=args.dtype,
                                        overwrite=args.overwrite)
    record(args, lambda: lora_merge_entry(args, presets, path))
    return report(path, result, start)
