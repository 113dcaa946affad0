"""The merge nodes on Krea 2, LongCat-Image and AuraFlow, with tiny models from ComfyUI's own classes
(demo/tiny_image_models.py) loaded through UNETLoader: named block weights and elemental rules give the formula
(block ratios from the independent transcription, tests/unit/spec_image_models.py), the node and the CLI agree,
a saved merge reloads, LoRA block weights follow the formula, Combine Models runs, the elements browser lists
the family, and the merge equals core ComfyUI's own ModelMergeKrea2 / ModelMergeAuraflow on every key.

Krea 2 and LongCat-Image exist from ComfyUI 0.33 on: on an older host their tests skip with the reason.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import spec_image_models as spec  # noqa: E402
import tiny_image_models as tiny  # noqa: E402
from family_node_checks import (ALPHA, UNET, LoadedUnets, check_combine_ties, check_elements_browser,  # noqa: E402
                                check_formula, check_kohya_lora, check_node_and_cli, check_save_reloads,
                                check_unet_loader, family_params, lora_folder, model_folders)
from spec_families import KEEP  # noqa: E402
from test_family_nodes import as_released  # noqa: E402
from test_merge_nodes import effective  # noqa: E402

from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.merge import ModelMerge  # noqa: E402

# family: (named block weights, {block: ratio} they set, elemental rule (block, substring, ratio), layout name,
#          a block and one of its elements for the browser)
FAMILIES = {
    "krea2": ("TL00-TR01=0.2, B01=0.7, OUT=0.1", {"TL00": .2, "TL01": .2, "TP": .2, "TR00": .2, "TR01": .2,
                                                 "B01": .7, "OUT": .1}, ("B00", "attn.w", 0.9), "krea2",
              ("TR01", "attn.wq")),
    "longcat-image": ("D00-D01=0.2, S02=0.7, OUT=0.1", {"D00": .2, "D01": .2, "S02": .7, "OUT": .1},
                      ("S00", "linear1", 0.9), "longcat_image", ("S19", "linear1")),
    "auraflow": ("IN=0.8, D01=0.1, S01=0.6", {"IN": .8, "D01": .1, "S01": .6}, ("D00", "attn", 0.05), "auraflow",
                 ("D03", "attn.w1q")),
}
CORE_NODES = {"krea2": "ModelMergeKrea2", "auraflow": "ModelMergeAuraflow"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    yield from model_folders(tmp_path_factory, tiny, FAMILIES, "image_families")


unet = LoadedUnets()


def block_of(family, rel):
    return spec.TRANSCRIPTIONS[family](rel)


def ratio(family, rel, elemental=True):
    _, ratios, (block, element, value), _, _ = FAMILIES[family]
    b = block_of(family, rel)
    assert b != KEEP, f"{rel}: every key of the tiny {family} belongs to a block"
    if elemental and b == block and element in rel:
        return value
    return ratios.get(b, ALPHA)


def elemental_text(family):
    block, element, value = FAMILIES[family][2]
    return f"{block}:{element}:{value}"


@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_unet_loader_loads_each_tiny_family(family, folders):
    check_unet_loader(unet(family, 1), folders, family, as_released)


@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_named_block_weights_and_elemental_give_the_formula(family, folders):
    check_formula(unet(family, 1), unet(family, 2), FAMILIES[family][0], elemental_text(family),
                  lambda rel: ratio(family, rel), FAMILIES[family][2][2], as_released)


@pytest.mark.parametrize("case", ["blocks+elemental", "add difference"])
@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_node_and_cli_agree_on_every_key(family, case, folders):
    check_node_and_cli(folders, family, case, unet, FAMILIES[family][0], elemental_text(family), as_released)


@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_save_checkpoint_of_a_merge_reloads_through_unet_loader(family, folders):
    check_save_reloads(folders, family, unet(family, 1), unet(family, 2), FAMILIES[family][0])


@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_kohya_lora_with_block_weights_follows_the_formula(family, folders):
    named, ratios = FAMILIES[family][:2]
    check_kohya_lora(unet(family, 1), lora_folder(folders), f"{family}_lora.safetensors", 9, named, ratios,
                     lambda rel: block_of(family, rel), lambda model: effective(model, UNET))


@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_combine_models_ties_runs(family, folders):
    base, m1, m2 = (unet(family, s) for s in (1, 2, 3))
    check_combine_ties(base, [m1, m2], alpha=1.0, density=0.5)


@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_elements_browser_lists_the_family(family, folders):
    layout, (block, element) = FAMILIES[family][3], FAMILIES[family][4]
    check_elements_browser(layout, block, element, unet(family, 1), FAMILIES[family][2][0])


@pytest.mark.parametrize("family", family_params(tiny, CORE_NODES))
def test_parity_with_cores_model_merge_node(family, folders):
    """Core's sliders (one per module; the modules this pack groups into IN/OUT all get that block's ratio)
    set to the pack's per-block ratios: the same weights on every key. Core's slider is model1's share."""
    core = pytest.importorskip("comfy_extras.nodes_model_merging_model_specific")
    node = getattr(core, CORE_NODES[family], None)
    if node is None:
        pytest.skip(f"this ComfyUI has no {CORE_NODES[family]}")
    sliders = [name for name in node.INPUT_TYPES()["required"] if name not in ("model1", "model2")]
    a, b = unet(family, 1), unet(family, 2)
    named, ratios = FAMILIES[family][:2]
    values = {s: 1.0 - ratios.get(block_of(family, s), ALPHA) for s in sliders}
    by_core = effective(node().merge(a, b, **values)[0], UNET)
    merged, report, _ = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=ALPHA, beta=0.0,
                                           blocks_alpha=named).result
    by_pack = effective(merged, UNET)
    unreached = [k for k in by_core if not any(k[len(UNET):].startswith(s) for s in sliders)]
    assert not unreached, f"keys no core slider reaches: {unreached}"
    assert set(by_core) == set(by_pack)
    exact = sum(torch.equal(by_core[k], by_pack[k]) for k in by_core)
    for key in by_core:
        torch.testing.assert_close(by_pack[key], by_core[key], rtol=2e-7, atol=1e-7, msg=key)
    print(f"{family}: {exact} of {len(by_core)} keys bit-exact with {CORE_NODES[family]}")


@pytest.mark.skipif(bool(tiny.missing("krea2")), reason=tiny.missing("krea2") or "-")
def test_two_families_merged_together_name_both(folders):
    with pytest.raises(MergeNodeError, match=r"Merge Models: input 'model_b': is an AuraFlow model but model A "
                                             r"is Krea 2: two different families"):
        ModelMerge.execute(model_a=unet("krea2", 1), model_b=unet("auraflow", 1), mode="Weight sum", alpha=0.5,
                           beta=0.0)
