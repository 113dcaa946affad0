"""Merge Option nodes: fine-tuning settings as MERGE_OPTIONS values that chain into the merge nodes."""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_merge_nodes import effective  # noqa: E402

from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.merge import CheckpointMerge, CLIPMerge, ModelMerge  # noqa: E402
from merge_suite.nodes.merge_options import (NODES, AdjustOption, CalcModeOption, ElementalOption,  # noqa: E402
                                             IncludeExcludeOption, ReportOption)

DOCS = Path(__file__).resolve().parents[2] / "web" / "docs"
BASIC = dict(mode="Weight sum", alpha=0.3, beta=0.25)


def chain(*steps):
    """Run option nodes in order, each fed the previous one's value."""
    options = None
    for node, settings in steps:
        options = node.execute(options=options, **settings).result[0]
    return options


def test_merge_nodes_keep_only_the_basics_and_one_options_input():
    for node in (ModelMerge, CLIPMerge, CheckpointMerge):
        names = [i.id for i in node.GET_SCHEMA().inputs]
        assert {"mode", "alpha", "beta", "blocks_alpha", "blocks_alpha_preset", "options"} <= set(names)
        assert not {"calcmode", "gamma", "seed", "elemental", "adjust", "include_exclude", "report_keys"} & set(names)
    for node in NODES:
        schema = node.GET_SCHEMA()
        assert schema.display_name.startswith("Merge Option: ") and schema.category == "merge_suite/options"
        assert schema.inputs[-1].id == "options" and schema.inputs[-1].optional


def test_chained_options_merge_as_the_same_settings_given_directly(tiny):
    a, b, c = (tiny("model", "sd1", s) for s in (1, 2, 3))
    rules, adjust, inex = "OUT03-OUT05:attn2:0.9\nIN04::R", "1,0,0,0,0,0,0,0", "exclude: OUT11"
    options = chain((CalcModeOption, dict(calcmode="cosineA", gamma=0.3, seed=5, tensor2_corrected=False)),
                    (ElementalOption, dict(elemental=rules, elemental_full_key=False)),
                    (IncludeExcludeOption, dict(include_exclude=inex)), (AdjustOption, dict(adjust=adjust)),
                    (ReportOption, dict(report_keys=True)))
    via_options = ModelMerge.execute(model_a=a, model_b=b, options=options, **BASIC).result
    direct = ModelMerge.execute(model_a=a, model_b=b, calcmode="cosineA", seed=5, elemental=rules, adjust=adjust,
                                include_exclude=inex, **BASIC).result
    plain = ModelMerge.execute(model_a=a, model_b=b, **BASIC).result
    got, want, base = (effective(r[0], "diffusion_model.") for r in (via_options, direct, plain))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert any(not torch.equal(got[k], base[k]) for k in base), "the options changed the merge"
    assert "calcmode=cosineA" in via_options[2] and "elemental=" in via_options[2] and "adjust=" in via_options[2]
    assert "diffusion_model." in via_options[1] and len(via_options[1].splitlines()) > 100  # report_keys
    # one options value shared by a second merge of other models gives the same settings there
    shared = ModelMerge.execute(model_a=a, model_b=c, options=options, **BASIC).result[2]
    assert shared.split(")", 1)[1] == via_options[2].split(")", 1)[1]


def test_an_option_set_twice_in_a_chain_is_refused():
    first = CalcModeOption.execute(calcmode="cosineA", gamma=0.3, seed=0, tensor2_corrected=False).result[0]
    with pytest.raises(MergeNodeError, match=r"Merge Option: Calc Mode: input 'options': already sets calcmode"):
        CalcModeOption.execute(options=first, calcmode="normal", gamma=0.3, seed=0, tensor2_corrected=False)
    assert first["calcmode"] == "cosineA"  # the upstream value is not modified


@pytest.mark.parametrize("node,values,bad", [
    (ModelMerge, {"alpha": math.nan, "beta": 0.25}, "alpha"),
    (CLIPMerge, {"alpha": 0.5, "beta": math.inf}, "beta"),
    (CheckpointMerge, {"alpha": -math.inf, "beta": 0.25}, "alpha"),
    (CalcModeOption, {"gamma": math.nan, "seed": 0}, "gamma"),
])
def test_non_finite_numbers_are_refused_before_the_prompt_runs(node, values, bad):
    message = node.validate_inputs(**values)
    assert isinstance(message, str) and f"input '{bad}'" in message and node.GET_SCHEMA().display_name in message
    assert node.validate_inputs(**{k: (0.5 if k != "seed" else 0) for k in values}) is True
    assert node.validate_inputs(**{k: None for k in values}) is True  # linked inputs are checked at run time


def test_help_pages_list_each_node_s_own_inputs():
    for node in [ModelMerge, CLIPMerge, CheckpointMerge, *NODES]:
        schema = node.GET_SCHEMA()
        text = (DOCS / f"{schema.node_id}.md").read_text(encoding="utf-8")
        section = text.split("## Inputs", 1)[1].split("\n## ", 1)[0]
        for inp in schema.inputs:
            short = inp.id.replace("_preset", "")
            assert f"**{inp.id}**" in section or f"**{short}" in section or f"{inp.id.split('_')[0]}**" in section, \
                (schema.node_id, inp.id)
        if schema.node_id != "MergeSuite_OptionCalcMode":
            assert "**calcmode**" not in section, schema.node_id


def test_swept_alpha_under_block_weights_is_labelled_as_overridden(tiny):
    """Three alphas with a block list are one merge: the recipes agree, the report says alpha was not used,
    and the grid labels say so instead of claiming three different merges."""
    from merge_suite.nodes.sweep import SweepGrid
    a, b = tiny("model", "sd1", 1), tiny("model", "sd1", 2)
    runs = [ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=x, beta=0.25,
                               blocks_alpha_preset="GRAD_V").result for x in (0.1, 0.5, 0.9)]
    recipes = [r[2] for r in runs]
    assert len(set(recipes)) == 1 and "alpha=" not in recipes[0].replace("blocks_alpha=", "")
    assert "blocks_alpha=GRAD_V" in recipes[0] and "alpha 0.1 not used" in runs[0][1]
    labels = ["alpha=0.1", "alpha=0.5", "alpha=0.9"]
    images = [torch.full((1, 8, 8, 3), v) for v in (0.2, 0.5, 0.8)]
    layout = SweepGrid.execute(images=images, x_labels=labels, recipes=recipes).result[1]
    assert "X: " + " | ".join(f"{x} (overridden by blocks_alpha)" for x in labels) in layout
