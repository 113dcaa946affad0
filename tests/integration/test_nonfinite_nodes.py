"""NaN/inf in a merge node's inputs: the node reads no weight when it runs (the merge is lazy), the inputs are
counted when ComfyUI loads the merged model, and a console warning names the keys and counts then."""
import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import comfy.model_management
import tiny_models

from merge_suite.nodes.combine import CombineModels
from merge_suite.nodes.merge import ModelMerge

KEY = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
PENDING = "NaN/inf check: the inputs of"
WARNING = "warning: non-finite values (NaN/inf) in the inputs at 1 merged keys: "
SCALAR = {"mode": "Weight sum", "alpha": 0.5, "beta": 0.0}


def broken(seed: int, count: int = 2, value: float = float("nan")):
    """A fresh tiny SD1 model of our own (never shared with other tests) with `count` bad values at KEY."""
    model = tiny_models.build_model("sd1", seed)
    with torch.no_grad():
        model.model.diffusion_model.input_blocks[1][0].in_layers[2].weight[0, 0, 0, :count] = value
    return model


def merge(a, b, **settings):
    return ModelMerge.execute(model_a=a, model_b=b, **(settings or SCALAR)).result[:2]


def load_for_sampling(model):
    """Load the merged model as a sampler does (patches applied), then unload it."""
    comfy.model_management.load_models_gpu([model])
    comfy.model_management.unload_all_models()


