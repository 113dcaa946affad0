"""merge_state_dicts / merge_files on real key names: ratios per block equal the spec's formula."""
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from spec_blocks import sd1_block, sdxl_block
from test_methods import FORMULAS

from merge_core import merge_files, merge_state_dicts
from merge_core.errors import MergeInputError
from merge_core.blocks.presets import presets

SD1_NAMES = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
SDXL_NAMES = ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]
MODE_LABELS = {"weight_sum": "Weight sum", "add_difference": "Add difference",
               "triple_sum": "Triple sum", "sum_twice": "sum Twice"}


def small_model(keys, seed, dtype=torch.float16):
    gen = torch.Generator().manual_seed(seed)
    sd = {k: (torch.randn((2, 3) if len(s) > 1 else (3,), generator=gen)).to(dtype) for k, s in keys.items()}
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    sd["alphas_cumprod"] = torch.rand(10, generator=gen)
    return sd


def expected(mode, a, b, c, alpha, beta, out_dtype):
    res = FORMULAS[mode](a.double(), b.double(), None if c is None else c.double(), alpha, beta)
    return res.to(out_dtype)


@pytest.mark.parametrize("mode", list(FORMULAS))
@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_block_weighted_merge_matches_spec(mode, layout, sd1_keys, sdxl_keys):
    keys = sd1_keys if layout == "sd1" else sdxl_keys
    names, block_of = (SD1_NAMES, sd1_block) if layout == "sd1" else (SDXL_NAMES, sdxl_block)
    a, b, c = small_model(keys, 1), small_model(keys, 2), small_model(keys, 3)
    snapshot = {k: v.clone() for k, v in a.items()}
    gen = torch.Generator().manual_seed(7)
    alphas = [round(float(x), 4) for x in torch.rand(len(names), generator=gen)]
    betas = [round(float(x) * 0.5, 4) for x in torch.rand(len(names), generator=gen)]
    out = merge_state_dicts(a, b, c, mode=MODE_LABELS[mode], alpha=0.9, beta=0.9,
                            blocks_alpha=",".join(map(str, alphas)), blocks_beta=",".join(map(str, betas)))
    uses_beta = mode in ("triple_sum", "sum_twice")
    for key in keys:
        if "weight" not in key and "bias" not in key:  # never merged (docs/merging.md#keys-that-are-never-merged)
            assert torch.equal(out[key], a[key]), key
            continue
        i = names.index(block_of(key))
        beta = betas[i] if uses_beta else 0.9
        want = expected(mode, a[key], b[key], c[key], alphas[i], beta, torch.float16)
        torch.testing.assert_close(out[key].float(), want.float(), rtol=2e-3, atol=2e-3, msg=key)
        assert out[key].dtype == torch.float16
    # never merged: no weight/bias in the name -> A's tensor exactly
    assert torch.equal(out["alphas_cumprod"], a["alphas_cumprod"])
    assert torch.equal(out["cond_stage_model.transformer.text_model.embeddings.position_ids"],
                       a["cond_stage_model.transformer.text_model.embeddings.position_ids"])
    assert all(torch.equal(snapshot[k], a[k]) for k in a), "model A must not be modified"


def test_scalar_alpha_and_preset(sd1_keys):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    out = merge_state_dicts(a, b, mode="Weight sum", alpha=0.25)
    key = "model.diffusion_model.input_blocks.4.1.proj_in.weight"
    torch.testing.assert_close(out[key].float(), expected("weight_sum", a[key], b[key], None, 0.25, 0,
                                                            torch.float16).float(), rtol=2e-3, atol=2e-3)
    out = merge_state_dicts(a, b, mode="Weight sum", blocks_alpha="GRAD_V")
    grad = presets()["GRAD_V"]
    for key in ("model.diffusion_model.input_blocks.4.1.proj_in.weight", "model.diffusion_model.out.2.bias",
                "first_stage_model.decoder.conv_out.weight"):
        alpha = grad[SD1_NAMES.index(sd1_block(key))]
        torch.testing.assert_close(out[key].float(), expected("weight_sum", a[key], b[key], None, alpha, 0,
                                                                torch.float16).float(), rtol=2e-3, atol=2e-3)


