"""Merge nodes: SuperMerger's four merge modes with block weights, on MODEL and CLIP.

alpha is the weight of model B (0 gives A, 1 gives B), as in SuperMerger; ComfyUI's
own ModelMergeSimple uses the reverse. Results are lazy clones of A: nothing is
computed or copied until a sampler loads the model.
"""
from __future__ import annotations

from comfy_api.latest import io

from ..merge_core.plan import require_targets, target_keys
from ..merge_core.report import applied_report
from .errors import named_errors
from .history_log import record_merge
from .merge_fields import RECIPE_TIP, REPORT_TIP, alpha_beta_problems, merge_params, settings_inputs
from .object_merge import merge_objects, plan_objects, shared_cosine_statistics, tag_recipe
from .search import search_fields
from .shared import CATEGORY, node_label
from .ui import merge_ui


class _PairMerge(io.ComfyNode):
    """Shared shape of the MODEL and CLIP merge nodes; subclasses only declare data."""

    KIND = ""
    IO = io.Model
    NODE_ID = DISPLAY = DESCRIPTION = ""
    TIPS = {"a": "", "b": "", "c": ""}

    @classmethod
    def define_schema(cls):
        k = cls.KIND
        return io.Schema(
            node_id=cls.NODE_ID, display_name=cls.DISPLAY, category=CATEGORY, description=cls.DESCRIPTION,
            inputs=[cls.IO.Input(f"{k}_a", tooltip=cls.TIPS["a"]), cls.IO.Input(f"{k}_b", tooltip=cls.TIPS["b"]),
                    *settings_inputs(), cls.IO.Input(f"{k}_c", optional=True, tooltip=cls.TIPS["c"])],
            outputs=[cls.IO.Output(display_name=k.upper()),
                     io.String.Output(display_name="report", tooltip=REPORT_TIP),
                     io.String.Output(display_name="recipe", tooltip=RECIPE_TIP)],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id], **search_fields(cls.NODE_ID),
        )

    @classmethod
    def validate_inputs(cls, alpha=None, beta=None) -> bool | str:
        return alpha_beta_problems(cls, alpha, beta)

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        k = cls.KIND
        a, b, c = inputs.pop(f"{k}_a"), inputs.pop(f"{k}_b"), inputs.pop(f"{k}_c", None)
        inputs, per_key = merge_params(inputs)
        with named_errors(cls.DISPLAY):
            merged, plan = merge_objects(k, a, b, c, inputs, node=node_label(cls, cls.DISPLAY))
            recipe = tag_recipe(k, merged, plan, inputs, {"a": a, "b": b, "c": c}, getattr(cls, "hidden", None))
            report = applied_report(plan, per_key)
            record_merge(cls.DISPLAY, {k: merged})
            return io.NodeOutput(merged, report, recipe, ui=merge_ui(report, recipe, plan.arch))


class ModelMerge(_PairMerge):
    KIND, IO = "model", io.Model
    NODE_ID, DISPLAY = "MergeSuite_ModelMerge", "Merge Models"
    DESCRIPTION = ("Merge two or three diffusion models with SuperMerger's merge modes and per-block weights. "
                   "alpha = weight of B. The result is a lazy patch of A: no weights are copied.")
    TIPS = {"a": "Model A: the base. The result keeps its sampling settings.", "b": "Model B.",
            "c": "Model C: required by Add difference, Triple sum and sum Twice."}


class CLIPMerge(_PairMerge):
    KIND, IO = "clip", io.Clip
    NODE_ID, DISPLAY = "MergeSuite_CLIPMerge", "Merge CLIP"
    DESCRIPTION = ("Merge two or three text encoders with SuperMerger's merge modes. The text encoder is "
                   "SuperMerger's BASE block: block weights contribute their first (BASE) value. alpha = weight of B.")
    TIPS = {"a": "CLIP A: the base.", "b": "CLIP B.",
            "c": "CLIP C: required by Add difference, Triple sum and sum Twice."}


class CheckpointMerge(io.ComfyNode):
    DISPLAY = "Merge Checkpoints"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_CheckpointMerge", display_name=cls.DISPLAY, category=CATEGORY,
            description="Merge MODEL and CLIP of two or three checkpoints in one node, as SuperMerger does: "
                        "the U-Net by block, the text encoder with the BASE ratio. alpha = weight of B.",
            inputs=[io.Model.Input("model_a", tooltip="Model A: the base."), io.Clip.Input("clip_a", tooltip="CLIP A."),
                    io.Model.Input("model_b", tooltip="Model B."), io.Clip.Input("clip_b", tooltip="CLIP B."),
                    *settings_inputs(),
                    io.Model.Input("model_c", optional=True,
                                   tooltip="Required by Add difference, Triple sum, sum Twice."),
                    io.Clip.Input("clip_c", optional=True,
                                  tooltip="Required by Add difference, Triple sum, sum Twice.")],
            outputs=[io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP"),
                     io.String.Output(display_name="report", tooltip=REPORT_TIP),
                     io.String.Output(display_name="recipe", tooltip=RECIPE_TIP)],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id], **search_fields("MergeSuite_CheckpointMerge"),
        )

    @classmethod
    def validate_inputs(cls, alpha=None, beta=None) -> bool | str:
        return alpha_beta_problems(cls, alpha, beta)

    @classmethod
    def execute(cls, model_a, clip_a, model_b, clip_b, model_c=None, clip_c=None, **inputs) -> io.NodeOutput:
        params, per_key = merge_params(inputs)
        with named_errors(cls.DISPLAY):
            planned = {"model": plan_objects("model", model_a, model_b, model_c, params, check_targets=False)}
            planned["clip"] = plan_objects("clip", clip_a, clip_b, clip_c, params, like=planned["model"][0].arch,
                                           check_targets=False)
            # include/exclude targets and elemental rules select keys of the U-Net or of the text encoder
            require_targets(planned["model"][0].arch, planned["model"][0].settings,
                            [pair for k in ("model", "clip") for pair in
                             target_keys(planned[k][0].arch, [kp.key for kp in planned[k][0].keys])])
            stats = None
            if planned["model"][0].settings.calc is not None and planned["model"][0].settings.calc.needs_stats:
                stats = shared_cosine_statistics([(planned[k][0], a, k, planned[k][1])
                                                  for k, a in (("model", model_a), ("clip", clip_a))])
            model, model_plan = merge_objects("model", model_a, model_b, model_c, params, planned["model"], stats,
                                              node_label(cls, cls.DISPLAY + " (MODEL)"))
            clip, clip_plan = merge_objects("clip", clip_a, clip_b, clip_c, params, planned["clip"], stats,
                                            node_label(cls, cls.DISPLAY + " (CLIP)"))
            report = (applied_report(model_plan, per_key) + "\n\ntext encoder:\n"
                      + applied_report(clip_plan, per_key))
            hidden = getattr(cls, "hidden", None)
            recipe = tag_recipe("model", model, model_plan, params, {"a": model_a, "b": model_b, "c": model_c},
                                hidden, "checkpoint")
            tag_recipe("clip", clip, clip_plan, params, {"a": clip_a, "b": clip_b, "c": clip_c}, hidden, "checkpoint")
            record_merge(cls.DISPLAY, {"model": model, "clip": clip})
            return io.NodeOutput(model, clip, report, recipe, ui=merge_ui(report, recipe, model_plan.arch))


NODES = [ModelMerge, CLIPMerge, CheckpointMerge]
