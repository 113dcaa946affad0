"""Elemental grammar and matching (docs/merging.md#elemental-merge) on real SD1 and SDXL key names."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spec_blocks import sd1_block, sdxl_block
from test_merge_api import small_model

from merge_core import merge_state_dicts
from merge_core.architectures import SD1, SDXL
from merge_core.blocks.elemental import elemental_alpha, parse_elemental
from merge_core.errors import MergeInputError

K = "model.diffusion_model.output_blocks.{}.1.transformer_blocks.0.{}.weight"


def alpha_of(text, key, block, arch=SD1, base=0.9, **kw):
    return elemental_alpha(parse_elemental(text, arch), key, block, base, **kw)[0]


def test_documented_examples():
    assert alpha_of("OUT03 OUT04 OUT05:attn2 attn1.to_out:0.5", K.format(4, "attn2.to_k"), "OUT04") == 0.5
    assert alpha_of("OUT03 OUT04 OUT05:attn2 attn1.to_out:0.5", K.format(4, "attn1.to_q"), "OUT04") == 0.9
    rules = "OUT06:attn:0.5,OUT06:attn2.to_k:0.2"
    assert alpha_of(rules, K.format(6, "attn2.to_k"), "OUT06") == 0.2  # last match wins
    assert alpha_of(rules, K.format(6, "attn1.to_k"), "OUT06") == 0.5
    assert alpha_of("NOT OUT04:attn:1", K.format(4, "attn1.to_k"), "OUT04") == 0.9
    assert alpha_of("NOT OUT04:attn:1", K.format(5, "attn1.to_k"), "OUT05") == 1.0
    assert alpha_of("OUT05:NOT attn proj:0.2", K.format(5, "ff.net.2"), "OUT05") == 0.2
    assert alpha_of("OUT05:NOT attn proj:0.2", K.format(5, "attn2.to_v"), "OUT05") == 0.9
    assert alpha_of("OUT05::1", K.format(5, "norm1"), "OUT05") == 1.0
    assert alpha_of("::0.3", "cond_stage_model.transformer.text_model.final_layer_norm.weight", "BASE") == 0.3


def test_ranges_either_order_newlines_and_spaces():
    for text in ("OUT03-OUT06:attn:0.4", "OUT06-OUT03:attn:0.4", "\n  OUT03-OUT06 : attn :0.4\n"):
        rules = parse_elemental(text, SD1)
        assert rules[0].blocks == frozenset({"OUT03", "OUT04", "OUT05", "OUT06"})
    rules = parse_elemental("IN01:attn:0.1\nNOT M00 OUT03-OUT06::0.2,", SD1)
    assert len(rules) == 2 and rules[1].blocks_not and "M00" in rules[1].blocks


def test_prefix_stripped_unless_full_key():
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    assert alpha_of("IN01:ff:0.3", key, "IN01") == 0.9, "'ff' no longer matches via 'diffusion'"
    assert alpha_of("IN01:ff:0.3", key, "IN01", full_key=True) == 0.3, "SuperMerger's full-key parity"


def test_sdxl_uses_its_own_block_names(sdxl_keys):
    key = "model.diffusion_model.middle_block.1.transformer_blocks.3.attn2.to_k.weight"
    assert alpha_of("M00:attn2:0.7", key, sdxl_block(key), SDXL) == 0.7
    with pytest.raises(MergeInputError, match="unknown block id 'IN09'"):
        parse_elemental("IN09:attn:0.5", SDXL)


@pytest.mark.parametrize("text,fragment", [
    ("OUT03:attn", "entry #1 'OUT03:attn' has 1 ':'"),
    ("OUT03:attn:0.5,IN01:a:b:0.3", "entry #2 'IN01:a:b:0.3' has 3 ':'"),
    ("OUT03:attn:x", "ratio 'x' is not a number"),
    ("OUT03:attn:Q", "R, U or low~up"),
    ("OUT03:attn:0~1~2", "not a number"),
    ("OUT03-OUT99:attn:0.5", "unknown block id 'OUT99'"),
    ("IN12:attn:0.5", "unknown block id 'IN12'"),
    ("NOT:attn:0.5", "NOT is followed by no block"),
    ("OUT03:attn:inf", "not finite"),
])
def test_malformed_text_is_reported_with_entry_and_position(text, fragment):
    with pytest.raises(MergeInputError) as info:
        parse_elemental(text, SD1)
    assert fragment in str(info.value) and info.value.input_name == "elemental" and info.value.fix


def test_merge_applies_rules_after_block_weights(sd1_keys):
    a, b = small_model(sd1_keys, 1, torch.float32), small_model(sd1_keys, 2, torch.float32)
    text = "OUT03-OUT05:attn2:0.5\nNOT M00 OUT03-OUT11:ff.net:0.75"
    out = merge_state_dicts(a, b, blocks_alpha="FLAT_25", elemental=text)
    for key in sd1_keys:
        if "weight" not in key and "bias" not in key:
            continue
        block = sd1_block(key)
        name = key.replace("model.diffusion_model.", "")
        want = 0.0 if block == "BASE" else 0.25  # FLAT_25: BASE 0, everything else 0.25
        if block in ("OUT03", "OUT04", "OUT05") and "attn2" in name:
            want = 0.5
        if block not in ("M00",) + tuple(f"OUT{i:02d}" for i in range(3, 12)) and "ff.net" in name:
            want = 0.75
        torch.testing.assert_close(out[key], a[key] + want * (b[key] - a[key]), msg=key)


tokens = st.one_of(st.sampled_from(["OUT03", "IN00-IN05", "NOT", "M00", "attn2", "ff.net", ":", ",", " ", "\n",
                                    "0.5", "R", "OUT99", "-", "1e9", ""]), st.text(max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.lists(tokens, max_size=25), st.sampled_from([SD1, SDXL]))
def test_parser_never_crashes(parts, arch):
    try:
        rules = parse_elemental("".join(parts), arch)
    except MergeInputError as exc:
        assert exc.input_name == "elemental" and exc.fix
        return
    for rule in rules:
        assert rule.blocks is None or rule.blocks <= set(arch.blocks)


@pytest.mark.parametrize("text, fragment", [
    ("IN01:attn3:0.5", "entry #1 'IN01:attn3:0.5': elements 'attn3' match no key in block IN01 of this SD1.x model"),
    ("OUT03:attn2:0.5\n:atn2:0.3", "entry #2 ':atn2:0.3': elements 'atn2' match no key of this SD1.x model"),
    ("IN00:attn2:0.5", "in block IN00"),  # IN00 is the input conv alone
    ("OUT03:NOT attn2 attn1 ff norm proj emb in_layers out_layers skip:1", "elements 'NOT attn2 attn1"),
    ("M00 OUT00-OUT05:attn9:1", "in blocks M00, OUT00, OUT01, OUT02 (and 3 more)"),
])
def test_a_rule_matching_no_key_is_refused_like_include_exclude(sd1_keys, text, fragment):
    """An element typo (IN01:attn3:0.5) set nothing and the merge looked like a success; it is
    refused as include/exclude refuse a target that selects no key, naming the entry and the blocks."""
    a = small_model(sd1_keys, 1)
    with pytest.raises(MergeInputError) as info:
        merge_state_dicts(a, a, alpha=0.5, elemental=text)
    assert info.value.input_name == "elemental" and fragment in str(info.value), str(info.value)
    assert "\n" not in str(info.value) and "elements FILE" in str(info.value)


@pytest.mark.parametrize("text", ["IN01:attn2:0.5", "IN00::0.5", "OUT03:NOT attn:0.2", "IN01:NOT zzz:0.2",
                                  "NOT IN01:attn2:1", "BASE:self_attn:0.5", ":attn2:0.5"])
def test_rules_matching_some_key_or_only_naming_blocks_pass(sd1_keys, text):
    a = small_model(sd1_keys, 1)
    merge_state_dicts(a, a, alpha=0.5, elemental=text)


def test_a_rule_is_checked_against_the_keys_the_merge_can_select(sd1_keys):
    """Keys that never merge (SuperMerger's name filter) are no match: a rule for them changes nothing."""
    from merge_core.blocks.elemental import require_rules_match
    rules = parse_elemental("BASE:position_ids:1", SD1)
    assert any("position_ids" in k for k in small_model(sd1_keys, 1))
    with pytest.raises(MergeInputError, match="match no key in block BASE"):
        merge_state_dicts(small_model(sd1_keys, 1), small_model(sd1_keys, 1), alpha=0.5,
                          elemental="BASE:position_ids:1")
    require_rules_match(rules, [("x.position_ids.weight", "BASE")], SD1)  # a mergeable key would match
    require_rules_match(rules, [("model.diffusion_model.out.2.weight", "OUT11")], SD1)  # BASE has no key here
