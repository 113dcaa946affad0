"""The CLI's LoRA subcommands: ``lora-merge`` and ``lora-extract`` (on files)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .architectures import detect
from .errors import MergeInputError
from .lora_blocks import parse_lora_list, parse_presets, block_values
from .lora_files import (METADATA_MODES, SAVE_DTYPES, common_architecture, extract_from_loras, extract_from_models,
                         extraction_metadata, merge_loras, merged_metadata, read_lora, save_lora)
from .lora_math import SVD_METHODS
from .output_file import check_target
from .safetensors_io import SafetensorsReader

OPTION_NAMES = {"lora_list": "the LoRA list", "lora_1": "LoRA 1", "lora_2": "LoRA 2", "rank": "--rank",
                "model_a": "TUNED", "model_b": "ORIGINAL", "filename": "-o", "alpha": "--alpha", "beta": "--beta",
                "gamma": "--gamma", "block_weights": "the LoRA list", "lbw_presets": "--presets"}
LIST_HELP = "'file:ratio[:blocks]' items, comma-separated; blocks = a preset name or 12/17/20/26 values"


def add_parsers(sub) -> None:
    m = sub.add_parser("lora-merge", help="merge LoRA files into one (exact SVD or kohya's naive sum)")
    m.add_argument("loras", help=LIST_HELP + ", e.g. 'a.safetensors:0.8, b.safetensors:0.5:INS'")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--method", choices=["exact", "naive"], default="exact",
                   help="exact: SVD of sum r_i*dW_i (default); naive: kohya's factor-wise sum (equal ranks)")
    m.add_argument("--rank", type=int, default=0, help="exact: output rank (default: the largest input rank)")
    m.add_argument("--kohya-strength", action="store_true",
                   help="naive: kohya's ratio semantics (effect = ratio squared); default: linear")
    m.add_argument("--metadata", choices=METADATA_MODES, default="create new")
    _common(m)

    e = sub.add_parser("lora-extract", help="extract a LoRA from two checkpoints (or from two LoRAs with --loras)")
    e.add_argument("a", metavar="TUNED", help="tuned checkpoint (with --loras: LoRA 1 as 'file:ratio[:blocks]')")
    e.add_argument("b", metavar="ORIGINAL", help="original checkpoint (with --loras: LoRA 2)")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--loras", action="store_true", help="A and B are LoRAs: SuperMerger's extract (alpha, beta, gamma)")
    e.add_argument("--alpha", type=float, default=1.0, help="models: factor of A (delta = alpha*A - beta*B); "
                                                            "LoRAs: 0 = LoRA 1, 1 = LoRA 2")
    e.add_argument("--beta", type=float, default=1.0, help="models: factor of B; LoRAs: 1 keeps dissimilar features")
    e.add_argument("--gamma", type=float, default=1.0, help="LoRAs: similarity sharpness (>= 0)")
    e.add_argument("--rank", type=int, default=64, help="rank of linear and 1x1 layers (default 64)")
    e.add_argument("--conv-rank", type=int, default=0, help="rank of 3x3 convolutions (default 0: skipped)")
    e.add_argument("--te-min-diff", type=float, default=0.1,
                   help="keep the text encoder only if some weight differs by more than this (default 0.1, kohya)")
    _common(e)


def _common(p) -> None:
    p.add_argument("--svd", choices=SVD_METHODS, default="full", help="full or randomized (torch.svd_lowrank)")
    p.add_argument("--clamp", type=float, default=None, metavar="Q",
                   help="clip factors to the Q quantile (kohya/LoraSave use 0.99; default off)")
    p.add_argument("--presets", default=None, help="file of extra block-weight presets, NAME:values per line")
    p.add_argument("--dtype", choices=list(SAVE_DTYPES), default="fp16", help="save precision (default fp16)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _items(text: str, presets_text: str, input_name: str = "lora_list"):
    items = parse_lora_list(text, input_name)
    loaded = []
    for item in items:
        if not Path(item.name).is_file():
            raise MergeInputError(input_name, f"LoRA file '{item.name}' does not exist.", "give a path to a .safetensors LoRA.")
        loaded.append((item, read_lora(item.name, Path(item.name).stem, input_name)))
    return loaded


def _inputs_meta(items, presets_text, mode, output, dtype, dims):
    arch = common_architecture([f for _, f in items])
    presets = parse_presets(presets_text)
    inputs = [(i, f, block_values(i.blocks, i.ratio, arch, presets, "lora_list", i.name)) for i, f in items]
    return merged_metadata(inputs, mode, Path(output).stem, dtype, dims)


def input_files(args) -> list[str]:
    """The files a lora-* command reads (its output may never be one of them)."""
    if args.command == "lora-merge":
        lists = [(args.loras, "lora_list")]
    elif args.loras:
        lists = [(args.a, "lora_1"), (args.b, "lora_2")]
    else:
        return [args.a, args.b]
    return [item.name for text, name in lists for item in parse_lora_list(text, name)]


def run(args) -> int:
    """Run a lora-* command; bad input raises MergeInputError (and file errors), which cli.main reports."""
    start = time.perf_counter()
    presets_text = Path(args.presets).read_text(encoding="utf-8") if args.presets else ""
    try:
        inputs = input_files(args)
        check_target(args.output, inputs, args.overwrite, "filename")  # before any work
        if args.command == "lora-merge":
            items = _items(args.loras, presets_text)
            result = merge_loras(items, args.method, args.rank, args.svd, args.clamp, not args.kohya_strength,
                                 presets_text)
            meta = _inputs_meta(items, presets_text, args.metadata, args.output, args.dtype, result.dims)
        elif args.loras:
            items = _items(args.a, presets_text, "lora_1") + _items(args.b, presets_text, "lora_2")
            if len(items) != 2:
                raise MergeInputError("lora_1", "A and B must name one LoRA each.", "give 'file:ratio' twice.")
            result = extract_from_loras(items[0], items[1], args.alpha, args.beta, args.gamma, True, presets_text)
            meta = _inputs_meta(items, presets_text, "create new", args.output, args.dtype, result.dims)
        else:
            with SafetensorsReader(args.a, "model_a") as ra, SafetensorsReader(args.b, "model_b") as rb:
                sb = rb.shapes()
                shapes = {k: s for k, s in ra.shapes().items() if sb.get(k) == s}
                arch = detect(ra.shapes())
                if arch is None or detect(sb) is None or detect(sb).blocks != arch.blocks:
                    raise MergeInputError("model_b", "the two files are not SD1/SD2/SDXL checkpoints of one family.",
                                          "extract from a fine-tune and its base model.")
                result = extract_from_models(shapes, ra.get, rb.get, arch, args.alpha, args.beta, args.rank,
                                             args.conv_rank, args.svd, args.clamp, args.te_min_diff)
            meta = extraction_metadata(arch, args.rank, args.conv_rank, Path(args.output).stem)
            meta["ss_output_name"] = Path(args.output).stem
        path = save_lora(result, args.output, meta, args.dtype, overwrite=args.overwrite, inputs=inputs)
    except MergeInputError as exc:  # cli.main prints it, with the option's name
        exc.input_name = OPTION_NAMES.get(exc.input_name, exc.input_name)
        raise
    for line in result.report:
        print(line, file=sys.stderr)
    print(f"wrote {path} ({len(result.tensors) // 3} modules, {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0
