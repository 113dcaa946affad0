"""``blocks FILE``: the file's family and block list, with how many keys each block holds.

The same answer the merge uses (architectures.detect_or_auto), so it shows how any file will be
split before a merge: a declared family, or automatic blocks for a model nobody declared.
"""
from __future__ import annotations

import sys
from collections import Counter


def add_parser(sub) -> None:
    p = sub.add_parser("blocks", help="print a file's model family and its block list (the block-weight order)")
    p.add_argument("file")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..analysis.similarity import format_table
    from ..architectures import KEPT, NO_BLOCK, detect_or_auto
    from ..architectures.auto import AUTO
    from ..architectures.auto import RULE as AUTO_RULE
    from ..blocks.weights import named_example
    from ..io.sources import open_source
    src = open_source(args.file, input_name="file")
    try:
        keys = list(src.shapes())
    finally:
        src.close()
    arch = detect_or_auto(keys)
    if arch is None:
        print("error: file: has no diffusion-model or text-encoder keys this tool recognises.", file=sys.stderr)
        return 2
    naming = "diffusion-model-only file (bare keys)" if arch.bare else "prefixed keys"
    counts = Counter(arch.block_of(k) for k in keys)
    print(f"{arch.label} ({arch.name}), {naming}: {arch.n_blocks} blocks")
    print(f"layout: {arch.layout_text()}")
    if arch.name == AUTO:
        print(f"order: {AUTO_RULE}")
    print(f"block weights: {arch.n_blocks} values in this order, or named pairs such as {named_example(arch)} "
          "(blocks not named take alpha)")
    first: dict[str, str] = {}  # block -> its first key
    for key in keys:
        first.setdefault(arch.block_of(key), key)
    rows = [[i, b, counts.get(b, 0), first.get(b, "")] for i, b in enumerate(arch.blocks)]
    print(format_table(rows, ["#", "block", "keys", "first key"]))
    for special, what in ((KEPT, "kept from A (VAE)"), (NO_BLOCK, "kept from A (no block rule matches)")):
        if counts.get(special):
            print(f"{counts[special]} keys {what}, e.g. {first[special]}")
    return 0
