"""Combine Models on real ComfyUI ModelPatchers: per key the method's formula on the base weights (as the CLI
computes it, under the CLI's key names), lazy weight adapters, a TIES merge that samples through KSampler on
SD1 and SDXL with the base left intact, named errors, and a recipe that survives the file metadata round trip."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from spec_blocks import sd1_block, sdxl_block  # noqa: E402
from test_merge_nodes import SD1_NAMES, SDXL_NAMES, base_weights, effective, sample  # noqa: E402

from merge_suite.merge_core import recipe as core  # noqa: E402
from merge_suite.merge_core.combine.deltas import combine_key  # noqa: E402
from merge_suite.merge_core.combine.methods import METHODS, MethodParams  # noqa: E402
from merge_suite.merge_core.combine.params import PARAMETERS  # noqa: E402
from merge_suite.nodes.combine import CombineModels  # noqa: E402
from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.recipe_tags import get_recipe  # noqa: E402

DEFAULTS = dict(method="ties", alpha=1.0, weights="", density=0.2, drop_rate=0.9, epsilon=0.1, top=0.01,
                bottom=0.1, iterations=100, seed=0, blocks_alpha_preset="custom", blocks_alpha="")


def combine(base, models, **kw):
    inputs = dict(DEFAULTS, **kw) | {f"model_{i + 1}": m for i, m in enumerate(models)}
    return CombineModels.execute(base=base, **inputs).result


@pytest.mark.parametrize("method,layout", [(m, "sd1") for m in ("ties", "dare_ties", "della", "model_stock",
                                                                 "geometric_median", "breadcrumbs")]
                         + [("ties", "sdxl"), ("dare", "sdxl")])
def test_node_equals_the_method_per_key_under_cli_names(method, layout, tiny):
    base, *models = (tiny("model", layout, s) for s in (21, 22, 23, 24))
    names, block_of = (SD1_NAMES, sd1_block) if layout == "sd1" else (SDXL_NAMES, sdxl_block)
    wb, wm = base_weights(base, "diffusion_model."), [base_weights(m, "diffusion_model.") for m in models]
    alphas = [round(0.2 + 0.6 * i / len(names), 3) for i in range(len(names))]
    alphas[names.index("M00")] = 0.0
    weighted = "weights" in METHODS[method].uses
    merged, report, recipe = combine(base, models, method=method, blocks_alpha=",".join(map(str, alphas)),
                                     weights="1,0.5,0.75" if weighted else "", density=0.4, drop_rate=0.5, seed=7,
                                     iterations=30)
    assert f"{METHODS[method].label} of 3 models" in report and recipe.startswith(method + "(")
    strength, adapter = next(iter(merged.patches.values()))[-1][:2]  # after the base's NaN/inf observer, if any
    assert strength == 1.0 and adapter.name == "merge_suite_combine", "a lazy weight adapter, nothing computed"
    assert "diffusion_model.middle_block.1.proj_in.weight" not in merged.patches  # alpha 0: the base, untouched
    params = MethodParams(weights=(1, 0.5, 0.75) if weighted else None, density=0.4, drop_rate=0.5, seed=7,
                          iterations=30)
    got = effective(merged, "diffusion_model.")
    for k, w in got.items():
        alpha = alphas[names.index(block_of(k))]
        want = combine_key(METHODS[method], params, "model." + k, alpha, wb[k], [m[k] for m in wm]) \
            if alpha else wb[k].float()
        torch.testing.assert_close(w.float(), want.float(), rtol=1e-5, atol=1e-5, msg=k)
    after = base_weights(base, "diffusion_model.")
    assert all(torch.equal(after[k], wb[k]) for k in wb) and not base.patches


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_ties_samples_through_ksampler_and_leaves_the_base_intact(layout, tiny):
    import tiny_models
    base, *models = (tiny("model", layout, s) for s in (31, 32, 33, 34))
    clip, vae = tiny("clip", layout, 31), tiny_models.build_vae(0)
    before = base_weights(base, "diffusion_model.")
    lat_base, _ = sample(base, clip, vae)
    merged, _report, _recipe = combine(base, models, method="ties", blocks_alpha_preset="GRAD_A")
    lat, image = sample(merged, clip, vae)
    assert torch.isfinite(lat).all() and torch.isfinite(image).all() and image.shape == (1, 64, 64, 3)
    assert not torch.allclose(lat, lat_base), "the merge changed the sample"
    torch.testing.assert_close(sample(base, clip, vae)[0], lat_base)
    after = base_weights(base, "diffusion_model.")
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_recipe_round_trips_through_file_metadata(tiny):
    base, *models = (tiny("model", "sd1", s) for s in (41, 42, 43))
    merged, _, text = combine(base, models, method="dare", drop_rate=0.3, seed=5, weights="0.6,0.4")
    assert "drop_rate=0.3" in text and "seed=5" in text and "weights=0.6,0.4" in text
    tree = get_recipe(merged, "model")
    assert tree["kind"] == "combine" and len(tree["models"]) == 2
    meta = core.file_metadata(tree, None)
    assert json.loads(meta["sd_merge_recipe"])["mode"] == "combine:dare"
    trees = core.parse_file_recipe(meta)  # the checks Load Recipe runs on a file's metadata
    assert trees["model"]["settings"] == tree["settings"]
    broken = json.loads(meta["sd_merge_recipe"])
    broken["merge_suite"]["model"]["settings"]["method"] = "magic"
    with pytest.raises(Exception, match="unknown method 'magic'"):
        core.parse_file_recipe({"sd_merge_recipe": json.dumps(broken)})


@pytest.mark.parametrize("case,match", [
    ("few", r"Combine Models: input 'models': has 1 model\(s\), but TIES needs at least 2"),
    ("weights", r"Combine Models: input 'weights': has 3 value\(s\) for 2 models"),
    ("density", r"Combine Models: input 'density': is 1.5"),
    ("family", r"Combine Models: input 'model_2': is an SDXL model but model A is SD1"),
    ("options", r"Combine Models: input 'options': sets calcmode"),
])
def test_errors_name_the_input(case, match, tiny):
    base, m1, m2 = (tiny("model", "sd1", s) for s in (51, 52, 53))
    models, kw = [m1, m2], {}
    if case == "few":
        models = [m1]
    elif case == "weights":
        kw["weights"] = "1,2,3"
    elif case == "density":
        kw["density"] = 1.5
    elif case == "options":
        kw["options"] = {"calcmode": "cosineA"}
    elif case == "family":
        models = [m1, tiny("model", "sdxl", 54)]
    with pytest.raises(MergeNodeError, match=match):
        combine(base, models, **kw)


def test_method_sweep_feeds_combine_models(tiny):
    from merge_suite.nodes.sweep import SweepMethods
    methods, labels = SweepMethods.execute(values="TIES, model_stock", name="method").result
    assert methods == ["ties", "model_stock"] and labels == ["method=ties", "method=model_stock"]
    base, *models = (tiny("model", "sd1", s) for s in (61, 62, 63))
    recipes = [combine(base, models, method=m)[2] for m in methods]
    assert recipes[0].startswith("ties(") and recipes[1].startswith("model_stock(")
    with pytest.raises(MergeNodeError, match=r"'magic' is not an n-model method"):
        SweepMethods.execute(values="ties, magic", name="")


def test_combine_clip_uses_the_base_block(tiny):
    from merge_suite.merge_core.plan import is_mergeable_name
    from merge_suite.nodes.combine import CombineCLIP
    base, *clips = (tiny("clip", "sd1", s) for s in (71, 72, 73))
    wb, wc = base_weights(base), [base_weights(c) for c in clips]
    inputs = dict(DEFAULTS, method="ties", density=0.5, blocks_alpha="0.6" + ",0" * 25)
    merged, report, recipe = CombineCLIP.execute(base=base, clip_1=clips[0], clip_2=clips[1], **inputs).result
    assert recipe.startswith("ties(") and "TIES of 2 models" in report
    got, merged_keys = effective(merged), 0
    for key, w in got.items():
        if not is_mergeable_name(key):
            torch.testing.assert_close(w, wb[key].float())
            continue
        want = combine_key(METHODS["ties"], MethodParams(density=0.5), key, 0.6, wb[key], [c[key] for c in wc])
        torch.testing.assert_close(w.float(), want, rtol=1e-5, atol=1e-5, msg=key)
        merged_keys += 1
    assert merged_keys > 40


# The node's inputs as saved workflows and API prompts name them (widget values by position, then the sockets):
# the frontend hides the inputs a method does not read, so this list must never change.
# The first release's inputs, in the order saved workflows hold their widget values; the parameters added later
# come after median_epsilon, in their table's order (optional: prompts saved before them lack them).
LATER = [p.name for p in PARAMETERS if p.late and p.name != "median_epsilon"]
SAVED_INPUTS = ["base", "method", "alpha", "weights", "density", "drop_rate", "epsilon", "top", "bottom",
                "iterations", "seed", "blocks_alpha_preset", "blocks_alpha", "median_epsilon", *LATER, "options"]
ALWAYS_SHOWN = ["method", "alpha", "blocks_alpha_preset", "blocks_alpha"]


@pytest.mark.parametrize("node_id", ["CombineModels", "CombineCLIP"])
def test_method_spec_names_the_inputs_each_method_reads_and_the_inputs_stay(node_id):
    """The method input's spec tells the frontend which inputs each method reads (web/js/method_inputs.js
    hides the others): every one is an input of the node, the union is every method-specific widget, each
    method shows at most 10 widgets, and the node keeps all its inputs in the order saved workflows hold."""
    from merge_suite.nodes import combine as node
    cls = getattr(node, node_id)
    info = cls.GET_NODE_INFO_V1()
    kind = cls.KIND
    optional = len(LATER) + 2
    assert info["input_order"]["required"] == SAVED_INPUTS[:-optional] + [f"{kind}_1"]
    assert info["input_order"]["optional"] == SAVED_INPUTS[-optional:] + [f"{kind}_{i}" for i in range(2, 9)]
    spec = info["input"]["required"]["method"][1]
    shows = spec[node.METHOD_INPUTS_KEY]
    assert sorted(shows) == sorted(METHODS)
    specific = {n for n in SAVED_INPUTS if n not in ALWAYS_SHOWN + ["base", "options"]}
    assert set().union(*map(set, shows.values())) == specific
    counts = {m: len(ALWAYS_SHOWN) + len(inputs) for m, inputs in shows.items()}
    assert max(counts.values()) <= 10, counts
    assert shows["ties"] == ["weights", "density"] and shows["model_stock"] == []
    assert shows["geometric_median"] == ["weights", "median_epsilon", "iterations"]
    assert shows["della"] == ["weights", "drop_rate", "epsilon", "seed"]


def other_value(row):
    """A valid value of a parameter other than its default."""
    if row.choices:
        return row.choices[-1] if row.default != row.choices[-1] else row.choices[0]
    if row.kind is int:
        return row.default + 1
    return row.default / 2 if row.default else 0.5


@pytest.mark.parametrize("method", list(METHODS))
def test_inputs_hidden_for_a_method_do_not_change_its_result(method, tiny):
    """What the frontend hides for a method is what the method does not read: other values there give the
    same weights (a workflow saved with any values in them runs as before)."""
    from merge_suite.nodes.combine import method_inputs
    count = min(2, METHODS[method].max_models or 2)
    base, *models = (tiny("model", "sd1", s) for s in (81, 82, 83)[:count + 1])
    shown = set(method_inputs()[method])
    other = {"density": 0.7, "drop_rate": 0.3, "epsilon": 0.2, "top": 0.2, "bottom": 0.3, "iterations": 3,
             "seed": 11, "median_epsilon": 0.5} | {p.name: other_value(p) for p in PARAMETERS if p.name in LATER}
    kw = {"weights": "1,0.5"[:1 + 2 * (count - 1)]} if "weights" in shown else {}
    block = "diffusion_model.input_blocks.1."  # a ResBlock and a transformer: convs, linears, norms, biases
    first = effective(combine(base, models, method=method, **kw)[0], block)
    hidden = {k: v for k, v in other.items() if k not in shown}
    second = effective(combine(base, models, method=method, **kw, **hidden)[0], block)
    assert len(first) > 20 and any(w.dim() == 4 for w in first.values()) and any(w.dim() == 1 for w in first.values())
    assert all(torch.equal(first[k], second[k]) for k in first), hidden