def test_alpha_zero_block_keeps_a_exactly_and_alpha_one_gives_b(sd1_keys):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    weights = ["0"] * 26
    weights[SD1_NAMES.index("OUT03")] = "1"
    out = merge_state_dicts(a, b, blocks_alpha=",".join(weights))
    for key in sd1_keys:
        ref = b[key] if sd1_block(key) == "OUT03" else a[key]
        assert torch.equal(out[key], ref), key


def test_output_dtype_and_mixed_input_dtypes(sd1_keys):
    a, b = small_model(sd1_keys, 1, torch.float32), small_model(sd1_keys, 2, torch.bfloat16)
    out = merge_state_dicts(a, b, alpha=0.5)
    key = "model.diffusion_model.middle_block.1.proj_out.weight"
    assert out[key].dtype == torch.float32  # A's dtype (quirk 12/34 fixed: mixed dtypes are fine)
    out16 = merge_state_dicts(a, b, alpha=0.5, dtype=torch.float16)
    assert out16[key].dtype == torch.float16


def test_inpainting_a_merges_first_four_channels(sd1_keys):
    a, b = small_model(sd1_keys, 1, torch.float32), small_model(sd1_keys, 2, torch.float32)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    a[key], b[key] = torch.randn(8, 9, 3, 3), torch.randn(8, 4, 3, 3)
    out = merge_state_dicts(a, b, alpha=0.5)
    torch.testing.assert_close(out[key][:, :4], (a[key][:, :4] + b[key]) / 2)
    assert torch.equal(out[key][:, 4:], a[key][:, 4:])
    with pytest.raises(MergeInputError, match="inpainting"):
        merge_state_dicts(b, a, alpha=0.5)


def test_keys_only_in_b_are_copied_raw(sd1_keys):
    a, b, c = small_model(sd1_keys, 1), small_model(sd1_keys, 2), small_model(sd1_keys, 3)
    b["model.diffusion_model.extra.weight"] = torch.ones(3, dtype=torch.float16)
    out = merge_state_dicts(a, b, c, mode="Add difference", alpha=0.5)
    assert torch.equal(out["model.diffusion_model.extra.weight"], b["model.diffusion_model.extra.weight"])


@pytest.mark.parametrize("case,match", [
    ("arch", "model_b.*SDXL.*SD1"),
    ("shape", "model_b.*shape"),
    ("missing_c", "model_c.*required"),
    ("count", "blocks_alpha.*25 values"),
    ("preset", "blocks_alpha.*NOPE"),
])
def test_bad_input_is_a_clear_error(case, match, sd1_keys, sdxl_keys):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    kwargs = {}
    if case == "arch":
        b = small_model(sdxl_keys, 2)
    elif case == "shape":
        b["model.diffusion_model.out.2.weight"] = torch.zeros(5, 5)
    elif case == "missing_c":
        kwargs["mode"] = "Add difference"
    elif case == "count":
        kwargs["blocks_alpha"] = ",".join(["1"] * 25)
    elif case == "preset":
        kwargs["blocks_alpha"] = "NOPE"
    with pytest.raises(MergeInputError, match=match) as info:
        merge_state_dicts(a, b, **kwargs)
    assert "Fix:" in str(info.value)


def test_merge_files_streams_a_valid_file_and_keeps_unmerged_bytes(tmp_path, sd1_keys):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    out_path = tmp_path / "out.safetensors"
    seen = []
    plan = merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None, str(out_path),
                       mode="Weight sum", blocks_alpha="FLAT_25", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == len(plan.keys)
    ref = merge_state_dicts(a, b, blocks_alpha="FLAT_25")
    with safe_open(str(out_path), "pt") as f:
        assert set(f.keys()) == set(ref)
        for key in ref:
            assert torch.equal(f.get_tensor(key), ref[key]), key
        recipe = json.loads(f.metadata()["merge_suite_recipe"])
    assert recipe["mode"] == "Weight sum" and recipe["models"] == {"A": "a.safetensors", "B": "b.safetensors"}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_merge_files_refuses_to_overwrite_and_leaves_nothing_on_error(tmp_path, sd1_keys):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(MergeInputError, match="already exists"):
        merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None, str(out))
    assert out.read_bytes() == b"keep me"
    with pytest.raises(MergeInputError):
        merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None,
                    str(tmp_path / "new.safetensors"), blocks_alpha="1,2")
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 5
    with pytest.raises(RuntimeError, match="cancelled"):
        merge_files(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), None,
                    str(tmp_path / "new.safetensors"), should_stop=stop)
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors", "out.safetensors"]
