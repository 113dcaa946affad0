"""Pinpoint and Let the Dice Roll nodes on real ComfyUI models: list outputs feeding the merge node."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from spec_blocks import sd1_block, sdxl_block  # noqa: E402
from test_merge_nodes import SD1_NAMES, SDXL_NAMES, base_weights, effective, merge  # noqa: E402

from merge_suite.merge_core.blocks.elemental import keyed_uniform  # noqa: E402
from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.random_weights import PinpointBlocks, PinpointElements, RandomBlockWeights  # noqa: E402

SD1_LAYOUT, SDXL_LAYOUT = "SD1/SD2 (26 blocks)", "SDXL (20 blocks)"
DICE = dict(randomize="alpha", decimals=3, custom="", upper="1", lower="0", clamp_upper="1", clamp_lower="0")


def test_dice_node_lists_draws_and_its_elemental_ratios_reach_the_merge(tiny):
    custom = ",".join(["0.2"] * 10 + ["EU"] * 10)
    out = RandomBlockWeights.execute(layout=SDXL_LAYOUT, mode="custom", seed=40, count=3,
                                     **{**DICE, "custom": custom}, elemental_base="OUT08::0.7").result
    alphas, betas, elementals, seeds, labels = out
    assert seeds == [40, 41, 42] and labels == ["seed 40", "seed 41", "seed 42"] and betas == ["", "", ""]
    assert len(set(alphas)) == 1 and alphas[0] == ",".join(["0.2"] * 10 + ["0"] * 10)
    assert elementals[0] == "OUT08::0.7\nM00 OUT00 OUT01 OUT02 OUT03 OUT04 OUT05 OUT06 OUT07 OUT08::U"
    a, b = tiny("model", "sdxl", 1), tiny("model", "sdxl", 2)
    wa, wb = base_weights(a, "diffusion_model."), base_weights(b, "diffusion_model.")
    merged = merge("weight_sum", a, b, blocks_alpha=alphas[1], elemental=elementals[1], seed=seeds[1])
    drawn = 0
    for key, w in effective(merged, "diffusion_model.").items():
        block = sdxl_block(key)
        i = SDXL_NAMES.index(block)
        alpha = 0.2 if i < 10 else 1 - 2 * keyed_uniform(41, key[len("diffusion_model."):])
        drawn += i >= 10
        want = (1 - alpha) * wa[key].double() + alpha * wb[key].double()
        torch.testing.assert_close(w.double(), want, rtol=1e-5, atol=1e-6, msg=key)
    assert drawn > 20


def test_pinpoint_node_merges_only_the_target_blocks(tiny):
    blocks, xs, ys = PinpointBlocks.execute(layout=SD1_LAYOUT, targets="IN04-IN05, OUT03-OUT05",
                                            values="0.5, 1", template="").result
    assert xs == ["IN04-IN05", "OUT03-OUT05"] * 2 and ys == ["0.5", "0.5", "1", "1"]
    a, b = tiny("model", "sd1", 1), tiny("model", "sd1", 2)
    wa, wb = base_weights(a, "diffusion_model."), base_weights(b, "diffusion_model.")
    merged = effective(merge("weight_sum", a, b, blocks_alpha=blocks[3]), "diffusion_model.")
    for key, w in merged.items():
        if sd1_block(key) in ("OUT03", "OUT04", "OUT05"):
            torch.testing.assert_close(w, wb[key].float(), msg=key)
        else:
            assert torch.equal(w, wa[key].float()), key
    assert SD1_NAMES.index("OUT05") == 19


def test_pinpoint_elements_node_lists_elemental_text():
    texts, xs, ys = PinpointElements.execute(layout=SD1_LAYOUT, targets="OUT03-OUT05:attn2\nIN01:",
                                             values="1", elemental_base="").result
    assert texts == ["OUT03-OUT05:attn2:1", "IN01::1"] and xs == ["OUT03-OUT05:attn2", "IN01:"] and ys == ["1", "1"]


@pytest.mark.parametrize("node,kwargs,fragment", [
    (PinpointBlocks, dict(layout=SDXL_LAYOUT, targets="IN11", values="1", template=""),
     "Pinpoint Blocks (sweep list): input 'targets': target 'IN11': unknown block id 'IN11' for SDXL"),
    (PinpointElements, dict(layout=SD1_LAYOUT, targets="OUT03", values="1", elemental_base=""),
     "Pinpoint Elements (sweep list): input 'targets': item 'OUT03' has 0 ':'"),
    (RandomBlockWeights, dict(layout=SD1_LAYOUT, mode="X", seed=0, count=1, **{**DICE, "lower": "0.9",
                                                                               "upper": "0.1"}),
     "Random Block Weights (Let the Dice Roll): input 'lower': block BASE: lower limit 0.9 is above"),
])
def test_node_errors_name_node_input_and_fix(node, kwargs, fragment):
    with pytest.raises(MergeNodeError) as info:
        node.execute(**kwargs)
    assert fragment in str(info.value) and "Fix:" in str(info.value)
