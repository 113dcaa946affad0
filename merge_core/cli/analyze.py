"""``analyze A B``: similarity of two checkpoints per block (and per key), as a table, CSV and charts."""
from __future__ import annotations

import math
import os
import sys
from typing import cast

from ..analysis.similarity import Analysis
from ..api import analyze_files
from ..errors import MergeInputError
from ..io.output_file import check_target, write_bytes


def add_parser(sub) -> None:
    an = sub.add_parser("analyze", help="similarity of two checkpoints per block (and per key)")
    an.add_argument("model_a")
    an.add_argument("model_b")
    an.add_argument("--method", choices=["cosine", "asim"], default="cosine",
                    help="cosine: per-key cosine similarity aggregated per block; asim: ASimilarity per attention site")
    an.add_argument("--block-method", choices=["mean", "min", "attn2"], default="mean")
    an.add_argument("--include", default="te,unet", help="parts to compare: te, unet, vae (default te,unet)")
    an.add_argument("--common-keys", action="store_true",
                    help="compare models of different architectures on their shared keys instead of failing")
    an.add_argument("--keys", action="store_true", help="also print one row per key")
    an.add_argument("--csv", help="write the table as CSV")
    an.add_argument("--png", help="write the similarity bar chart (PNG)")
    an.add_argument("--diff-png", help="write the difference map ||B-A||/||A|| per block (PNG)")
    an.add_argument("--overwrite", action="store_true", help="replace existing --csv/--png/--diff-png files")
    an.set_defaults(run=run)


def analysis_tables(arch, result, block_method: str = "mean", per_key: bool = False):
    """(header, rows) for an Analysis: one row per block, optionally one per key."""
    sims, diffs, counts = result.block_similarity(block_method), result.block_difference(), result.counts()
    header = ["block", "key", "similarity %", "difference", "keys"]
    rows = [[b, "", sims[b], diffs[b], counts[b]] for b in result.blocks() if b in sims]
    if per_key:
        rows += [[k.block, k.key, k.cosine, math.sqrt(k.diff_sq / k.a_sq) if k.a_sq else 0.0, 1] for k in result.keys]
    return header, rows


def run(args) -> int:
    from ..analysis.similarity import format_csv, format_table
    from ..analysis.charts import bar_chart
    include = [p.strip() for p in args.include.split(",") if p.strip()]
    outputs = {"--csv": args.csv, "--png": args.png, "--diff-png": args.diff_png}
    for option, path in outputs.items():  # before any work
        if path:
            check_target(path, (args.model_a, args.model_b), args.overwrite, option)
    if len({os.path.realpath(p) for p in outputs.values() if p}) < sum(1 for p in outputs.values() if p):
        raise MergeInputError("--csv", "two of --csv, --png and --diff-png name the same file.",
                              "give each output its own name.")
    arch, result = analyze_files(args.model_a, args.model_b, method=args.method, include=include,
                                 mismatch="common" if args.common_keys else "error")
    analysis = None  # the cosine methods' Analysis; asim gives its sites' values
    if args.method == "asim":
        sites = cast("list[tuple[str, float]]", result)
        header, rows = ["site", "ASimilarity %"], [list(r) for r in sites]
        labels, values, title = [r[0].split("diffusion_model.")[-1][:14] for r in sites], [r[1] for r in sites], \
            "ASimilarity per attention site (%)"
    else:
        analysis = cast(Analysis, result)
        header, rows = analysis_tables(arch, analysis, args.block_method, args.keys)
        blocks = [r for r in rows if r[1] == ""]
        labels, values = [r[0] for r in blocks], [r[2] for r in blocks]
        title = f"cosine similarity per block ({args.block_method}, %), {arch.label}"
        if analysis.skipped:
            print(f"note: {analysis.skipped_note()}, "
                  f"e.g. {analysis.skipped[0][0]}", file=sys.stderr)
    print(format_table(rows, header))
    inputs = (args.model_a, args.model_b)
    if args.csv:
        write_bytes(args.csv, format_csv(rows, header).encode("utf-8"), inputs, args.overwrite, "--csv")
    if args.png:
        write_bytes(args.png, png_bytes(bar_chart(labels, values, title, "%")), inputs, args.overwrite, "--png")
    if args.diff_png and analysis is not None:
        diffs = analysis.block_difference()
        chart = bar_chart(list(diffs), list(diffs.values()), "difference ||B-A|| / ||A|| per block")
        write_bytes(args.diff_png, png_bytes(chart), inputs, args.overwrite, "--diff-png")
    return 0


def png_bytes(image) -> bytes:
    import io
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
