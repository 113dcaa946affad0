"""Include / Exclude (docs/merging.md#include-and-exclude) on real SD1 key names."""
import pytest
import torch
from spec_blocks import sd1_block
from test_merge_api import small_model

from merge_core import merge_state_dicts
from merge_core.architectures import SD1, SDXL
from merge_core.errors import MergeInputError
from merge_core.blocks.selection import parse_selection

P = "model.diffusion_model."


def merged_keys(out, a, keys):
    return {k for k in keys if ("weight" in k or "bias" in k) and not torch.equal(out[k], a[k])}


def test_exclude_blocks_elements_vae_and_adjust(sd1_keys):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    out = merge_state_dicts(a, b, alpha=0.5, include_exclude="exclude: OUT03-OUT05, attn2 VAE Adjust",
                            adjust="3,3,3,3,0,0,0,0")
    changed = merged_keys(out, a, sd1_keys)
    for key in sd1_keys:
        if "weight" not in key and "bias" not in key:
            continue
        excluded = (sd1_block(key) in ("OUT03", "OUT04", "OUT05") or "attn2" in key
                    or key.startswith("first_stage_model.")
                    or key[len(P):] in ("input_blocks.0.0.weight", "input_blocks.0.0.bias", "out.0.weight",
                                        "out.0.bias", "out.2.weight", "out.2.bias"))
        assert (key not in changed) == excluded, key
        if excluded:
            assert torch.equal(out[key], a[key]), "excluded keys keep A, without Adjust"


def test_include_merges_only_hits(sd1_keys):
    a, b = small_model(sd1_keys, 1), small_model(sd1_keys, 2)
    out = merge_state_dicts(a, b, alpha=0.5, include_exclude="include: IN01 M00 proj_in")
    changed = merged_keys(out, a, sd1_keys)
    assert changed == {k for k in sd1_keys if ("weight" in k or "bias" in k)
                       and (sd1_block(k) in ("IN01", "M00") or "proj_in" in k)}


def test_elements_are_trimmed_and_prefix_stripped():
    sel = parse_selection("exclude: attn, proj", SD1)
    assert sel.elements == ("attn", "proj")  # quirk 30 fixed: ' proj' is 'proj'
    sel = parse_selection("exclude: ff", SD1)
    assert sel.merges(P + "input_blocks.1.0.in_layers.2.weight", "IN01")  # 'ff' is not in 'diffusion' here
    assert not sel.merges(P + "input_blocks.1.0.in_layers.2.weight", "IN01", full_key=True)


@pytest.mark.parametrize("text,fragment", [("OUT03", "does not start with"), ("drop: OUT03", "does not start with"),
                                           ("exclude: OUT03-OUT99", "unknown block id 'OUT99'")])
def test_bad_selection_text(text, fragment):
    with pytest.raises(MergeInputError) as info:
        parse_selection(text, SD1)
    assert fragment in str(info.value) and info.value.fix
    assert parse_selection("", SD1) is None and parse_selection("include:  ", SDXL) is None
