"""The merge node counts NaN/inf in its inputs and says so in its report (the merge itself is lazy)."""
import torch

import tiny_models

from merge_suite.nodes.merge import ModelMerge

KEY = "diffusion_model.input_blocks.1.0.in_layers.2.weight"


def test_model_merge_report_warns_about_nonfinite_inputs(tiny):
    broken = tiny_models.build_model("sd1", 5)  # a fresh model of our own, changed before any merge
    with torch.no_grad():
        broken.model.diffusion_model.input_blocks[1][0].in_layers[2].weight[0, 0, 0, :2] = float("nan")
    _merged, report, _recipe = ModelMerge.execute(model_a=tiny("model", "sd1", 1), model_b=broken,
                                                  mode="Weight sum", alpha=0.5, beta=0.0).result
    assert f"warning: non-finite values (NaN/inf) in the inputs at 1 merged keys: {KEY} (B: 2)" in report
    _merged, clean, _recipe = ModelMerge.execute(model_a=tiny("model", "sd1", 1), model_b=tiny("model", "sd1", 2),
                                                 mode="Weight sum", alpha=0.5, beta=0.0).result
    assert "non-finite" not in clean


def test_a_weight_changed_in_place_after_a_merge_is_scanned_again(tiny):
    """The node remembers a loaded weight's count between merges; an in-place change must not be missed."""
    a, b = tiny_models.build_model("sd1", 6), tiny_models.build_model("sd1", 7)
    first = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=0.5, beta=0.0).result[1]
    assert "non-finite" not in first
    with torch.no_grad():
        b.model.diffusion_model.input_blocks[1][0].in_layers[2].weight[0, 0, 0, :3] = float("inf")
    again = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=0.5, beta=0.0).result[1]
    assert f"{KEY} (B: 3)" in again
