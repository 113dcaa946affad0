"""``elements FILE``: every key with its block and element name, to write elemental rules against."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    el = sub.add_parser("elements", help="list keys with their block and element name, for elemental rules")
    el.add_argument("file")
    el.add_argument("--block", default="", help="only these blocks, e.g. IN04 or 'IN04 OUT05'")
    el.add_argument("--match", default="", help="only keys containing this text, e.g. attn2")
    el.set_defaults(run=run)


def run(args) -> int:
    from ..analysis.similarity import format_table, list_elements, list_lora_elements
    from ..architectures import detect, detect_or_auto
    from ..io.sources import open_source
    src = open_source(args.file)
    try:
        shapes = src.shapes()
        dtypes = {k: src.dtype(k) for k in shapes}
        arch = detect(shapes)
        if arch is None and any("lora" in k for k in shapes):  # a LoRA: keys and shapes, block "LoRA"
            rows = list_lora_elements(shapes, dtypes, args.match)
        elif (arch := arch or detect_or_auto(shapes)) is None:
            print("error: no diffusion-model or text-encoder keys, and not a LoRA", file=sys.stderr)
            return 2
        else:
            rows = list_elements(shapes, dtypes, arch, args.block, args.match)
    finally:
        src.close()
    print(format_table(rows, ["block", "element", "key", "shape", "dtype"]))
    return 0
