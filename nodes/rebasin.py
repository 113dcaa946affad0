"""Re-basin Model: model B's hidden units permuted to line up with model A's (weight matching), before a merge.

Thin: merge_core.rebasin finds the permutations from both models' effective weights (read one key at a time).
The result is a lazy clone of B: each permuted key gets a weight adapter that reorders B's effective weight
when ComfyUI loads the model, so nothing is copied. The head counts come from the model's own attention
layers (a file does not say them; the CLI assumes the released models').
"""
from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..merge_core.rebasin import rebasin_loaders
from ..merge_core.rebasin.api import MAX_ITERATIONS
from .comfy_models import UNET_PREFIX, effective_weight, key_patches, lazy_adapter, shapes_of
from .errors import named_errors
from .shared import CATEGORY, progress_bar
from .ui import text_ui

DEFAULT_ITERATIONS = 10


def attention_heads(model: Any) -> dict[str, int]:
    """{attention layer's U-Net-relative name: heads} of a MODEL's diffusion model."""
    unet = model.model.diffusion_model
    return {name: int(module.heads) for name, module in unet.named_modules()
            if hasattr(module, "heads") and hasattr(module, "to_q")}


def permute_adapter(result, rel_key: str):
    """A weight adapter that reorders B's weight (after B's own patches) as the matching found."""
    return lazy_adapter("merge_suite_rebasin", lambda weight: result.permute(rel_key, weight))


def rebasin_models(model_a: Any, model_b: Any, iterations: int, seed: int, progress=None):
    """(B's lazy permuted clone, the library's result)."""
    import comfy.model_management
    device = comfy.model_management.get_torch_device()
    pa, pb = key_patches(model_a, "model", "model_a"), key_patches(model_b, "model", "model_b")
    result = rebasin_loaders(shapes_of(pa), shapes_of(pb), lambda k: effective_weight(pa[k], device),
                             lambda k: effective_weight(pb[k], device), iterations=iterations, seed=seed,
                             heads=attention_heads(model_b), progress=progress)
    out = model_b.clone()
    patches = {UNET_PREFIX + rel: permute_adapter(result, rel) for rel in sorted(result.perms.moved_keys())}
    accepted = out.add_patches(patches, 1.0, 1.0)
    if len(accepted) != len(patches):
        raise RuntimeError(f"ComfyUI refused {len(patches) - len(accepted)} re-basin patches")
    return out, result


class RebasinModel(io.ComfyNode):
    DISPLAY = "Re-basin Model"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_RebasinModel", display_name=cls.DISPLAY, category=CATEGORY,
            description="Git Re-Basin weight matching: reorders model B's hidden units (ResBlock channels within "
                        "their GroupNorm groups, attention heads and head dims, feed-forward and embedding units) to "
                        "line up with model A's. B computes exactly the same; a merge of A and the result then "
                        "averages matching units. SD1 and SDXL U-Nets. Lazy: nothing is copied.",
            inputs=[io.Model.Input("model_a", tooltip="The reference: B is reordered to match it (A is unchanged)."),
                    io.Model.Input("model_b", tooltip="The model to reorder (same family and size as A); it is not "
                                                      "modified."),
                    io.Int.Input("iterations", default=DEFAULT_ITERATIONS, min=1, max=MAX_ITERATIONS,
                                 tooltip="Rounds of coordinate descent at most; it stops when a round changes "
                                         "nothing (one round for SD1/SDXL, whose groups share no weight)."),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=False,
                                 tooltip="Seed of the order in which the groups are solved.")],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="Model B, reordered (a lazy patch)."),
                     io.String.Output(display_name="report", tooltip="Permutation groups, rounds run and the "
                                                                     "similarity of A and B before and after.")],
        )

    @classmethod
    def execute(cls, model_a, model_b, iterations=DEFAULT_ITERATIONS, seed=0) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            out, result = rebasin_models(model_a, model_b, iterations, seed, progress_bar(1))
            report = result.report()
            return io.NodeOutput(out, report, ui=text_ui(report))


NODES = [RebasinModel]
