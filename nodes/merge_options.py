"""Merge options: each fine-tuning capability of the merge nodes as a small node of its own.

A merge node keeps what every merge needs (models, mode, alpha, beta, block weights); calc mode,
elemental rules, include/exclude, Adjust and report options each come from a "Merge Option" node.
Each outputs one MERGE_OPTIONS value, a plain dict of merge settings, into the merge nodes'
optional `options` input. Option nodes take an optional `options` input themselves, so they chain;
one value can feed several merges, and a list fed into an option node (a sweep) gives a list of
option values, so one merge per element.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, Optional

from comfy_api.latest import io

from ..merge_core.errors import MergeInputError
from ..merge_core.methods.calcmodes import CALC_MODE_NAMES
from .errors import named_errors
from .merge_fields import OPTIONS, options_input
from .shared import OPTIONS_CATEGORY
from .validation import number_problems

CALC_TIP = ("How each tensor is combined. normal: the mode's formula. Weight sum only: cosineA, cosineB "
            "(similarity-weighted blend, alpha shifts toward B), tensor, tensor2 (swap slices: B fills a fraction "
            "alpha from offset beta), self (A*alpha), plus random (A + alpha*noise), slerp (spherical "
            "interpolation of A and B, norm interpolated linearly; lerp where they are parallel). Add difference "
            "only: smoothAdd (A + alpha*smoothed(B-C)), add_perpendicular (A + alpha * the part of B-C "
            "orthogonal to A-C), trainDifference and extract (both switch the mode to Add "
            "difference; extract uses beta and gamma).")


def combine(upstream: Optional[Mapping[str, Any]], own: Mapping[str, Any]) -> Mapping[str, Any]:
    """A new options value: the upstream settings plus this node's (a setting given twice is refused)."""
    upstream = dict(upstream or {})
    twice = sorted(set(upstream) & set(own))
    if twice:
        raise MergeInputError("options", f"already sets {', '.join(twice)} (from another option node).",
                              "chain each kind of Merge Option node once, or remove one of them.")
    return MappingProxyType(upstream | dict(own))


class _OptionNode(io.ComfyNode):
    """One capability's settings as a MERGE_OPTIONS value; subclasses declare their inputs."""

    NODE_ID = DISPLAY = DESCRIPTION = ""
    INPUTS: list = []  # this node's settings (the optional options input follows them)

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID, display_name=cls.DISPLAY, category=OPTIONS_CATEGORY, description=cls.DESCRIPTION,
            inputs=[*cls.INPUTS, options_input()],
            outputs=[OPTIONS.Output(display_name="options",
                                    tooltip="Connect to a merge node's options input, or to another option node.")],
        )

    @classmethod
    def execute(cls, options=None, **own) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            return io.NodeOutput(combine(options, own))


class CalcModeOption(_OptionNode):
    NODE_ID, DISPLAY = "MergeSuite_OptionCalcMode", "Merge Option: Calc Mode"
    DESCRIPTION = ("SuperMerger's calc modes (cosineA/B, tensor, tensor2, self, plus random, smoothAdd, "
                   "trainDifference, extract), plus slerp and add_perpendicular, with their parameters, "
                   "for the merge nodes' options input.")

    INPUTS = [
        io.Combo.Input("calcmode", options=CALC_MODE_NAMES, default="normal", tooltip=CALC_TIP),
        io.Float.Input("gamma", default=0.3, min=0.0, max=20.0, step=0.1,
                       tooltip="extract only: how strictly features count as similar (high: only very "
                               "similar ones)."),
        # control_after_generate=False: else the UI randomizes it
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=False,
                     tooltip="Seed of plus random's noise and of random elemental ratios (R, U, low~up, e.g. "
                             "from 'Random Block Weights'): the same seed gives the same merge."),
        io.Boolean.Input("tensor2_corrected", default=False,
                         tooltip="tensor2 only: slice dim 1 with bounds from shape[1] for every tensor. Off: "
                                 "SuperMerger's rule (shape[0] bounds when shape[1] <= 100) for exact parity."),
    ]

    @classmethod
    def validate_inputs(cls, gamma=None, seed=None) -> bool | str:
        return number_problems(cls, {"gamma": gamma, "seed": seed})


class ElementalOption(_OptionNode):
    NODE_ID, DISPLAY = "MergeSuite_OptionElemental", "Merge Option: Elemental"
    DESCRIPTION = ("SuperMerger's elemental merge: per-element alpha rules applied after block weights, with a "
                   "helper that checks the rules and lists a block's elements.")

    # the text box last, so the helper panel (added at the end) sits right under it
    INPUTS = [
        io.Boolean.Input("elemental_full_key", default=False,
                         tooltip="Match element substrings (elemental and include/exclude) against the full "
                                 "key, prefix included, as SuperMerger does (then 'ff' matches every key "
                                 "through 'diffusion'). Off: prefix stripped."),
        io.String.Input("elemental", default="", multiline=True,
                        tooltip="Per-element alpha overrides, one 'blocks:elements:ratio' entry per line or "
                                "comma, applied after block weights, last match wins. E.g. "
                                "'OUT03-OUT05:attn2:0.5', 'NOT M00:ff.net:0', 'OUT05::1' (whole block). "
                                "Elements are substrings of the key without its diffusion_model. prefix. "
                                "Random ratios: R (0..1), U (-1..1), low~up, drawn per key from the seed "
                                "(Merge Option: Calc Mode)."),
    ]


class IncludeExcludeOption(_OptionNode):
    NODE_ID, DISPLAY = "MergeSuite_OptionIncludeExclude", "Merge Option: Include/Exclude"
    DESCRIPTION = "Limit a merge to some blocks or elements, or keep A for some (SuperMerger's include/exclude)."

    INPUTS = [io.String.Input(
        "include_exclude", default="",
        tooltip="'exclude: OUT03-OUT05 VAE attn2' keeps A for those, 'include: IN01 IN02 proj_in' merges only "
                "those. Targets: block ids and ranges, element substrings, VAE, Adjust (the six Adjust keys). "
                "Excluded keys also get no Adjust.")]


class AdjustOption(_OptionNode):
    NODE_ID, DISPLAY = "MergeSuite_OptionAdjust", "Merge Option: Adjust"
    DESCRIPTION = ("SuperMerger's Adjust after merging: detail, contrast, brightness and colour (the standalone "
                   "'Adjust Model' node does the same on any model).")

    INPUTS = [io.String.Input(
        "adjust", default="",
        tooltip="8 numbers IN, OUT, OUT2 (detail/noise, about -6..6), CONT (contrast), BRI (brightness), COL1 "
                "(cyan-/red+), COL2 (magenta-/green+), COL3 (yellow-/blue+), e.g. '2,0,0,0,0,0,0,0'. Empty or "
                "all 0: off.")]


class ReportOption(_OptionNode):
    NODE_ID, DISPLAY = "MergeSuite_OptionReport", "Merge Option: Report"
    DESCRIPTION = "What the merge node's report shows."

    INPUTS = [io.Boolean.Input(
        "report_keys", default=False,
        tooltip="Add a line per key to the report: its block, whether it was merged, its alpha and beta, and "
                "the elemental rule that set it (SuperMerger's 'print change').")]


NODES = [CalcModeOption, ElementalOption, IncludeExcludeOption, AdjustOption, ReportOption]
