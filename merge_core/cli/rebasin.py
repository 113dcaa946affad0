"""``rebasin A B -o OUT``: B with its hidden units permuted to line up with A's (weight matching), for a merge."""
from __future__ import annotations

import sys
import time

from ..rebasin import rebasin_files
from ..rebasin.api import MAX_ITERATIONS


def add_parser(sub) -> None:
    r = sub.add_parser("rebasin", help="permute B's hidden units to line up with A's before a merge (SD1, SDXL)",
                       description="Git Re-Basin weight matching: writes B reordered to match A; B computes the "
                                   "same, and a merge of A and the result averages matching units.")
    r.add_argument("a", metavar="A", help="the reference model (.safetensors; SD1 or SDXL)")
    r.add_argument("b", metavar="B", help="the model to permute (fp16/bf16/fp32 .safetensors, same family as A)")
    r.add_argument("-o", "--output", required=True, help="the permuted B (.safetensors)")
    r.add_argument("--iterations", type=int, default=10,
                   help=f"rounds of coordinate descent at most, 1 to {MAX_ITERATIONS} (default 10; stops when a "
                        "round changes nothing)")
    r.add_argument("--seed", type=int, default=0, help="seed of the order the groups are solved in (default 0)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    r.set_defaults(run=run)


def progress_printer(stream):
    """Whole tens of percent of the groups solved in the current round."""
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = done * 100 // max(total, 1)
        if pct // 10 != last[0] // 10 or done == total:
            last[0] = pct
            print(f"  {pct:3d}% ({done}/{total} permutation groups)", file=stream, flush=True)
    return report


def run(args) -> int:
    start = time.perf_counter()
    progress = None if args.quiet else progress_printer(sys.stderr)
    path, result = rebasin_files(args.a, args.b, args.output, iterations=args.iterations, seed=args.seed,
                                 overwrite=args.overwrite, progress=progress)
    if not args.quiet:
        print(result.report(), file=sys.stderr)
        print(f"wrote {path} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0
