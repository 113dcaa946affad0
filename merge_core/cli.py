"""Command line: ``merge-suite merge A B [C] --mode ... -o OUT`` (or ``python -m merge_core merge ...``)."""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

from .api import OUTPUT_DTYPES, analyze_files, merge_files
from .errors import MergeInputError
from .calcmodes import CALC_MODE_NAMES
from .cli_types import OneLineParser, ratio
from .methods import MODES
from .output_file import Stopped, check_target, install_signal_cleanup, write_bytes
from .version import __version__

MODE_CHOICES = [m.name for m in MODES.values()]
# merge_core names inputs as the nodes do; on the command line they are options or positions
OPTION_NAMES = {"blocks_alpha": "--blocks", "blocks_beta": "--blocks-beta", "dtype": "--dtype",
                "calcmode": "--calc", "gamma": "--gamma", "block": "--block", "include": "--include", "elemental": "--elemental", "adjust": "--adjust", "include_exclude": "--include/--exclude", "alpha": "--alpha", "beta": "--beta", "seed": "--seed",
                "model_a": "model A (1st file)", "model_b": "model B (2nd file)", "model_c": "model C (3rd file)",
                "output": "-o", "file": "FILE"}


def _progress(stream):
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = done * 100 // max(total, 1)
        if pct != last[0] and (pct % 10 == 0 or done == total):
            last[0] = pct
            print(f"  {pct:3d}% ({done}/{total} keys)", file=stream, flush=True)
    return report


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
    m = sub.add_parser("merge", help="merge two or three safetensors checkpoints",
                       description="alpha is the weight of model B: 0 gives A, 1 gives B.")
    m.add_argument("models", nargs="+", metavar="MODEL", help="A.safetensors B.safetensors [C.safetensors]")
    m.add_argument("--mode", default="weight_sum", choices=MODE_CHOICES,
                   help="weight_sum: (1-a)A+aB; add_difference: A+a(B-C); triple_sum: (1-a-b)A+aB+bC; "
                        "sum_twice: (1-b)((1-a)A+aB)+bC")
    m.add_argument("--alpha", type=ratio, default=0.5, help="weight of B (default 0.5)")
    m.add_argument("--beta", type=ratio, default=0.25, help="weight of C for triple_sum/sum_twice (default 0.25)")
    m.add_argument("--blocks", default=None,
                   help="alpha block weights: 26 (SD1/SD2) or 20 (SDXL) comma-separated values, or a preset name; "
                        "overrides --alpha")
    m.add_argument("--blocks-beta", default=None, help="beta block weights, same form as --blocks")
    m.add_argument("--calc", default="normal", metavar="CALCMODE",
                   help="calc mode: " + ", ".join(CALC_MODE_NAMES) + " (trainDifference and extract switch the "
                        "mode to add_difference; 'smoothAdd MT' is accepted as smoothAdd)")
    m.add_argument("--gamma", type=ratio, default=0.3, help="extract: similarity sharpness, >= 0 (default 0.3)")
    m.add_argument("--seed", type=int, default=0, help="plus random: noise seed (default 0)")
    m.add_argument("--tensor2-corrected", action="store_true",
                   help="tensor2: bounds from shape[1] always (default: SuperMerger's rule, for parity)")
    m.add_argument("--elemental", default="",
                   help="per-element alpha overrides: 'blocks:elements:ratio' entries separated by commas or "
                        "newlines, e.g. 'OUT03-OUT05:attn2:0.5,NOT M00:ff.net:0' (last match wins)")
    m.add_argument("--elemental-full-key", action="store_true",
                   help="match element substrings against the full key, prefix included (SuperMerger parity)")
    m.add_argument("--adjust", default="",
                   help="Adjust after merging: 8 numbers IN,OUT,OUT2,CONT,BRI,COL1,COL2,COL3 (detail, contrast, "
                        "brightness, cyan/red, magenta/green, yellow/blue), e.g. '2,0,0,0,0,0,0,0'")
    sel = m.add_mutually_exclusive_group()
    sel.add_argument("--include", default="", metavar="TARGETS",
                     help="merge only these: block ids/ranges, element substrings, VAE, Adjust (e.g. 'IN01-IN05 attn2')")
    sel.add_argument("--exclude", default="", metavar="TARGETS",
                     help="keep A for these: block ids/ranges, element substrings, VAE, Adjust (e.g. 'OUT03 VAE')")
    m.add_argument("--report", choices=["blocks", "keys"], default=None,
                   help="print what was applied: per block and per elemental rule, or also per key")
    m.add_argument("--dtype", choices=sorted(OUTPUT_DTYPES), default=None,
                   help="output dtype (default: model A's dtype; unmerged keys are then kept byte for byte)")
    m.add_argument("-o", "--output", required=True, help="output .safetensors path")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    m.add_argument("--hash-inputs", action="store_true",
                   help="record each input's sha256 in sd_merge_models (SuperMerger metadata; takes a while)")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress output")

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

    from .lora_cli import add_parsers as add_lora_parsers
    add_lora_parsers(sub)
    from .weights_cli import add_parsers as add_weights_parsers
    add_weights_parsers(sub)

    el = sub.add_parser("elements", help="list keys with their block and element name, for elemental rules")
    el.add_argument("file")
    el.add_argument("--block", default="", help="only these blocks, e.g. IN04 or 'IN04 OUT05'")
    el.add_argument("--match", default="", help="only keys containing this text, e.g. attn2")
    return parser


