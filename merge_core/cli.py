"""Command line: ``python -m merge_core merge A B [C] --mode ... -o OUT``."""
from __future__ import annotations

import argparse
import sys
import time

from .api import OUTPUT_DTYPES, merge_files
from .errors import MergeInputError
from .calcmodes import CALC_MODE_NAMES
from .methods import MODES

MODE_CHOICES = [m.name for m in MODES.values()]
# merge_core names inputs as the nodes do; on the command line they are options or positions
OPTION_NAMES = {"blocks_alpha": "--blocks", "blocks_beta": "--blocks-beta", "dtype": "--dtype",
                "calcmode": "--calc", "gamma": "--gamma", "alpha": "--alpha", "beta": "--beta",
                "model_a": "model A (1st file)", "model_b": "model B (2nd file)", "model_c": "model C (3rd file)"}


def _progress(stream):
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = done * 100 // max(total, 1)
        if pct != last[0] and (pct % 10 == 0 or done == total):
            last[0] = pct
            print(f"  {pct:3d}% ({done}/{total} keys)", file=stream, flush=True)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m merge_core",
                                     description="SuperMerger-compatible checkpoint merging, key by key.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="merge two or three safetensors checkpoints",
                       description="alpha is the weight of model B: 0 gives A, 1 gives B.")
    m.add_argument("models", nargs="+", metavar="MODEL", help="A.safetensors B.safetensors [C.safetensors]")
    m.add_argument("--mode", default="weight_sum", choices=MODE_CHOICES,
                   help="weight_sum: (1-a)A+aB; add_difference: A+a(B-C); triple_sum: (1-a-b)A+aB+bC; "
                        "sum_twice: (1-b)((1-a)A+aB)+bC")
    m.add_argument("--alpha", type=float, default=0.5, help="weight of B (default 0.5)")
    m.add_argument("--beta", type=float, default=0.25, help="weight of C for triple_sum/sum_twice (default 0.25)")
    m.add_argument("--blocks", default=None,
                   help="alpha block weights: 26 (SD1/SD2) or 20 (SDXL) comma-separated values, or a preset name; "
                        "overrides --alpha")
    m.add_argument("--blocks-beta", default=None, help="beta block weights, same form as --blocks")
    m.add_argument("--calc", default="normal", metavar="CALCMODE",
                   help="calc mode: " + ", ".join(CALC_MODE_NAMES) + " (trainDifference and extract switch the "
                        "mode to add_difference; 'smoothAdd MT' is accepted as smoothAdd)")
    m.add_argument("--gamma", type=float, default=0.3, help="extract: similarity sharpness, >= 0 (default 0.3)")
    m.add_argument("--seed", type=int, default=0, help="plus random: noise seed (default 0)")
    m.add_argument("--tensor2-corrected", action="store_true",
                   help="tensor2: bounds from shape[1] always (default: SuperMerger's rule, for parity)")
    m.add_argument("--dtype", choices=sorted(OUTPUT_DTYPES), default=None,
                   help="output dtype (default: model A's dtype; unmerged keys are then kept byte for byte)")
    m.add_argument("-o", "--output", required=True, help="output .safetensors path")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "merge":
        if len(args.models) not in (2, 3):
            print("error: give two or three model files (A B [C])", file=sys.stderr)
            return 2
        a, b = args.models[:2]
        c = args.models[2] if len(args.models) == 3 else None
        start = time.perf_counter()
        try:
            plan = merge_files(a, b, c, args.output, mode=args.mode, alpha=args.alpha, beta=args.beta,
                               blocks_alpha=args.blocks, blocks_beta=args.blocks_beta, dtype=args.dtype,
                               overwrite=args.overwrite, progress=None if args.quiet else _progress(sys.stderr),
                               calcmode=args.calc, gamma=args.gamma, seed=args.seed,
                               tensor2_corrected=args.tensor2_corrected)
        except MergeInputError as exc:
            exc.input_name = OPTION_NAMES.get(exc.input_name, exc.input_name)
            print(f"error: {exc.describe('merge')}", file=sys.stderr)
            return 2
        except (FileExistsError, FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not args.quiet:
            print(f"wrote {args.output}: {plan.count('merge')} keys merged, {plan.count('keep_a')} kept from A, "
                  f"{plan.count('from_b')} copied from B ({plan.arch.label}, {time.perf_counter() - start:.1f} s)",
                  file=sys.stderr)
    return 0
