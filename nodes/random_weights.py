"""Block-weight generators that feed merge nodes: pinpoint sweeps and Let the Dice Roll.

They output plain STRING lists (one element per cell), so one queue run merges and
samples every cell; the x/y label outputs name each cell for a grid.
"""
from __future__ import annotations

from comfy_api.latest import io

from ..merge_core.architectures import SD1, SDXL
from ..merge_core.blocks.dice import DEFAULT_CUSTOM, MODES, DiceSettings, roll_many
from ..merge_core.blocks.pinpoint import pinpoint_blocks, pinpoint_elements
from .errors import named_errors
from .shared import SWEEP_CATEGORY
from .validation import settings_problems

LAYOUTS = {"SD1/SD2 (26 blocks)": SD1, "SDXL (20 blocks)": SDXL}
LAYOUT_TIP = "Block layout of the models you will merge: 26 values (BASE, IN00-IN11, M00, OUT00-OUT11) or 20 (SDXL)."
VALUES_TIP = "How much: comma-separated values, each one a cell per target (e.g. 0, 0.5, 1)."


def _layout():
    return io.Combo.Input("layout", options=list(LAYOUTS), default=next(iter(LAYOUTS)), tooltip=LAYOUT_TIP)


def _list_outputs(text_name: str, text_tip: str):
    return [io.String.Output(display_name=text_name, tooltip=text_tip, is_output_list=True),
            io.String.Output(display_name="x_label", tooltip="Where (the target), per cell.", is_output_list=True),
            io.String.Output(display_name="y_label", tooltip="How much (the value), per cell.", is_output_list=True)]


def _cells_output(cells) -> io.NodeOutput:
    return io.NodeOutput([c.text for c in cells], [c.target for c in cells], [f"{c.value:g}" for c in cells])


class PinpointBlocks(io.ComfyNode):
    DISPLAY = "Pinpoint Blocks (sweep list)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_PinpointBlocks", display_name=cls.DISPLAY, category=SWEEP_CATEGORY,
            description="SuperMerger's 'pinpoint blocks' axis: for every target and value, block weights equal to "
                        "the template with the target blocks set to the value. Outputs a list: wire 'blocks' to a "
                        "merge node's blocks_alpha and every cell is merged and sampled in one queue run.",
            inputs=[
                _layout(),
                io.String.Input("targets", default="IN01, OUT10 OUT11, OUT03-OUT06", multiline=True,
                                tooltip="Where: block specs separated by commas or lines. 'IN01', 'OUT10 OUT11' "
                                        "(several), 'OUT03-OUT06' (range), 'NOT M00 OUT03-OUT06' (all but), "
                                        "'ALL' (one cell per block)."),
                io.String.Input("values", default="0.5, 1", tooltip=VALUES_TIP),
                io.String.Input("template", default="",
                                tooltip="Block weights for the blocks not targeted (a preset name or 26/20 values). "
                                        "Empty: 0 everywhere, so only the target blocks are merged."),
            ],
            outputs=_list_outputs("blocks", "Block weights text per cell, for blocks_alpha or blocks_beta."),
        )

    @classmethod
    def validate_inputs(cls, layout=None, targets="", values="", template=""):
        return settings_problems(cls, {"layout": layout, "targets": targets, "values": values, "template": template},
                                 lambda: pinpoint_blocks(targets, values, LAYOUTS[layout], template))

    @classmethod
    def execute(cls, layout, targets, values, template) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            return _cells_output(pinpoint_blocks(targets, values, LAYOUTS[layout], template))


class PinpointElements(io.ComfyNode):
    DISPLAY = "Pinpoint Elements (sweep list)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_PinpointElements", display_name=cls.DISPLAY, category=SWEEP_CATEGORY,
            description="SuperMerger's 'pinpoint element' axis: for every BLOCKS:ELEMENTS item and value, elemental "
                        "text '<base>' plus '<item>:<value>'. Outputs a list for a merge node's elemental input.",
            inputs=[
                _layout(),
                io.String.Input("targets", default="OUT03-OUT05:attn2, IN04:ff.net", multiline=True,
                                tooltip="Where: BLOCKS:ELEMENTS items (no ratio), separated by commas or lines, "
                                        "e.g. 'OUT03-OUT05:attn2', 'IN01:' (whole block), ':proj_in' (every block)."),
                io.String.Input("values", default="0, 1", tooltip=VALUES_TIP),
                io.String.Input("elemental_base", default="", multiline=True,
                                tooltip="Elemental rules every cell starts from; the pinpoint rule is appended, so "
                                        "it wins where both match."),
            ],
            outputs=_list_outputs("elemental", "Elemental text per cell, for a merge node's elemental input."),
        )

    @classmethod
    def validate_inputs(cls, layout=None, targets="", values="", elemental_base=""):
        return settings_problems(cls, {"layout": layout, "targets": targets, "values": values,
                                       "elemental_base": elemental_base},
                                 lambda: pinpoint_elements(targets, values, LAYOUTS[layout], elemental_base))

    @classmethod
    def execute(cls, layout, targets, values, elemental_base) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            return _cells_output(pinpoint_elements(targets, values, LAYOUTS[layout], elemental_base))


