"""The merge nodes on LTXV, LTX-2, Mochi, HunyuanVideo, HunyuanImage 2.1 and Kandinsky 5, with tiny models from
ComfyUI's own classes (demo/tiny_video_models.py) loaded through UNETLoader: named block weights and elemental
rules give the formula (block ratios from the independent transcription, tests/unit/spec_video_models.py), the
node and the CLI agree, a saved merge reloads, LoRA block weights follow the formula, Combine Models runs, the
elements browser lists the family, and the merge equals core ComfyUI's own ModelMergeLTXV /
ModelMergeMochiPreview on every key their sliders reach.

LTX-2 and Kandinsky 5 exist from ComfyUI 0.33 on: on an older host their tests skip with the reason.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import spec_video_models as spec  # noqa: E402
import tiny_video_models as tiny  # noqa: E402
from core_parity import compare, core_node  # noqa: E402
from family_node_checks import (ALPHA, UNET, LoadedUnets, check_combine_ties, check_elements_browser,  # noqa: E402
                                check_formula, check_kohya_lora, check_node_and_cli, check_save_reloads,
                                check_unet_loader, family_params, lora_folder, model_folders, write_kohya_lora)
from spec_families import KEEP  # noqa: E402
from test_merge_nodes import effective  # noqa: E402

from merge_suite.merge_core.architectures import detect  # noqa: E402
from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.lora import LoraApply  # noqa: E402
from merge_suite.nodes.merge import ModelMerge  # noqa: E402

# family: (named block weights, {block: ratio} they set, elemental rule (block, substring, ratio), layout name,
#          a block of the full-size layout and one of its elements for the browser)
FAMILIES = {
    "ltxv": ("IN=0.8, T01=0.1, OUT=0.6", {"IN": .8, "T01": .1, "OUT": .6}, ("T00", "attn1", 0.9), "ltxv",
             ("T27", "attn2.to_k")),
    "ltx2": ("T00=0.2, IN=0.7, OUT=0.1", {"T00": .2, "IN": .7, "OUT": .1}, ("T01", "audio_", 0.95), "ltx2",
             ("T47", "audio_to_video_attn.to_q")),
    "mochi": ("B00-B01=0.2, OUT=0.9", {"B00": .2, "B01": .2, "OUT": .9}, ("B02", "attn.qkv_x", 0.05), "mochi",
              ("B47", "mlp_x.w1")),
    "hunyuan-video": ("D00-D01=0.2, S02=0.7, OUT=0.1", {"D00": .2, "D01": .2, "S02": .7, "OUT": .1},
                      ("S00", "linear1", 0.9), "hunyuan_video", ("D19", "img_attn.qkv")),
    "hunyuan-image-21": ("IN=0.9, S00-S01=0.4", {"IN": .9, "S00": .4, "S01": .4}, ("D01", "txt_mlp", 0.6),
                         "hunyuan_image21", ("S39", "linear2")),
    "kandinsky5": ("TX00-TX01=0.8, V02=0.15", {"TX00": .8, "TX01": .8, "V02": .15}, ("V00", "self_attention", 0.5),
                   "kandinsky5", ("V31", "cross_attention.to_query")),
}
TRANSCRIPTIONS = {family: spec.TRANSCRIPTIONS[tiny.RELEASED[family]] for family in FAMILIES}
CORE_NODES = {"ltxv": "ModelMergeLTXV", "mochi": "ModelMergeMochiPreview"}
# keys of the tiny models that no slider of core's node names (core gives them its first slider's ratio; this
# pack merges them by their own block): Mochi's patch embedding has no slider, and its slider
# ``pos_frequencies.`` misses the bare parameter ``pos_frequencies``
UNREACHED = {"ltxv": [], "mochi": ["pos_frequencies", "x_embedder.proj.bias", "x_embedder.proj.weight"]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    yield from model_folders(tmp_path_factory, tiny, FAMILIES, "video_families")


unet = LoadedUnets()


def block_of(family, rel):
    return TRANSCRIPTIONS[family](rel)


def ratio(family, rel):
    _, ratios, (block, element, value), _, _ = FAMILIES[family]
    b = block_of(family, rel)
    assert b != KEEP, f"{rel}: every key of the tiny {family} belongs to a block"
    if b == block and element in rel:
        return value
    return ratios.get(b, ALPHA)


def elemental_text(family):
    block, element, value = FAMILIES[family][2]
    return f"{block}:{element}:{value}"


@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_unet_loader_loads_each_tiny_family(family, folders):
    stored = check_unet_loader(unet(family, 1), folders, family)
    assert detect(list(stored)).name == FAMILIES[family][3]


@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_named_block_weights_and_elemental_give_the_formula(family, folders):
    check_formula(unet(family, 1), unet(family, 2), FAMILIES[family][0], elemental_text(family),
                  lambda rel: ratio(family, rel), FAMILIES[family][2][2])


@pytest.mark.parametrize("case", ["blocks+elemental", "add difference"])
@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_node_and_cli_agree_on_every_key(family, case, folders):
    check_node_and_cli(folders, family, case, unet, FAMILIES[family][0], elemental_text(family))


@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_save_checkpoint_of_a_merge_reloads_through_unet_loader(family, folders):
    check_save_reloads(folders, family, unet(family, 1), unet(family, 2), FAMILIES[family][0])


@pytest.mark.parametrize("family", family_params(tiny, FAMILIES))
def test_kohya_lora_with_block_weights_follows_the_formula(family, folders):
    """No metadata in the LoRA file: its module names name the family."""
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
    set to the pack's distinct per-block ratios: the same weights on every key a slider reaches (within float32
    rounding: core computes A * r + B * (1 - r), this pack A + (B - A) * alpha)."""
    node = core_node(CORE_NODES[family])
    if node is None:
        pytest.skip(f"this ComfyUI has no {CORE_NODES[family]}")
    a, b = unet(family, 1), unet(family, 2)
    arch = detect(list(a.get_key_patches(UNET)))
    found = compare(node, a, b, list(arch.blocks), lambda rel: block_of(family, rel))
    assert found["reached"] > 0 and found["kept"] == []
    assert sorted(found["unreached"]) == [UNET + k for k in UNREACHED[family]]


