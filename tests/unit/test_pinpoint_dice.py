"""Pinpoint sweeps (docs/merging.md#supermergers-axes-as-sweep-nodes), Let the Dice Roll
(docs/merging.md#let-the-dice-roll) and random elemental ratios."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spec_blocks import sd1_block
from test_merge_api import small_model

from merge_core import merge_state_dicts
from merge_core.architectures import SD1, SDXL
from merge_core.blocks.weights import parse_block_weights
from merge_core.blocks.dice import DiceSettings, roll
from merge_core.blocks.elemental import elemental_alpha, keyed_uniform, parse_elemental
from merge_core.errors import MergeInputError
from merge_core.blocks.pinpoint import pinpoint_blocks, pinpoint_elements

SD1_IDS = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]


def values_of(text):
    return [float(v) for v in text.split(",")]


# ---- pinpoint blocks -------------------------------------------------------------------------

@pytest.mark.parametrize("target,chosen", [
    ("IN01", {"IN01"}),
    ("OUT10 OUT11", {"OUT10", "OUT11"}),
    ("OUT06-OUT03", {"OUT03", "OUT04", "OUT05", "OUT06"}),
    ("NOT M00 OUT03-OUT06", set(SD1_IDS) - {"M00", "OUT03", "OUT04", "OUT05", "OUT06"}),
])
def test_pinpoint_blocks_sets_exactly_the_named_blocks(target, chosen):
    cells = pinpoint_blocks(target, "0.7", SD1, template=",".join(["0.25"] * 26))
    assert len(cells) == 1 and cells[0].target == target and cells[0].value == 0.7
    got = values_of(cells[0].text)
    assert got == [0.7 if b in chosen else 0.25 for b in SD1_IDS]


def test_pinpoint_grid_order_all_and_sdxl():
    cells = pinpoint_blocks("IN01, OUT05", "0, 0.5, 1", SD1)
    assert [(c.target, c.value) for c in cells] == [(t, v) for v in (0, 0.5, 1) for t in ("IN01", "OUT05")]
    assert values_of(cells[3].text)[SD1_IDS.index("OUT05")] == 0.5 and sum(values_of(cells[3].text)) == 0.5
    every = pinpoint_blocks("ALL", "1", SDXL)
    assert [c.target for c in every] == list(SDXL.blocks)
    for i, cell in enumerate(every):  # each cell merges exactly its own block, and parses back for SDXL
        weights = parse_block_weights(cell.text, SDXL)
        assert [b for b, v in zip(weights.blocks, weights.values) if v] == [SDXL.blocks[i]]


@pytest.mark.parametrize("targets,values,fragment", [
    ("IN12", "1", "unknown block id 'IN12'"),
    ("OUT03-OUT99", "1", "unknown block id 'OUT99'"),
    ("M00 NOT IN01", "1", "NOT may only be the first word"),
    ("NOT", "1", "names no block"),
    ("", "1", "is empty"),
    ("IN01", "half", "'half' is not a number"),
    ("IN01", " , ", "is empty"),
])
def test_pinpoint_blocks_errors_name_the_fragment(targets, values, fragment):
    with pytest.raises(MergeInputError, match=fragment) as info:
        pinpoint_blocks(targets, values, SD1)
    assert info.value.fix


def test_pinpoint_blocks_uses_sdxl_ids():
    with pytest.raises(MergeInputError, match="unknown block id 'IN09'"):
        pinpoint_blocks("IN09", "1", SDXL)


# ---- pinpoint elements -----------------------------------------------------------------------

def test_pinpoint_elements_appends_item_and_value():
    cells = pinpoint_elements("OUT03-OUT05:attn2\nIN01:", "0, 1", SD1, base="M00::0.5")
    assert [c.text for c in cells] == ["M00::0.5\nOUT03-OUT05:attn2:0", "M00::0.5\nIN01::0",
                                       "M00::0.5\nOUT03-OUT05:attn2:1", "M00::0.5\nIN01::1"]
    rules = parse_elemental(cells[2].text, SD1)
    key = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    assert elemental_alpha(rules, key, sd1_block(key), 0.3)[0] == 1.0


@pytest.mark.parametrize("targets,fragment", [("OUT03:attn2:0.5", "has 2 ':'"), ("OUT03", "has 0 ':'"),
                                              ("IN13:attn", "unknown block id 'IN13'")])
def test_pinpoint_elements_errors(targets, fragment):
    with pytest.raises(MergeInputError, match=fragment):
        pinpoint_elements(targets, "1", SD1)


# ---- dice ------------------------------------------------------------------------------------

def test_dice_is_reproducible_per_seed_and_differs_across_seeds():
    s = DiceSettings("R")
    assert roll(s, SD1, 7) == roll(s, SD1, 7)
    assert roll(s, SD1, 7).alpha != roll(s, SD1, 8).alpha


@pytest.mark.parametrize("seed", [0, 1, 123456])
def test_dice_tokens_follow_the_spec_formulas(seed):
    import numpy as np
    r = np.random.default_rng(seed).random(3000)  # alpha uses r[i], beta r[i + 50]
    got = roll(DiceSettings("R", decimals=6), SD1, seed, alpha=True, beta=True)
    assert values_of(got.alpha) == [round(float(v), 6) for v in r[:26]]
    assert values_of(got.beta) == [round(float(v), 6) for v in r[50:76]]
    u = roll(DiceSettings("U", clamp_upper="10", clamp_lower="-10", decimals=6), SD1, seed)
    assert values_of(u.alpha) == [round(1.5 - 2 * float(v), 6) for v in r[:26]]
    x = roll(DiceSettings("X", upper="0.9", lower="0.2", decimals=6), SD1, seed)
    assert values_of(x.alpha) == [round(0.9 + (0.2 - 0.9) * float(v), 6) for v in r[:26]]
    d = roll(DiceSettings("D", upper="0.5", lower="0.4", decimals=6), SD1, seed)
    assert values_of(d.alpha) == [round(0.5 + 0.4 * (float(v) - 0.5), 6) for v in r[:26]]


def test_dice_clamps_then_rounds_u_to_the_default_limits():
    values = values_of(roll(DiceSettings("U"), SD1, 3).alpha)
    assert all(0 <= v <= 1 for v in values) and any(v in (0.0, 1.0) for v in values)
    assert all(round(v, 3) == v for v in values)


def test_dice_custom_template_keeps_numbers_and_converts_26_for_sdxl():
    custom = "U," + ",".join(["0.25"] * 12) + "," + ",".join(["R"] * 13)
    sd1 = values_of(roll(DiceSettings("custom", custom=custom), SD1, 4).alpha)
    assert sd1[1:13] == [0.25] * 12
    sdxl = values_of(roll(DiceSettings("custom", custom=custom), SDXL, 4).alpha)
    assert len(sdxl) == 20 and sdxl[1:10] == [0.25] * 9


def test_dice_per_block_limits_and_e_modes():
    upper = ",".join(["1"] * 13 + ["0.5"] * 13)
    x = values_of(roll(DiceSettings("X", upper=upper, lower="0.4"), SD1, 9).alpha)
    assert all(0.4 <= v <= 1 for v in x[:13]) and all(0.4 <= v <= 0.5 for v in x[13:])
    e = roll(DiceSettings("custom", custom=",".join(["0.5"] * 20 + ["ER"] * 3 + ["EX"] * 3), upper="0.8",
                          lower="0.1"), SD1, 2)
    assert values_of(e.alpha)[-6:] == [0] * 6
    assert e.elemental == "OUT06 OUT07 OUT08::R\nOUT09 OUT10 OUT11::0.1~0.8"
    assert len(parse_elemental(e.elemental, SD1)) == 2


def test_dice_chance_limits_are_seeded():
    s = DiceSettings("X", upper="1", lower="0.5R0.5")
    first = roll(s, SD1, 11)
    assert first == roll(s, SD1, 11)
    values = values_of(first.alpha)
    assert 0.0 in values and all(v == 0 or 0.5 <= v <= 1 for v in values)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(mode="X", upper="0.2", lower="0.6"), "lower limit 0.6 is above upper limit 0.2"),
    (dict(mode="R", clamp_upper="0", clamp_lower="1"), "clamp lower 1 is above clamp upper 0"),
    (dict(mode="custom", custom="R,ED" + ",0" * 24), "no elemental D"),
    (dict(mode="custom", custom="R,Q" + ",0" * 24), "'Q' is neither a number"),
    (dict(mode="custom", custom="R,R"), "has 2 tokens"),
    (dict(mode="Z"), "unknown random mode 'Z'"),
    (dict(mode="X", upper="1,2,3"), "has 3 values"),
    (dict(mode="X", lower="0.2R1.5"), "out of range"),
    (dict(mode="D", lower="-0.1"), "negative"),
])
def test_dice_bad_input_is_a_clear_error(kwargs, fragment):
    with pytest.raises(MergeInputError, match=fragment) as info:
        roll(DiceSettings(**kwargs), SD1, 0)
    assert info.value.fix


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["R", "U", "X", "D"]),
       lo=st.floats(-2, 2), hi=st.floats(-2, 2))
def test_dice_values_stay_within_the_clamp(seed, mode, lo, hi):
    lo, hi = sorted((round(lo, 2), round(hi, 2)))
    s = DiceSettings(mode, upper="0.7", lower="0.3", clamp_upper=str(hi), clamp_lower=str(lo), decimals=4)
    values = values_of(roll(s, SDXL, seed).alpha)
    assert len(values) == 20 and all(lo - 1e-9 <= v <= hi + 1e-9 for v in values)


# ---- random elemental ratios at merge time ---------------------------------------------------

def test_random_elemental_ratios_are_drawn_per_key_from_the_seed(sd1_keys):
    a, b = small_model(sd1_keys, 1, torch.float32), small_model(sd1_keys, 2, torch.float32)
    text = "OUT03-OUT05:attn2:R\nIN01::-0.5~0.5\nM00::U"
    merged = merge_state_dicts(a, b, alpha=0.3, elemental=text, seed=5)
    checked = 0
    for key in a:
        if key not in b or not key.startswith("model.diffusion_model.") or not key.endswith(("weight", "bias")):
            continue
        block = sd1_block(key)
        rel = key[len("model.diffusion_model."):]
        r = keyed_uniform(5, rel)
        alpha = 0.3
        if block in ("OUT03", "OUT04", "OUT05") and "attn2" in rel:
            alpha = r
        elif block == "IN01":
            alpha = 0.5 + (-0.5 - 0.5) * r
        elif block == "M00":
            alpha = 1 - 2 * r
        want = (1 - alpha) * a[key].double() + alpha * b[key].double()
        torch.testing.assert_close(merged[key].double(), want, rtol=1e-6, atol=1e-6)
        checked += alpha != 0.3
    assert checked > 50
    again = merge_state_dicts(a, b, alpha=0.3, elemental=text, seed=5)
    other = merge_state_dicts(a, b, alpha=0.3, elemental=text, seed=6)
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    assert torch.equal(again[key], merged[key]) and not torch.equal(other[key], merged[key])


def test_keyed_uniform_is_uniform_enough():
    draws = [keyed_uniform(1, f"k{i}") for i in range(4000)]
    assert all(0 <= d < 1 for d in draws) and abs(sum(draws) / len(draws) - 0.5) < 0.02


TEXT = st.text(alphabet=st.sampled_from(list("INOUTMBASEDRXLNO0123456789-.,: ~\n")), max_size=40)


@settings(max_examples=200, deadline=None)
@given(targets=TEXT, values=TEXT, custom=TEXT, lower=TEXT)
def test_fuzzed_text_gives_results_or_clear_errors(targets, values, custom, lower):
    for call in (lambda: pinpoint_blocks(targets, values, SD1, template=custom),
                 lambda: pinpoint_elements(targets, values, SDXL, base=lower),
                 lambda: roll(DiceSettings("custom", custom=custom, lower=lower), SD1, 1),
                 lambda: roll(DiceSettings("X", upper=values, lower=lower), SDXL, 1)):
        try:
            call()
        except MergeInputError as exc:
            assert exc.input_name and exc.problem


# ---- command line ----------------------------------------------------------------------------

def test_cli_dice_and_pinpoint_print_json_lines(capsys):
    import json

    from merge_core.cli import main
    assert main(["dice", "--layout", "sdxl", "--mode", "EX", "--seed", "9", "--count", "2", "--randomize", "both",
                 "--upper", "0.9", "--lower", "0.1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = [roll(DiceSettings("EX", upper="0.9", lower="0.1"), SDXL, s, True, True) for s in (9, 10)]
    assert [(d["seed"], d["blocks"], d["blocks_beta"], d["elemental"]) for d in lines] == \
        [(r.seed, r.alpha, r.beta, r.elemental) for r in want]
    assert main(["pinpoint", "IN01, OUT05", "0, 1", "--template", "FLAT_25"]) == 0
    cells = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [c["blocks"] for c in cells] == [c.text for c in pinpoint_blocks("IN01, OUT05", "0, 1", SD1, "FLAT_25")]
    assert main(["pinpoint", "OUT03:attn2", "0.5", "--elements", "--base", "M00::1"]) == 0
    assert json.loads(capsys.readouterr().out)["elemental"] == "M00::1\nOUT03:attn2:0.5"


@pytest.mark.parametrize("argv,fragment", [
    (["pinpoint", "IN13", "1"], "input 'targets': target 'IN13': unknown block id"),
    (["dice", "--mode", "X", "--lower", "0.8", "--upper", "0.2"], "input '--lower': block BASE"),
    (["dice", "--count", "0"], "input '--count'"),
])
def test_cli_errors_exit_2_with_the_option_named(argv, fragment, capsys):
    from merge_core.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Fix:" in err and "Traceback" not in err


def test_beta_on_a_layout_longer_than_50_blocks_is_drawn_apart_from_alpha():
    """Flux.1's 61 blocks with a chance limit: beta's draws and chances come after alpha's (they used to run past
    the 100 chances, an IndexError), while SD1's 26 blocks keep SuperMerger's offset of 50."""
    from merge_core.architectures import FLUX1
    rolled = roll(DiceSettings(mode="X", lower="0R0.5"), FLUX1, 1, beta=True)
    alpha, beta = ([float(v) for v in text.split(",")] for text in (rolled.alpha, rolled.beta))
    assert len(alpha) == len(beta) == FLUX1.n_blocks
    assert beta[:11] != alpha[50:61]
    sd1 = roll(DiceSettings(mode="R"), SD1, 7, beta=True)
    import numpy as np
    r = np.random.default_rng(7).random(3000)
    assert [float(v) for v in sd1.beta.split(",")] == [round(float(x), DiceSettings().decimals) for x in r[50:76]]
