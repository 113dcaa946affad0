"""Command line for weight generators: ``dice`` (Let the Dice Roll) and ``pinpoint`` sweeps.

Each prints one JSON object per line (one per draw or cell), so a shell loop or a
script can feed ``merge --blocks ... --elemental ... --seed ...`` with them.
"""
from __future__ import annotations

import json
import sys

from .architectures import SD1, SDXL
from .dice import DEFAULT_CUSTOM, MODES, DiceSettings, roll_many
from .errors import MergeInputError
from .pinpoint import pinpoint_blocks, pinpoint_elements

LAYOUTS = {"sd1": SD1, "sdxl": SDXL}


def add_parsers(sub) -> None:
    d = sub.add_parser("dice", help="random block weights from a seed (SuperMerger's Let the Dice Roll)")
    d.add_argument("--layout", choices=list(LAYOUTS), default="sd1", help="26 blocks (sd1/sd2) or 20 (sdxl)")
    d.add_argument("--mode", choices=list(MODES), default="R")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--count", type=int, default=1, help="draws, with seeds seed, seed+1, ...")
    d.add_argument("--randomize", choices=["alpha", "beta", "both"], default="alpha")
    d.add_argument("--custom", default=DEFAULT_CUSTOM, help="template for --mode custom: one token per block")
    d.add_argument("--upper", default="1", help="X upper limit / D centre (one value or one per block)")
    d.add_argument("--lower", default="0", help="X lower limit / D width; '0.2R0.7' entries allowed")
    d.add_argument("--clamp-upper", default="1")
    d.add_argument("--clamp-lower", default="0")
    d.add_argument("--decimals", type=int, default=3)

    p = sub.add_parser("pinpoint", help="block weights (or elemental text) per target block and value")
    p.add_argument("targets", help="'IN01, OUT10 OUT11, NOT M00 OUT03-OUT06' or ALL; with --elements: "
                                   "'OUT03-OUT05:attn2, IN01:'")
    p.add_argument("values", help="comma-separated values, e.g. '0, 0.5, 1'")
    p.add_argument("--layout", choices=list(LAYOUTS), default="sd1")
    p.add_argument("--template", default="", help="block weights for the other blocks (default: all 0)")
    p.add_argument("--elements", action="store_true", help="targets are BLOCKS:ELEMENTS; print elemental text")
    p.add_argument("--base", default="", help="with --elements: elemental rules every cell starts from")


def run(args) -> int:
    arch = LAYOUTS[args.layout]
    try:
        if args.command == "dice":
            settings = DiceSettings(args.mode, args.custom, args.upper, args.lower, args.clamp_upper,
                                    args.clamp_lower, args.decimals)
            for r in roll_many(settings, arch, args.seed, args.count, args.randomize in ("alpha", "both"),
                               args.randomize in ("beta", "both")):
                print(json.dumps({"seed": r.seed, "blocks": r.alpha, "blocks_beta": r.beta, "elemental": r.elemental}))
        else:
            cells = (pinpoint_elements(args.targets, args.values, arch, args.base) if args.elements
                     else pinpoint_blocks(args.targets, args.values, arch, args.template))
            key = "elemental" if args.elements else "blocks"
            for cell in cells:
                print(json.dumps({"target": cell.target, "value": cell.value, key: cell.text}))
    except MergeInputError as exc:
        exc.input_name = "--" + exc.input_name.replace("_", "-") if exc.input_name not in ("targets", "values") \
            else exc.input_name
        print(f"error: {exc.describe(args.command)}", file=sys.stderr)
        return 2
    return 0