def analysis_tables(arch, result, block_method: str = "mean", per_key: bool = False):
    """(header, rows) for an Analysis: one row per block, optionally one per key."""
    sims, diffs, counts = result.block_similarity(block_method), result.block_difference(), result.counts()
    header = ["block", "key", "similarity %", "difference", "keys"]
    rows = [[b, "", sims[b], diffs[b], counts[b]] for b in result.blocks() if b in sims]
    if per_key:
        rows += [[k.block, k.key, k.cosine, math.sqrt(k.diff_sq / k.a_sq) if k.a_sq else 0.0, 1] for k in result.keys]
    return header, rows


def run_analyze(args) -> int:
    from .analysis import format_csv, format_table
    from .charts import bar_chart
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
    if args.method == "asim":
        header, rows = ["site", "ASimilarity %"], [list(r) for r in result]
        labels, values, title = [r[0].split("diffusion_model.")[-1][:14] for r in result], [r[1] for r in result], \
            "ASimilarity per attention site (%)"
    else:
        header, rows = analysis_tables(arch, result, args.block_method, args.keys)
        blocks = [r for r in rows if r[1] == ""]
        labels, values = [r[0] for r in blocks], [r[2] for r in blocks]
        title = f"cosine similarity per block ({args.block_method}, %), {arch.label}"
        if result.skipped:
            print(f"note: {result.skipped_note()}, "
                  f"e.g. {result.skipped[0][0]}", file=sys.stderr)
    print(format_table(rows, header))
    inputs = (args.model_a, args.model_b)
    if args.csv:
        write_bytes(args.csv, format_csv(rows, header).encode("utf-8"), inputs, args.overwrite, "--csv")
    if args.png:
        write_bytes(args.png, png_bytes(bar_chart(labels, values, title, "%")), inputs, args.overwrite, "--png")
    if args.diff_png and args.method != "asim":
        diffs = result.block_difference()
        chart = bar_chart(list(diffs), list(diffs.values()), "difference ||B-A|| / ||A|| per block")
        write_bytes(args.diff_png, png_bytes(chart), inputs, args.overwrite, "--diff-png")
    return 0


def png_bytes(image) -> bytes:
    import io
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_elements(args) -> int:
    from .analysis import format_table, list_elements, list_lora_elements
    from .architectures import detect
    from .sources import open_source
    src = open_source(args.file)
    try:
        shapes = src.shapes()
        dtypes = {k: src.dtype(k) for k in shapes}
        arch = detect(shapes)
        if arch is None and any("lora" in k for k in shapes):  # a LoRA: keys and shapes, block "LoRA"
            rows = list_lora_elements(shapes, dtypes, args.match)
        elif arch is None:
            print("error: not a recognised SD1, SD2 or SDXL checkpoint, nor a LoRA", file=sys.stderr)
            return 2
        else:
            rows = list_elements(shapes, dtypes, arch, args.block, args.match)
    finally:
        src.close()
    print(format_table(rows, ["block", "element", "key", "shape", "dtype"]))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    install_signal_cleanup(then_raise=True)  # SIGTERM/SIGHUP: like Ctrl+C, the output's temporary file goes
    try:
        return run_command(args)
    except KeyboardInterrupt as exc:
        print(f"error: {args.command}: {exc or 'interrupted'}; no output was written.", file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Stopped) else 130
    except MergeInputError as exc:
        exc.input_name = OPTION_NAMES.get(exc.input_name, exc.input_name)
        print(f"error: {exc.describe(args.command)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {args.command}: {exc}", file=sys.stderr)
        return 2


def run_command(args) -> int:
    if args.command in ("dice", "pinpoint"):
        from .weights_cli import run as run_weights
        return run_weights(args)
    if args.command.startswith("lora-"):
        from .lora_cli import run as run_lora
        return run_lora(args)
    if args.command == "analyze":
        return run_analyze(args)
    if args.command == "elements":
        return run_elements(args)
    if len(args.models) not in (2, 3):
        print("error: give two or three model files (A B [C])", file=sys.stderr)
        return 2
    a, b = args.models[:2]
    c = args.models[2] if len(args.models) == 3 else None
    start = time.perf_counter()
    plan = merge_files(a, b, c, args.output, mode=args.mode, alpha=args.alpha, beta=args.beta,
                       blocks_alpha=args.blocks, blocks_beta=args.blocks_beta, dtype=args.dtype,
                       overwrite=args.overwrite, progress=None if args.quiet else _progress(sys.stderr),
                       hash_inputs=args.hash_inputs,
                       calcmode=args.calc, gamma=args.gamma, seed=args.seed,
                       tensor2_corrected=args.tensor2_corrected, elemental=args.elemental,
                       elemental_full_key=args.elemental_full_key, adjust=args.adjust,
                       include_exclude=(f"include: {args.include}" if args.include.strip() else
                                        f"exclude: {args.exclude}" if args.exclude.strip() else ""))
    if args.report:
        from .report import applied_report
        print(applied_report(plan, per_key=args.report == "keys"))
    if not args.quiet:
        print(f"wrote {args.output}: {plan.count('merge')} keys merged, {plan.count('keep_a')} kept from A, "
              f"{plan.count('from_b')} copied from B, {len(plan.nonfinite)} with non-finite input values "
              f"({plan.arch.label}, {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    if plan.nonfinite and not args.report:  # --report already has the warning
        from .nonfinite import warning
        print(warning(plan.nonfinite), file=sys.stderr)
    return 0
