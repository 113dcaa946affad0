"""``combine --base C M1 M2 [M3 ...]``: n-model merges (TIES, DARE, DELLA, Model Stock, ...) key by key."""
from __future__ import annotations

import re
import sys
import time

from ..combine.api import combine_files
from ..errors import MergeInputError
from ..input_names import CLI_COMBINE, front_end_name
from ..combine.methods import MAX_ITERATIONS, METHODS
from ..combine.params import PARAMETERS
from ..plan import KEEP_A, MERGE
from .history import add_history_option, add_replay_option, combine_entry, record, replay_combine
from .merge import progress_printer
from .options import non_negative_int, positive_int, print_report, ratio, selection_text

METHOD_HELP = "; ".join(f"{m.name}: {m.formula}" for m in METHODS.values())
# merge_core's input names as this command spells them


def add_parser(sub) -> None:
    m = sub.add_parser("combine", help="merge a base and n models: TIES, DARE, DELLA, Model Stock, ...",
                       description="result = base + alpha * delta, delta from the task vectors Mi - base. "
                                   + METHOD_HELP)
    m.add_argument("models", nargs="*", metavar="MODEL", help="M1.safetensors M2.safetensors [M3 ...]")
    m.add_argument("--base", help="the base model C the task vectors are taken from (required)")
    m.add_argument("--method", choices=list(METHODS), help="required")
    m.add_argument("--alpha", type=ratio, default=1.0, help="scale of the combined delta (default 1); "
                   "model_stock: 1 is the paper's ratio t")
    m.add_argument("--weights", default=None,
                   help="one weight per model, comma-separated (default 1 each), within +-1000; a negative "
                   "weight subtracts that task vector, except for geometric_median (a weighted mean: weights >= 0 "
                   "with a positive sum)")
    m.add_argument("--density", type=ratio, default=0.2, help="ties: fraction of each task vector kept (default 0.2)")
    m.add_argument("--drop-rate", type=ratio, default=0.9,
                   help="dare, dare_ties, della: drop probability p in [0, 1] (default 0.9); kept values are scaled by "
                        "1/(1-p); della: p - epsilon/2 >= 0 and p + epsilon/2 < 1")
    m.add_argument("--epsilon", type=ratio, default=None,
                   help="della: spread of p by magnitude rank (default 0.1); geometric_median: smallest distance "
                        "(default 1e-6)")
    m.add_argument("--iterations", type=positive_int, default=100,
                   help=f"geometric_median: Weiszfeld steps at most, 1 to {MAX_ITERATIONS} (default 100)")
    m.add_argument("--top", type=ratio, default=0.01, help="breadcrumbs: largest fraction dropped (default 0.01)")
    m.add_argument("--bottom", type=ratio, default=0.1, help="breadcrumbs: smallest fraction dropped (default 0.1)")
    m.add_argument("--seed", type=non_negative_int, default=0, help="dare, dare_ties, della: seed (default 0)")
    for row in LATE:
        _add_parameter(m, row)
    m.add_argument("--blocks", default=None, help="alpha block weights (as merge --blocks); overrides --alpha")
    m.add_argument("--elemental", default="", help="per-element alpha overrides (as merge --elemental)")
    sel = m.add_mutually_exclusive_group()
    sel.add_argument("--include", default="", metavar="TARGETS", help="combine only these blocks / elements")
    sel.add_argument("--exclude", default="", metavar="TARGETS", help="keep the base for these blocks / elements")
    m.add_argument("--report", choices=["blocks", "keys"], default=None, help="print what was applied")
    m.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None, help="output dtype (default: base's)")
    m.add_argument("-o", "--output", required=True, help="output .safetensors path")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_replay_option(m)
    add_history_option(m)
    m.set_defaults(run=run)


# The method parameters added after the first release: one option each, from their rows (params.PARAMETERS).
LATE = tuple(row for row in PARAMETERS if row.late and row.field != "median_eps")


def _add_parameter(parser, row) -> None:
    users = ", ".join(m.name for m in METHODS.values() if row.field in m.uses) or "no method yet"
    kind = {"type": str.lower, "choices": list(row.choices)} if row.choices else {
        "type": positive_int if row.kind is int else float}
    parser.add_argument(row.option, default=None, **kind,
                        help=f"{users}: {row.help}; {row.domain()} (default {row.default})")


def _rename(exc: MergeInputError) -> MergeInputError:
    name = exc.input_name
    found = re.fullmatch(r"model_m(\d+)|model (\d+)", name)
    if found:
        name = f"MODEL {found.group(1) or found.group(2)}"
    shown = front_end_name(name, CLI_COMBINE)
    if shown == name and not name.startswith("MODEL"):
        shown = "--" + name.replace("_", "-")  # the other options are named after their parameters
    exc.input_name = shown
    return exc


def _settings(args) -> dict:
    """The options combine_files takes, from the command line."""
    return dict(method=args.method, alpha=args.alpha, weights=args.weights, density=args.density,
                drop_rate=args.drop_rate, epsilon=args.epsilon, iterations=args.iterations, top=args.top,
                bottom=args.bottom, seed=args.seed, blocks=args.blocks, elemental=args.elemental,
                include_exclude=selection_text(args), **{row.field: getattr(args, row.field) for row in LATE})


def run(args) -> int:
    if args.from_history is not None:
        if args.models or args.base:
            print("error: combine: --from-history takes the entry's own files; give no --base or MODEL",
                  file=sys.stderr)
            return 2
        args.base, args.models, options, args.dtype = replay_combine(args)
        args.method = options["method"]
    else:
        missing = [name for name, value in (("MODEL", args.models), ("--base", args.base),
                                            ("--method", args.method)) if not value]
        if missing:  # required unless --from-history names the entry to redo
            print(f"error: combine: the following arguments are required: {', '.join(missing)} (see --help)",
                  file=sys.stderr)
            return 2
        options = _settings(args)
    start = time.perf_counter()
    try:
        plan = combine_files(args.base, args.models, args.output, dtype=args.dtype, overwrite=args.overwrite,
                             progress=None if args.quiet else progress_printer(sys.stderr), **options)
    except MergeInputError as exc:
        raise _rename(exc) from None
    record(args, lambda: combine_entry(args, plan, args.output))
    print_report(plan, args)
    if not args.quiet:
        print(f"wrote {args.output}: {args.method} of {len(args.models)} models, {plan.count(MERGE)} keys merged, "
              f"{plan.count(KEEP_A)} kept from the base, {len(plan.fallbacks)} fallbacks "
              f"({plan.arch.label}, {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0