@pytest.mark.skipif(bool(tiny.missing("ltx2")), reason=tiny.missing("ltx2") or "-")
def test_two_families_merged_together_name_both(folders):
    with pytest.raises(MergeNodeError, match=r"Merge Models: input 'model_b': is an? LTX-2 model but model A "
                                             r"is LTXV: two different families"):
        ModelMerge.execute(model_a=unet("ltxv", 1), model_b=unet("ltx2", 1), mode="Weight sum", alpha=0.5,
                           beta=0.0)


@pytest.mark.parametrize("family", family_params(tiny, ["hunyuan-video", "ltx2"]))
def test_a_lora_of_blocks_only_applies_to_its_own_model(family, folders):
    """A HunyuanVideo LoRA of its blocks alone reads as Flux.1 by names, an LTX-2 one of a few video blocks as
    LTXV: the model's own family explains the names too, so the LoRA applies to it instead of being refused."""
    model = unet(family, 1)
    write_kohya_lora(lora_folder(folders) / f"{family}_blocks.safetensors", model, 4, alpha=False,
                     keep=lambda key: block_of(family, key[len(UNET):]) not in ("IN", "OUT"))  # the blocks alone
    out = LoraApply.execute(model, lora_name=f"{family}_blocks.safetensors", strength_model=1.0).result
    got, base = effective(out[0], UNET), effective(model, UNET)
    changed = [k for k in got if not torch.equal(got[k], base[k])]
    assert changed and all(block_of(family, k[len(UNET):]) not in ("IN", "OUT") for k in changed)
