"""``pinpoint TARGETS VALUES``: block weights (or elemental text) per target block and value, one JSON object
per cell."""
from __future__ import annotations

import json

from ..blocks.pinpoint import pinpoint_blocks, pinpoint_elements
from .options import LAYOUTS, weight_generator_errors


def add_parser(sub) -> None:
    p = sub.add_parser("pinpoint", help="block weights (or elemental text) per target block and value")
    p.add_argument("targets", help="'IN01, OUT10 OUT11, NOT M00 OUT03-OUT06' or ALL; with --elements: "
                                   "'OUT03-OUT05:attn2, IN01:'")
    p.add_argument("values", help="comma-separated values, e.g. '0, 0.5, 1'")
    p.add_argument("--layout", choices=list(LAYOUTS), default="sd1")
    p.add_argument("--template", default="", help="block weights for the other blocks (default: all 0)")
    p.add_argument("--elements", action="store_true", help="targets are BLOCKS:ELEMENTS; print elemental text")
    p.add_argument("--base", default="", help="with --elements: elemental rules every cell starts from")
    p.set_defaults(run=run)


def run(args) -> int:
    arch = LAYOUTS[args.layout]
    with weight_generator_errors(args.command) as failed:
        cells = (pinpoint_elements(args.targets, args.values, arch, args.base) if args.elements
                 else pinpoint_blocks(args.targets, args.values, arch, args.template))
        key = "elemental" if args.elements else "blocks"
        for cell in cells:
            print(json.dumps({"target": cell.target, "value": cell.value, key: cell.text}))
    return 2 if failed else 0
