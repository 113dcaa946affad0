"""Sweep list nodes, cross product and grid node through their V3 execute (real ComfyUI types)."""
import pytest
import torch

from merge_suite.nodes.errors import MergeNodeError
from merge_suite.nodes.sweep import (SweepBlockWeights, SweepCalcModes, SweepCrossProduct, SweepElemental,
                                     SweepFloatRange, SweepFloats, SweepGrid, SweepModels, SweepSeeds)


def test_list_nodes_output_values_and_labels():
    assert SweepFloats.execute("0.2, 0.5", "alpha").result == ([0.2, 0.5], ["alpha=0.2", "alpha=0.5"])
    assert SweepFloatRange.execute(0.0, 1.0, 3, "beta").result[0] == [0.0, 0.5, 1.0]
    assert SweepSeeds.execute("5, 6", "seed").result == ([5, 6], ["seed=5", "seed=6"])
    values, labels = SweepBlockWeights.execute("GRAD_V\n" + ",".join(["0"] * 13 + ["1"] * 13), "blocks").result
    assert values[0] == "GRAD_V" and labels == ["blocks=GRAD_V", "blocks=0x13,1x13"]
    assert SweepElemental.execute("none\n\nOUT05::1", "el").result[1] == ["el=none", "el=OUT05::1"]
    assert SweepCalcModes.execute("normal,cosineB", "").result == (["normal", "cosineB"], ["normal", "cosineB"])
    for node in (SweepFloats, SweepBlockWeights, SweepCalcModes, SweepSeeds):
        outs = node.define_schema().outputs
        assert all(o.is_output_list for o in outs), node


def test_cross_product_pairs_every_combination():
    out = SweepCrossProduct.execute(x=[0.2, 0.5, 0.8], x_labels=["a=0.2", "a=0.5", "a=0.8"],
                                    y=["GRAD_V", "GRAD_A"], y_labels=["V", "A"]).result
    x, y, z, xl, yl, zl, count = out
    assert count == 6 and x == [0.2, 0.5, 0.8] * 2 and y == ["GRAD_V"] * 3 + ["GRAD_A"] * 3
    assert list(zip(xl, yl)) == [(a, b) for b in ("V", "A") for a in ("a=0.2", "a=0.5", "a=0.8")]
    assert z == [None] * 6 and zl == [""] * 6
    x3 = SweepCrossProduct.execute(x=[1, 2], y=[3], z=[4, 5]).result
    assert x3[6] == 4 and x3[3] == ["x1", "x2", "x1", "x2"] and x3[5] == ["z1", "z1", "z2", "z2"]


def test_grid_places_images_by_label_and_reports_layout():
    colours = [float(i) / 6 for i in range(6)]
    images = [torch.full((1, 64, 64, 3), c) for c in colours]
    xl = ["alpha=0.2", "alpha=0.5", "alpha=0.8"] * 2
    yl = ["GRAD_V"] * 3 + ["GRAD_A"] * 3
    recipes = [f"Weight sum(a, b) alpha={v} blocks_alpha={b} calcmode=cosineA" for b in ("V", "A") for v in (1, 2, 3)]
    grids, layout = SweepGrid.execute(images, xl, ["my sweep"], yl, None, recipes).result
    assert len(grids) == 1 and grids[0].shape[-1] == 3 and grids[0].shape[2] == 180 + 3 * 120
    assert layout.splitlines()[0] == "grid: 2 rows x 3 cols"
    g = grids[0][0]
    h = g.shape[0]
    # row 1 (GRAD_A), column 2 (alpha=0.8) holds image 5
    assert torch.allclose(g[h - 32, 180 + 2 * 120 + 60], torch.full((3,), round(colours[5] * 255) / 255), atol=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda: SweepFloats.execute("", "alpha"), r"Sweep Float List: input 'values': is empty"),
    (lambda: SweepBlockWeights.execute("GRAD_V\nNOPE", "b"), r"input 'values': line 2: 'NOPE' is not a preset"),
    (lambda: SweepCrossProduct.execute(x=[1, 2], x_labels=["a"]), r"input 'x_labels': has 1 labels for 2 values"),
    (lambda: SweepGrid.execute([torch.zeros(1, 8, 8, 3)] * 3, ["a", "b"]), r"input 'x_labels': has 2 labels for 3"),
    (lambda: SweepModels.execute("missing.safetensors"), r"input 'checkpoints': line 1: 'missing.safetensors' is not"),
])
def test_bad_sweep_input_names_node_and_input(call, match):
    with pytest.raises(MergeNodeError, match=match) as info:
        call()
    assert "Fix:" in str(info.value)