def warnings_of(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


class WeightReads(TorchDispatchMode):
    """Every torch op that reads one of the given tensors' data (views and detach only alias it)."""
    ALIASING = {"detach", "alias", "view", "t", "slice", "select", "narrow", "as_strided", "_reshape_alias",
                "expand", "unsqueeze", "squeeze"}

    def __init__(self, tensors):
        super().__init__()
        self.pointers = {t.untyped_storage().data_ptr() for t in tensors}
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in self.ALIASING:
            for arg in list(args) + list((kwargs or {}).values()):
                if isinstance(arg, torch.Tensor) and arg.untyped_storage().data_ptr() in self.pointers:
                    self.reads.append(name)
        return func(*args, **(kwargs or {}))


def test_the_node_reads_no_weight_and_says_when_the_check_runs(caplog):
    a, b = tiny_models.build_model("sd1", 5), broken(6)
    weights = [t for m in (a, b) for t in m.model.diffusion_model.state_dict(keep_vars=True).values()]
    with WeightReads(weights) as reads:
        merged, report = merge(a, b)
    assert reads.reads == [], f"the node read input weights: {sorted(set(reads.reads))}"
    assert PENDING in report and "non-finite" not in report
    assert "non-finite" not in warnings_of(caplog)


@pytest.mark.parametrize("where", ["A", "B"])
def test_a_nan_in_either_input_is_reported_when_the_model_loads(caplog, where):
    clean, bad = tiny_models.build_model("sd1", 7), broken(8)
    a, b = (bad, clean) if where == "A" else (clean, bad)
    merged, _report = merge(a, b)
    caplog.set_level(logging.INFO)
    load_for_sampling(merged)
    assert f"Merge Models: {WARNING}{KEY} ({where}: 2)" in warnings_of(caplog)


def test_a_clean_merge_says_all_finite_at_load_and_warns_nothing(caplog):
    merged, _report = merge(tiny_models.build_model("sd1", 9), tiny_models.build_model("sd1", 10))
    caplog.set_level(logging.INFO)
    merged.patch_model()
    merged.unpatch_model()
    assert "all values finite" in caplog.text and "non-finite" not in caplog.text


def test_counts_seen_at_load_are_in_the_next_report_and_an_in_place_change_is_checked_again(caplog):
    a, b = tiny_models.build_model("sd1", 11), broken(12)
    merged, report = merge(a, b)
    load_for_sampling(merged)
    _merged, again = merge(a, b)  # a sweep or a re-queued graph: the same loaded weights
    assert f"{WARNING}{KEY} (B: 2)" in again and PENDING not in again
    with torch.no_grad():
        b.model.diffusion_model.input_blocks[1][0].in_layers[2].weight[0, 0, 0, :3] = float("inf")
    merged, changed = merge(a, b)
    assert PENDING in changed, "a weight changed in place must not keep its old count"
    caplog.clear()
    load_for_sampling(merged)
    assert f"{KEY} (B: 3)" in warnings_of(caplog)


def test_merged_values_are_unchanged_by_the_check():
    """Weight sum through the observed patches loads exactly as ComfyUI's ModelMergeSimple (its own nested
    patches, no observer) at the same ratio, NaN included."""
    from comfy_extras.nodes_model_merging import ModelMergeSimple
    a, b = broken(13, 1), tiny_models.build_model("sd1", 14)
    merged, _report = merge(a, b)
    reference = ModelMergeSimple().merge(a, b, 0.5)[0]
    loaded = []
    for model in (merged, reference):
        model.patch_model()
        loaded.append({k: v.clone() for k, v in model.model.state_dict().items() if k in reference.patches})
        model.unpatch_model()
    assert KEY in loaded[0] and len(loaded[0]) == len(loaded[1]) > 100
    for key, want in loaded[1].items():
        torch.testing.assert_close(loaded[0][key], want, rtol=0, atol=0, equal_nan=True)


def test_calc_mode_and_combine_inputs_are_checked_at_load(caplog):
    a, b = tiny_models.build_model("sd1", 15), broken(16, 3, float("inf"))
    merged, report = merge(a, b, mode="Weight sum", alpha=0.5, beta=0.0, options={"calcmode": "slerp"})
    load_for_sampling(merged)
    assert f"{KEY} (B: 3)" in warnings_of(caplog)
    caplog.clear()
    combined, report = CombineModels.execute(
        base=tiny_models.build_model("sd1", 17), model_1=tiny_models.build_model("sd1", 18), model_2=broken(19, 2),
        method="task_arithmetic", alpha=1.0, weights="", density=0.2, drop_rate=0.9, epsilon=0.1, top=0.01,
        bottom=0.1, iterations=100, seed=0, blocks_alpha_preset="custom", blocks_alpha="").result[:2]
    assert PENDING in report
    load_for_sampling(combined)
    assert f"Combine Models: {WARNING}{KEY} (M2: 2)" in warnings_of(caplog)


# --- a merged result that its finite inputs do not explain ----------------------------------------------

def half(seed: int, value=None):
    """A tiny SD1 model with float16 layers (ComfyUI rounds a merged weight into them at load); KEY filled."""
    model = tiny_models.build_model("sd1", seed)
    model.model.diffusion_model.half()
    if value is not None:
        with torch.no_grad():
            model.model.diffusion_model.input_blocks[1][0].in_layers[2].weight.fill_(value)
    return model


def combined(base, models, **settings):
    inputs = dict(method="task_arithmetic", alpha=1.0, weights="", density=0.2, drop_rate=0.9, epsilon=0.1,
                  top=0.01, bottom=0.1, iterations=100, seed=0, blocks_alpha_preset="custom", blocks_alpha="")
    return CombineModels.execute(base=base, **(inputs | settings),
                                 **{f"model_{i + 1}": m for i, m in enumerate(models)}).result[0]


def test_a_combine_result_beyond_the_layers_dtype_stops_the_load_naming_key_and_method():
    from merge_suite.nodes.errors import MergeNodeError
    from merge_suite.nodes.save import SaveCheckpoint
    base, m = half(31, 0.0), half(32, 100.0)
    merged = combined(base, [m, m], weights="1000,1000")  # 2e5 at KEY: beyond float16
    with pytest.raises(MergeNodeError) as info:
        load_for_sampling(merged)
    text = str(info.value)
    assert text.startswith("Combine Models") and "input 'method'" in text and "task_arithmetic" in text
    assert f"'{KEY}'" in text and "float16" in text and "\n" not in text
    comfy.model_management.unload_all_models()
    from pathlib import Path

    import folder_paths
    folder = Path(folder_paths.get_folder_paths("checkpoints")[0]) / "nonfinite_result"
    with pytest.raises(MergeNodeError, match="task_arithmetic"):
        SaveCheckpoint.execute(merged, filename_prefix="nonfinite_result/x", precision="fp16")
    assert not folder.exists() or not any(folder.iterdir())
    # within range the same merge loads, and its value is the formula's
    fine = combined(base, [m, m], weights="100,100")
    comfy.model_management.load_models_gpu([fine])
    assert float(fine.model.diffusion_model.input_blocks[1][0].in_layers[2].weight.float().max()) == 20000.0
    comfy.model_management.unload_all_models()


def test_a_linear_merge_beyond_the_layers_dtype_stops_the_load_and_a_weight_sum_adds_no_check():
    from merge_suite.nodes.errors import MergeNodeError
    from merge_suite.nodes.nonfinite_watch import CHECK_NAME
    a, b = half(33, 0.0), half(34, 100.0)
    merged, _ = merge(a, b, mode="Weight sum", alpha=1000.0, beta=0.0)
    assert getattr(merged.patches[KEY][-1][1], "name", None) == CHECK_NAME
    with pytest.raises(MergeNodeError) as info:
        load_for_sampling(merged)
    assert "Merge Models" in str(info.value) and "weight_sum" in str(info.value) and KEY in str(info.value)
    comfy.model_management.unload_all_models()
    plain, _ = merge(a, b, mode="Weight sum", alpha=0.5, beta=0.0)
    assert not any(getattr(p[1], "name", None) == CHECK_NAME for patches in plain.patches.values() for p in patches)


def test_nan_inputs_still_load_as_the_formula_says_with_the_result_check_in_place(caplog):
    a, b = half(35, 0.0), broken(36, 2)
    b.model.diffusion_model.half()
    from merge_suite.nodes.nonfinite_watch import CHECK_NAME
    merged, _ = merge(a, b, mode="Weight sum", alpha=2.0, beta=0.0)
    assert getattr(merged.patches[KEY][-1][1], "name", None) == CHECK_NAME  # alpha 2: the result is checked
    load_for_sampling(merged)  # the NaN of B explains the NaN of the result: warned, not refused
    assert f"{KEY} (B: 2)" in warnings_of(caplog)


def test_smooth_add_and_adjust_results_are_checked_at_load():
    """smoothAdd's delta is computed when the node runs and added as a plain diff, and Adjust is a scale after
    the merge: neither is an adapter that checks itself, so a check follows them; a result beyond float16 from
    finite inputs stops the load naming the key and the calc mode (or Adjust)."""
    from merge_suite.nodes.errors import MergeNodeError
    from merge_suite.nodes.nonfinite_watch import CHECK_NAME
    a, b, c = half(37, 0.0), half(38, 100.0), half(39, -100.0)
    merged = ModelMerge.execute(model_a=a, model_b=b, model_c=c, mode="Add difference", alpha=1000.0, beta=0.0,
                                options={"calcmode": "smoothAdd"}).result[0]
    assert getattr(merged.patches[KEY][-1][1], "name", None) == CHECK_NAME
    with pytest.raises(MergeNodeError) as info:
        load_for_sampling(merged)
    text = str(info.value)
    assert "Merge Models" in text and "input 'calcmode'" in text and "smoothAdd" in text and KEY in text
    comfy.model_management.unload_all_models()
    out_bias = "diffusion_model.out.2.bias"
    big = half(40)
    with torch.no_grad():
        big.model.diffusion_model.out[2].bias.fill_(65500.0)  # finite in float16; Adjust's shift takes it over
    adjusted = ModelMerge.execute(model_a=big, model_b=big, mode="Weight sum", alpha=0.5, beta=0.0,
                                  options={"adjust": "0,0,0,1000,1000,0,0,0"}).result[0]
    assert getattr(adjusted.patches[out_bias][-1][1], "name", None) == CHECK_NAME
    with pytest.raises(MergeNodeError, match=r"input 'adjust'.*adjust gives NaN/inf values at key "
                                             r"'diffusion_model.out.2.bias'.*Adjust values closer to 0"):
        load_for_sampling(adjusted)
    comfy.model_management.unload_all_models()
    fine = ModelMerge.execute(model_a=big, model_b=big, mode="Weight sum", alpha=0.5, beta=0.0,
                              options={"adjust": "0,0,0,1,1,0,0,0"}).result[0]
    load_for_sampling(fine)  # in range: loads
