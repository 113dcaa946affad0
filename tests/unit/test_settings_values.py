"""Settings-layer checks: every entry point refuses NaN, infinities and overflowing values."""
import json
import math

import pytest
import torch

from merge_core.methods.adjust import Adjust, parse_adjust
from merge_core.api import make_settings, merge_state_dicts
from merge_core.architectures import SD1
from merge_core.errors import MergeInputError
from merge_core.lora.operations import check_svd_settings
from merge_core.lora.blocks import block_values, parse_lora_list
from merge_core.plan import build_plan
from merge_core.recipe import MAX_STEPS, parse_file_recipe

NAN, INF = float("nan"), float("inf")


def refused(fn, *fragments):
    with pytest.raises(MergeInputError) as info:
        fn()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


@pytest.mark.parametrize("name,value,fragment", [("alpha", NAN, "not finite"), ("alpha", INF, "not finite"),
                                                 ("beta", -INF, "not finite"), ("gamma", NAN, "not finite"),
                                                 ("alpha", 1e308, "overflow")])
def test_make_settings_refuses_non_finite_and_huge(name, value, fragment):
    assert refused(lambda: make_settings(SD1, "Weight sum", **{name: value}), fragment).input_name == name


def test_library_merge_refuses_nan_alpha_and_keeps_inputs(sd1_keys):
    a = {k: torch.ones(2) for k in list(sd1_keys)[:50]}
    b = {k: torch.zeros(2) for k in a}
    refused(lambda: merge_state_dicts(a, b, alpha=NAN), "'alpha'", "not finite")
    assert all(torch.equal(t, torch.ones(2)) for t in a.values())


def test_adjust_every_entry_point():
    refused(lambda: parse_adjust("nan,0,0,0,0,0,0,0"), "IN is nan")
    refused(lambda: parse_adjust("0,0,0,0,0,0,0,1e308"), "COL3", "overflow")
    refused(lambda: Adjust((0.0,) * 7 + (INF,)), "COL3 is inf")


def test_lora_ratios_blocks_ranks_and_clamps():
    refused(lambda: parse_lora_list("a:nan"), "LoRA 'a': ratio is nan")
    refused(lambda: block_values("", INF, SD1, {}, "strength_model"), "strength")
    refused(lambda: block_values(",".join(["1"] * 16 + ["nan"]), 1.0, SD1, {}), "value #17")
    refused(lambda: check_svd_settings(-1, None), "'rank'")
    refused(lambda: check_svd_settings(0, None, min_rank=1), "'rank'")
    refused(lambda: check_svd_settings(4, None, conv_rank=-2), "'conv_rank'")
    for q in (NAN, 1.5, -0.1):
        refused(lambda q=q: check_svd_settings(4, q), "'clamp_quantile'")
    check_svd_settings(0, None)
    check_svd_settings(4, 0.99, conv_rank=0)


def test_include_exclude_target_that_selects_nothing(sd1_keys):
    shapes = {k: (2, 3) for k in sd1_keys}
    for text, bad in (("include: 💥", "💥"), ("exclude: OUT03 nothing_here", "nothing_here"),
                      ("include: VAE", None)):
        settings = make_settings(SD1, "Weight sum", include_exclude=text)
        if bad is None:
            assert build_plan(SD1, settings, shapes, shapes).count("merge") > 0
        else:
            err = refused(lambda settings=settings: build_plan(SD1, settings, shapes, shapes),
                          f"target '{bad}' selects no key")
            assert "VAE, Adjust" in err.fix
    unet_only = {k: s for k, s in shapes.items() if k.startswith("model.diffusion_model.")}
    refused(lambda: build_plan(SD1, make_settings(SD1, "Weight sum", include_exclude="include: VAE"),
                               unet_only, unet_only), "target 'VAE'")


def _meta(model):
    return {"sd_merge_recipe": json.dumps({"merge_suite": {"model": model, "clip": None}})}


def _step(settings, a=None):
    return {"kind": "model", "settings": {"mode": "Weight sum"} | settings,
            "a": a or {"file": "a.safetensors", "sha256": ""}, "b": {"file": "b.safetensors", "sha256": ""}}


def test_recipe_metadata_is_validated_naming_file_and_field():
    refused(lambda: parse_file_recipe(_meta(_step({"alpha": NAN})), "ckpt_name", "x.safetensors"),
            "'x.safetensors': recipe field 'merge_suite.model.settings.alpha'", "not finite")
    refused(lambda: parse_file_recipe(_meta(_step({"mode": "nope"})), "ckpt_name", "x"), "settings.mode'")
    refused(lambda: parse_file_recipe(_meta(_step({"alpha": "0.5"})), "ckpt_name", "x"), "not a number")
    refused(lambda: parse_file_recipe(_meta(_step({"blocks_alpha": "1," * 20000})), "ckpt_name", "x"), "characters")
    node = {"file": "a.safetensors"}
    for _ in range(MAX_STEPS + 1):
        node = _step({}, node)
    refused(lambda: parse_file_recipe(_meta(node), "ckpt_name", "x"), f"at most {MAX_STEPS}")
    refused(lambda: parse_file_recipe({"sd_merge_recipe": json.dumps({"base_alpha": "abc"})}, "ckpt_name", "x"),
            "'base_alpha'")
    refused(lambda: parse_file_recipe({"sd_merge_recipe": "[" * 100000}, "ckpt_name", "x"), "unreadable")
    good = parse_file_recipe(_meta(_step({"alpha": 0.4})), "ckpt_name", "x")
    assert math.isclose(good["model"]["settings"]["alpha"], 0.4)

