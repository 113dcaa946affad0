"""The merge and LoRA nodes on Cosmos 1, Cosmos-Predict2 and Anima, with tiny models built from ComfyUI's own
classes (demo/tiny_cosmos.py) loaded through UNETLoader; parity with core's ModelMergeCosmos* nodes.

Expected weights come from the formula, with block ratios from the independent transcription of the block
rules (tests/unit/spec_cosmos.py); the CLI merges the same files and must agree at every key. Anima needs
ComfyUI 0.33: on 0.3.75 its tests skip with the reason.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import folder_paths  # noqa: E402
import spec_cosmos as spec  # noqa: E402
import tiny_cosmos  # noqa: E402
from core_parity import compare, core_node  # noqa: E402
from family_node_checks import (ALPHA, UNET, LoadedUnets, check_combine_ties, check_formula,  # noqa: E402
                                check_kohya_lora, check_node_and_cli, check_save_reloads, check_unet_loader,
                                model_folders)
from spec_families import KEEP  # noqa: E402
from test_lora_family_nodes import effective as patched  # noqa: E402

from merge_suite.merge_core import cli  # noqa: E402
from merge_suite.merge_core.architectures import detect_or_auto  # noqa: E402
from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.merge import ModelMerge  # noqa: E402
from merge_suite.nodes.routes import block_elements  # noqa: E402

# family: (transcription, named block weights, {block: ratio} they set, elemental rule, (block, element, ratio))
FAMILIES = {
    "cosmos1": (spec.cosmos1_block, "B00=0.2, OUT=0.7", {"B00": .2, "OUT": .7}, "B01:blocks.1.:0.9",
                ("B01", "blocks.1.", .9)),
    "cosmos-predict2": (spec.predict2_block, "IN=0.8, B01-B02=0.1", {"IN": .8, "B01": .1, "B02": .1},
                        "B00:cross_attn:0.95", ("B00", "cross_attn", .95)),
    "anima": (spec.anima_block, "AIN=0.6, A00-A01=0.15, B01=0.4", {"AIN": .6, "A00": .15, "A01": .15, "B01": .4},
              "A01:self_attn:0.85", ("A01", "self_attn", .85)),
}
LABELS = {"cosmos1": "Cosmos 7B/14B", "cosmos-predict2": "Cosmos-Predict2", "anima": "Anima"}


def need(family):
    reason = tiny_cosmos.missing(family)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    yield from model_folders(tmp_path_factory, tiny_cosmos, FAMILIES, "cosmos_families")


LOADED = LoadedUnets()


def unet(family, seed):
    need(family)
    return LOADED(family, seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_loader_loads_each_tiny_family(family, folders):
    check_unet_loader(unet(family, 1), folders, family)


def ratio_of(family, rel):
    block_of, _, ratios, _, (block, element, value) = FAMILIES[family]
    here = block_of(rel)
    assert here != KEEP, f"{rel}: every key of the tiny {family} belongs to a block"
    return value if here == block and element in rel else ratios.get(here, ALPHA)


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_models_gives_the_formula_with_named_block_weights_and_elemental(family, folders):
    _, named, _, elemental, (_, _, value) = FAMILIES[family]
    check_formula(unet(family, 1), unet(family, 2), named, elemental, lambda rel: ratio_of(family, rel), value)


@pytest.mark.parametrize("case", ["blocks+elemental", "add difference"])
@pytest.mark.parametrize("family", FAMILIES)
def test_node_and_cli_agree_on_every_key(family, case, folders):
    _, named, _, elemental, _ = FAMILIES[family]
    check_node_and_cli(folders, family, case, unet, named, elemental)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_checkpoint_of_a_merge_reloads_through_unet_loader(family, folders):
    check_save_reloads(folders, family, unet(family, 1), unet(family, 2), FAMILIES[family][1])


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cosmos_loras")
    folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    return folder


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_lora_with_block_weights_follows_the_formula(family, folders, loras):
    """Every linear layer, kohya-named; Predict2's names are Wan's LoRA group, which a Predict2 model accepts."""
    block_of, named, ratios = FAMILIES[family][:3]
    check_kohya_lora(unet(family, 1), loras, f"{family}_kohya.safetensors", 11, named, ratios, block_of, patched)


@pytest.mark.parametrize("family", FAMILIES)
def test_combine_models_ties_runs(family, folders):
    base, *models = (unet(family, s) for s in (1, 2, 3))
    check_combine_ties(base, models, alpha=0.5, density=0.2)


@pytest.mark.parametrize("layout,block,element", [("cosmos1", "B27", "blocks.1.block.attn.to_k.0"),
                                                  ("cosmos1", "IN", "extra_pos_embedder.pos_emb_t"),
                                                  ("cosmos_predict2", "B27", "cross_attn.k_proj"),
                                                  ("anima", "A05", "cross_attn.q_proj"),
                                                  ("anima", "AOUT", "llm_adapter.out_proj")])
def test_elements_browser_lists_family_elements(layout, block, element):
    answer = block_elements(layout, block)
    assert answer["ok"] and element in answer["elements"], (layout, answer)


# core node: (tiny family, transcription of a diffusion-relative key's block)
CORE = {"ModelMergeCosmos7B": ("cosmos1", spec.cosmos1_block), "ModelMergeCosmos14B": ("cosmos1", spec.cosmos1_block),
        "ModelMergeCosmosPredict2_2B": ("cosmos-predict2", spec.predict2_block),
        "ModelMergeCosmosPredict2_14B": ("cosmos-predict2", spec.predict2_block)}


@pytest.mark.parametrize("name", CORE)
def test_core_node_and_merge_models_agree_on_every_key(name, folders):
    """Core's sliders set to this pack's per-block ratios (core_parity.compare): the same weight on every key
    within float32 rounding; every key of these families is reached by one of core's sliders."""
    node = core_node(name)
    if node is None:
        pytest.skip(f"this ComfyUI has no {name}")
    family, block_of = CORE[name]
    a, b = unet(family, 1), unet(family, 2)
    arch = detect_or_auto(list(a.get_key_patches(UNET)))
    found = compare(node, a, b, list(arch.blocks), block_of)
    assert found["reached"] == len(a.get_key_patches(UNET)) and found["unreached"] == []


def test_two_families_error_names_both(folders):
    with pytest.raises(MergeNodeError, match=r"Merge Models: input 'model_b': is a Cosmos-Predict2 model but model "
                                             r"A is Cosmos 7B/14B: two different families"):
        ModelMerge.execute(model_a=unet("cosmos1", 1), model_b=unet("cosmos-predict2", 1), mode="Weight sum",
                           alpha=0.5, beta=0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_command_prints_each_family_layout(family, folders, capsys):
    need(family)
    path = folders / "diffusion_models" / f"{family}_1.safetensors"
    assert cli.main(["blocks", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{LABELS[family]} (") and "diffusion-model-only file" in out
