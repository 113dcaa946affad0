"""Adjust against the per-key formulas of docs/merging.md#adjust."""
import pytest
import torch
from test_merge_api import small_model

from merge_core import merge_state_dicts
from merge_core.methods.adjust import parse_adjust
from merge_core.errors import MergeInputError

P = "model.diffusion_model."


def shaped(keys, seed):
    sd = small_model(keys, seed, torch.float32)
    gen = torch.Generator().manual_seed(seed)
    sd[P + "out.2.bias"] = torch.randn(4, generator=gen)
    return sd


def expected(a, v, layout):
    a_, b_, c_, d, e, f, g, h = v
    out = {P + "input_blocks.0.0.weight": a[P + "input_blocks.0.0.weight"] * (1 - 0.01 * a_),
           P + "input_blocks.0.0.bias": a[P + "input_blocks.0.0.bias"] * (1 + 0.02 * a_),
           P + "out.0.weight": a[P + "out.0.weight"] * (1 - 0.01 * b_),
           P + "out.0.bias": a[P + "out.0.bias"] * (1 + 0.02 * b_),
           P + "out.2.weight": a[P + "out.2.weight"] * (1 - 0.01 * c_)}
    if layout == "sd1":
        shift = [d, -e + f + h, e / 3 + f - g, 2 * e / 3 - g + h]
    else:
        shift = [d, f - g - h, h - g, e]
    out[P + "out.2.bias"] = a[P + "out.2.bias"] + 0.02 * torch.tensor(shift)
    return out


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_adjust_on_model_a_alone_matches_the_spec(layout, sd1_keys, sdxl_keys):
    keys = sd1_keys if layout == "sd1" else sdxl_keys
    a, b = shaped(keys, 1), shaped(keys, 2)
    v = [1.5, -2.0, 3.0, 0.5, 2.0, -1.0, 4.0, 1.0]
    out = merge_state_dicts(a, b, alpha=0.0, adjust=",".join(map(str, v)))  # alpha 0: Adjust on A alone
    want = expected(a, v, layout)
    for key, value in want.items():
        torch.testing.assert_close(out[key], value, msg=key)
    others = [k for k in keys if k not in want and ("weight" in k or "bias" in k)]
    assert all(torch.equal(out[k], a[k]) for k in others)


def test_adjust_applies_after_the_merge_and_keeps_dtype(sd1_keys):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    out = merge_state_dicts(a, b, alpha=0.5, adjust="4,0,0,0,0,0,0,0")
    key = P + "input_blocks.0.0.weight"
    merged = ((a[key].float() + b[key].float()) / 2).half()
    torch.testing.assert_close(out[key].float(), (merged.float() * 0.96).half().float(), rtol=2e-3, atol=1e-4)
    assert out[key].dtype == torch.float16


def test_old_seven_value_form():
    adj = parse_adjust("1,2,3,4,5,6,7")
    from merge_core.architectures import SD1
    assert adj.bias_shift(SD1) == pytest.approx((0.08, 0.10, 0.12, 0.14))


@pytest.mark.parametrize("text,fragment", [("1,2,3", "3 values"), ("1,2,x,0,0,0,0,0", "OUT2 'x'"),
                                           ("1,2,3,4,5,6,7,8,9", "9 values")])
def test_bad_adjust_text(text, fragment):
    with pytest.raises(MergeInputError) as info:
        parse_adjust(text)
    assert fragment in str(info.value) and info.value.input_name == "adjust"
    assert parse_adjust("") is None and parse_adjust("0,0,0,0,0,0,0,0") is None
