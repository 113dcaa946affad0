"""``merge A B [C]``: two or three checkpoint files merged key by key into a new file."""
from __future__ import annotations

import sys
import time

from ..api import OUTPUT_PRECISIONS, merge_files
from ..device import DEVICES
from ..io.precision import SCALED_LAYOUTS
from ..methods.calcmodes import CALC_MODE_NAMES
from ..methods.modes import MODES
from ..plan import FROM_B, KEEP_A, MERGE
from .history import add_history_option, add_replay_option, merge_entry, record, replay_merge
from .options import print_report, ratio, selection_text

MODE_CHOICES = [m.name for m in MODES.values()]


def progress_printer(stream):
    """A progress callback printing whole percents to stream (merge and combine share it)."""
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = done * 100 // max(total, 1)
        if pct != last[0] and (pct % 10 == 0 or done == total):
            last[0] = pct
            print(f"  {pct:3d}% ({done}/{total} keys)", file=stream, flush=True)
    return report


def add_parser(sub) -> None:
    m = sub.add_parser("merge", help="merge two or three safetensors checkpoints",
                       description="alpha is the weight of model B: 0 gives A, 1 gives B.")
    m.add_argument("models", nargs="*", metavar="MODEL",
                   help="A B [C]: .safetensors (fp8 and ComfyUI's scaled fp8 included) or .gguf files")
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
                     help="merge only these: block ids/ranges, element substrings, VAE, Adjust "
                          "(e.g. 'IN01-IN05 attn2')")
    sel.add_argument("--exclude", default="", metavar="TARGETS",
                     help="keep A for these: block ids/ranges, element substrings, VAE, Adjust (e.g. 'OUT03 VAE')")
    m.add_argument("--report", choices=["blocks", "keys"], default=None,
                   help="print what was applied: per block and per elemental rule, or also per key")
    m.add_argument("--dtype", choices=OUTPUT_PRECISIONS, default=None,
                   help="output precision (default: as model A stored each key; unmerged keys are then kept byte "
                        "for byte, and quantised keys of A are written quantised again); scaled_fp8: ComfyUI's "
                        "scaled fp8 layout (linear weights fp8 with a per-tensor scale, the rest bf16)")
    m.add_argument("--scaled-layout", choices=SCALED_LAYOUTS, default=SCALED_LAYOUTS[0],
                   help="how --dtype scaled_fp8 is stored: scaled_fp8 (default: the marker layout, loads in "
                        "ComfyUI 0.3.75 and 0.33) or comfy_quant (per-layer configs, ComfyUI 0.33's own layout; "
                        "0.3.75 cannot load it)")
    m.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the per-key math runs: auto (CUDA when present), cpu or cuda")
    m.add_argument("-o", "--output", required=True, help="output .safetensors path")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    m.add_argument("--hash-inputs", action="store_true",
                   help="record each input's sha256 in sd_merge_models (SuperMerger metadata; takes a while)")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_replay_option(m)
    add_history_option(m)
    m.set_defaults(run=run)


def run(args) -> int:
    if args.from_history is not None:
        if args.models:
            print("error: merge: --from-history takes the entry's own files; give no MODEL", file=sys.stderr)
            return 2
        paths, settings, options = replay_merge(args)
    elif len(args.models) not in (2, 3):
        print("error: give two or three model files (A B [C])", file=sys.stderr)
        return 2
    else:
        paths = list(args.models)
        settings = dict(mode=args.mode, alpha=args.alpha, beta=args.beta, blocks_alpha=args.blocks,
                        blocks_beta=args.blocks_beta, calcmode=args.calc, gamma=args.gamma, seed=args.seed,
                        tensor2_corrected=args.tensor2_corrected, elemental=args.elemental,
                        elemental_full_key=args.elemental_full_key, adjust=args.adjust,
                        include_exclude=selection_text(args))
        options = dict(dtype=args.dtype, scaled_layout=args.scaled_layout, hash_inputs=args.hash_inputs,
                       device=args.device)
    for key, value in options.items():
        setattr(args, key, value)  # the entry records the options the merge ran with
    a, b = paths[:2]
    c = paths[2] if len(paths) == 3 else None
    start = time.perf_counter()
    plan = merge_files(a, b, c, args.output, overwrite=args.overwrite,
                       progress=None if args.quiet else progress_printer(sys.stderr), **options, **settings)
    record(args, lambda: merge_entry(args, plan, paths, args.output))
    print_report(plan, args)
    if not args.quiet:
        print(f"wrote {args.output}: {plan.count(MERGE)} keys merged, {plan.count(KEEP_A)} kept from A, "
              f"{plan.count(FROM_B)} copied from B, {len(plan.nonfinite)} with non-finite input values "
              f"({plan.arch.label}, {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    if plan.nonfinite and not args.report:  # --report already has the warning
        from ..nonfinite import warning
        print(warning(plan.nonfinite), file=sys.stderr)
    return 0
