"""Standalone Adjust node: SuperMerger's detail / contrast / colour tweak on any MODEL, as lazy patches."""
from __future__ import annotations

from comfy_api.latest import io

from ..merge_core.errors import require_ratio
from ..merge_core.methods.adjust import Adjust, require_adjustable
from .comfy_models import add_adjust_patches, architecture_of, base_layout
from .errors import named_errors
from .shared import CATEGORY
from .validation import settings_problems

KNOBS = [
    ("IN", -6.0, 6.0, "Detail/noise at the input conv: positive = more detail (and noise)."),
    ("OUT", -6.0, 6.0, "Detail/noise at the final norm."),
    ("OUT2", -6.0, 6.0, "Detail/noise at the output conv."),
    ("CONT", -10.0, 10.0, "Contrast."),
    ("BRI", -10.0, 10.0, "Brightness."),
    ("COL1", -10.0, 10.0, "Cyan (-) / red (+)."),
    ("COL2", -10.0, 10.0, "Magenta (-) / green (+)."),
    ("COL3", -10.0, 10.0, "Yellow (-) / blue (+)."),
]


class AdjustModel(io.ComfyNode):
    DISPLAY = "Adjust Model (detail, contrast, colour)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_Adjust", display_name=cls.DISPLAY, category=CATEGORY,
            description="SuperMerger's Adjust: scales the input conv, the final norm and the output conv, and "
                        "shifts the output bias, for more or less detail, contrast, brightness and colour casts. "
                        "Values around +-5 are safe. Lazy: nothing is copied.",
            inputs=[io.Model.Input("model", tooltip="The model to adjust (merged or not); it is not modified.")] + [
                io.Float.Input(name, default=0.0, min=lo, max=hi, step=0.1, tooltip=tip)
                for name, lo, hi, tip in KNOBS],
            outputs=[io.Model.Output(display_name="MODEL")],
        )

    @classmethod
    def validate_inputs(cls, IN=0.0, OUT=0.0, OUT2=0.0, CONT=0.0, BRI=0.0, COL1=0.0, COL2=0.0, COL3=0.0):
        return settings_problems(cls, dict(IN=IN, OUT=OUT, OUT2=OUT2, CONT=CONT, BRI=BRI, COL1=COL1, COL2=COL2,
                                           COL3=COL3))

    @classmethod
    def execute(cls, model, **knobs) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            values = tuple(require_ratio(name, knobs.get(name, 0.0)) for name, *_ in KNOBS)
            shapes, _ = base_layout(model, "model")
            arch = architecture_of(shapes, "model")
            adjust = require_adjustable(Adjust(values) if any(values) else None, arch, "model")
            out = model.clone()
            if adjust is None:
                return io.NodeOutput(out)
            add_adjust_patches(out, [(k, op) for k in shapes if (op := adjust.op(k, arch)) is not None])
            return io.NodeOutput(out)


NODES = [AdjustModel]
