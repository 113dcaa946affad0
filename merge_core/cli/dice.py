"""``dice``: random block weights from a seed (SuperMerger's Let the Dice Roll), one JSON object per draw.

Each line can feed ``merge --blocks ... --blocks-beta ... --elemental ...``.
"""
from __future__ import annotations

import json

from ..blocks.dice import DEFAULT_CUSTOM, MODES, DiceSettings, roll_many
from .options import LAYOUTS, weight_generator_errors


def add_parser(sub) -> None:
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
    d.set_defaults(run=run)


def run(args) -> int:
    arch = LAYOUTS[args.layout]
    with weight_generator_errors(args.command) as failed:
        settings = DiceSettings(args.mode, args.custom, args.upper, args.lower, args.clamp_upper,
                                args.clamp_lower, args.decimals)
        for r in roll_many(settings, arch, args.seed, args.count, args.randomize in ("alpha", "both"),
                           args.randomize in ("beta", "both")):
            print(json.dumps({"seed": r.seed, "blocks": r.alpha, "blocks_beta": r.beta, "elemental": r.elemental}))
    return 2 if failed else 0