class RandomBlockWeights(io.ComfyNode):
    DISPLAY = "Random Block Weights (Let the Dice Roll)"
    RANDOMIZE = ("alpha", "beta", "alpha and beta")

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_RandomBlockWeights", display_name=cls.DISPLAY, category=SWEEP_CATEGORY,
            description="SuperMerger's Let the Dice Roll: random block weights from a seed, reproducible. With "
                        "count > 1 it outputs a list of draws (seeds seed, seed+1, ...), so one queue run samples "
                        "that many random merges. Wire 'seed' to the merge node's seed when E modes are used.",
            inputs=[
                _layout(),
                io.Combo.Input("mode", options=list(MODES), default="R",
                               tooltip="R: 0..1. U: -0.5..1.5 (clamped to the clamp limits). X: between 'lower' "
                                       "and 'upper'. D: 'upper' +- 'lower'/2. ER/EU/EX: block weight 0 and a random "
                                       "elemental ratio per key instead. custom: the template below."),
                io.Combo.Input("randomize", options=list(cls.RANDOMIZE), default="alpha",
                               tooltip="Which block weights to draw (beta: Triple sum, sum Twice, tensor modes)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                             tooltip="Same seed, same weights."),
                io.Int.Input("count", default=1, min=1, max=1000,
                             tooltip="Number of draws; above 1 every output is a list (seeds seed, seed+1, ...)."),
                io.Int.Input("decimals", default=3, min=0, max=10, tooltip="Rounding of the drawn values."),
                io.String.Input("custom", default=DEFAULT_CUSTOM,
                                tooltip="mode custom: one token per block (26, or 20 for SDXL): R, U, X, D, ER, EU, "
                                        "EX or a number kept as is."),
                io.String.Input("upper", default="1",
                                tooltip="X: upper limit; D: centre. One value, or one per block."),
                io.String.Input("lower", default="0",
                                tooltip="X: lower limit; D: width. One value or one per block; '0.2R0.7' uses 0.2 "
                                        "with probability 0.7, else X gives 0 and D its centre (seeded)."),
                io.String.Input("clamp_upper", default="1", tooltip="Drawn values are clamped below this."),
                io.String.Input("clamp_lower", default="0", tooltip="Drawn values are clamped above this."),
                io.String.Input("elemental_base", default="", multiline=True, optional=True,
                                tooltip="Elemental rules to keep; E modes append their random entries."),
            ],
            outputs=[
                io.String.Output(display_name="blocks_alpha", is_output_list=True,
                                 tooltip="Block weights for alpha ('' when not randomised)."),
                io.String.Output(display_name="blocks_beta", is_output_list=True,
                                 tooltip="Block weights for beta ('' when not randomised)."),
                io.String.Output(display_name="elemental", is_output_list=True,
                                 tooltip="elemental_base plus the E-mode entries."),
                io.Int.Output(display_name="seed", is_output_list=True,
                              tooltip="The seed of each draw: wire it to the merge node's seed for E modes."),
                io.String.Output(display_name="label", is_output_list=True, tooltip="'seed N', per draw."),
            ],
        )

    @classmethod
    def validate_inputs(cls, layout=None, mode=None, custom="", upper="", lower="", clamp_upper="", clamp_lower=""):
        settings = {"layout": layout, "mode": mode, "custom": custom, "upper": upper, "lower": lower,
                    "clamp_upper": clamp_upper, "clamp_lower": clamp_lower}
        return settings_problems(cls, settings, lambda: roll_many(DiceSettings(mode, custom, upper, lower, clamp_upper,
                                                                               clamp_lower, 3), LAYOUTS[layout], 0, 1))

    @classmethod
    def execute(cls, layout, mode, randomize, seed, count, decimals, custom, upper, lower, clamp_upper,
                clamp_lower, elemental_base="") -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            settings = DiceSettings(mode, custom, upper, lower, clamp_upper, clamp_lower, decimals)
            rolls = roll_many(settings, LAYOUTS[layout], seed, count, "alpha" in randomize, "beta" in randomize)
            base = elemental_base.strip() if elemental_base else ""
            elementals = ["\n".join(t for t in (base, r.elemental) if t) for r in rolls]
            return io.NodeOutput([r.alpha for r in rolls], [r.beta for r in rolls], elementals,
                                 [r.seed for r in rolls], [f"seed {r.seed}" for r in rolls])


NODES = [PinpointBlocks, PinpointElements, RandomBlockWeights]
