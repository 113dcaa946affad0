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
import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402
import spec_video_models as spec  # noqa: E402
import tiny_video_models as tiny  # noqa: E402
from core_parity import compare, core_node  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from spec_families import KEEP  # noqa: E402
from test_family_nodes import read  # noqa: E402
from test_lora_family_nodes import file_delta, kohya_targets  # noqa: E402
from test_merge_nodes import base_weights, effective  # noqa: E402

from merge_suite.merge_core import cli  # noqa: E402
from merge_suite.merge_core.architectures import detect  # noqa: E402
from merge_suite.nodes.analysis import ElementsBrowser  # noqa: E402
from merge_suite.nodes.combine import CombineModels  # noqa: E402
from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.lora import LoraApply  # noqa: E402
from merge_suite.nodes.merge import ModelMerge  # noqa: E402
from merge_suite.nodes.routes import block_elements  # noqa: E402
from merge_suite.nodes.save import SaveCheckpoint  # noqa: E402

UNET = "diffusion_model."
ALPHA = 0.3
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


def family_params(families):
    return [pytest.param(f, marks=pytest.mark.skipif(bool(tiny.missing(f)), reason=tiny.missing(f) or "-"))
            for f in families]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Diffusion-model files (seeds 1, 2, 3) of every tiny family this host has, in the diffusion_models folder."""
    tiny.register()
    root = tmp_path_factory.mktemp("video_families")
    unets = root / "diffusion_models"
    for family in FAMILIES:
        if not tiny.missing(family):
            for seed in (1, 2, 3):
                tiny.save_diffusion_model(unets / f"{family}_{seed}.safetensors", family, seed)
    saved = folder_paths.folder_names_and_paths["diffusion_models"]
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(unets)], folder_paths.supported_pt_extensions)
    yield root
    folder_paths.folder_names_and_paths["diffusion_models"] = saved


LOADED = {}


def unet(family, seed):
    if (family, seed) not in LOADED:
        LOADED[family, seed] = comfy_nodes.UNETLoader().load_unet(f"{family}_{seed}.safetensors", "default")[0]
    return LOADED[family, seed]


def block_of(family, rel):
    return TRANSCRIPTIONS[family](rel)


def ratio(family, rel):
    _, ratios, (block, element, value), _, _ = FAMILIES[family]
    b = block_of(family, rel)
    if b == block and element in rel:
        return value
    return ratios.get(b, ALPHA)


def elemental_text(family):
    block, element, value = FAMILIES[family][2]
    return f"{block}:{element}:{value}"


@pytest.mark.parametrize("family", family_params(FAMILIES))
def test_unet_loader_loads_each_tiny_family(family, folders):
    model = unet(family, 1)
    stored = read(folders / "diffusion_models" / f"{family}_1.safetensors")
    loaded = base_weights(model, UNET)
    assert set(loaded) == {UNET + k for k in stored}
    assert all(torch.equal(loaded[UNET + k].float(), t.float()) for k, t in stored.items())
    assert type(model.model.model_config).__name__.startswith("Tiny")
    assert detect(list(stored)).name == FAMILIES[family][3]


@pytest.mark.parametrize("family", family_params(FAMILIES))
def test_named_block_weights_and_elemental_give_the_formula(family, folders):
    a, b = unet(family, 1), unet(family, 2)
    wa = base_weights(a, UNET)
    merged, report, _ = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=ALPHA, beta=0.0,
                                           blocks_alpha=FAMILIES[family][0],
                                           options={"elemental": elemental_text(family)}).result
    got, wb = effective(merged, UNET), base_weights(b, UNET)
    assert set(got) == set(wa)
    elemental_hits = 0
    for key, w in got.items():
        rel = key[len(UNET):]
        assert block_of(family, rel) != KEEP, f"{key}: every key of the tiny {family} belongs to a block"
        r = ratio(family, rel)
        elemental_hits += r == FAMILIES[family][2][2]
        torch.testing.assert_close(w, wa[key].float() * (1 - r) + wb[key].float() * r, rtol=1e-5, atol=1e-6, msg=key)
    assert elemental_hits > 0 and "not used" not in report
    after = base_weights(a, UNET)
    assert all(torch.equal(after[k], wa[k]) for k in wa), "model A untouched"


@pytest.mark.parametrize("case", ["blocks+elemental", "add difference"])
@pytest.mark.parametrize("family", family_params(FAMILIES))
def test_node_and_cli_agree_on_every_key(family, case, folders):
    files = [str(folders / "diffusion_models" / f"{family}_{s}.safetensors") for s in (1, 2, 3)]
    out = folders / f"cli_{family}_{case.replace(' ', '_')}.safetensors"
    if case == "add difference":
        argv = ["merge", *files, "--mode", "add_difference", "--alpha", "0.6"]
        params = dict(mode="Add difference", alpha=0.6, model_c=unet(family, 3))
    else:
        argv = ["merge", *files[:2], "--alpha", str(ALPHA), "--blocks", FAMILIES[family][0], "--elemental",
                elemental_text(family)]
        params = dict(mode="Weight sum", alpha=ALPHA, blocks_alpha=FAMILIES[family][0],
                      options={"elemental": elemental_text(family)})
    assert cli.main(argv + ["--dtype", "fp32", "-o", str(out), "-q"]) == 0
    by_cli = read(out)
    a = unet(family, 1)
    merged = ModelMerge.execute(model_a=a, model_b=unet(family, 2), beta=0.0, **params).result[0]
    by_node = {k[len(UNET):]: v for k, v in effective(merged, UNET).items()}
    wa = {k[len(UNET):]: v for k, v in base_weights(a, UNET).items()}
    assert set(by_node) == set(by_cli)
    problems = [k for k, x in by_cli.items() if torch.equal(x, wa[k]) != torch.equal(by_node[k], wa[k])
                or not torch.allclose(x.double(), by_node[k].double(), rtol=1e-5, atol=1e-6)]
    assert not problems, f"{len(problems)} keys differ, e.g. {problems[:5]}"


@pytest.mark.parametrize("family", family_params(FAMILIES))
def test_save_checkpoint_of_a_merge_reloads_through_unet_loader(family, folders):
    merged = ModelMerge.execute(model_a=unet(family, 1), model_b=unet(family, 2), mode="Weight sum", alpha=0.4,
                                beta=0.0, blocks_alpha=FAMILIES[family][0]).result[0]
    path = Path(SaveCheckpoint.execute(merged, filename_prefix=f"saved/{family}", precision="fp32",
                                       hash_inputs=False).result[0])
    assert path.parent.parent == folders / "diffusion_models"
    reloaded = comfy_nodes.UNETLoader().load_unet(f"saved/{path.name}", "default")[0]
    assert type(reloaded.model.model_config).__name__.startswith("Tiny")
    want, got = effective(merged, UNET), base_weights(reloaded, UNET)
    assert set(got) == set(want) and all(torch.equal(got[k].float(), want[k]) for k in want)


@pytest.mark.parametrize("family", family_params(FAMILIES))
def test_kohya_lora_with_block_weights_follows_the_formula(family, folders):
    model = unet(family, 1)
    gen = torch.Generator().manual_seed(9)
    sd = {}
    for kname, _, (out_dim, in_dim) in kohya_targets(model):
        sd[f"{kname}.lora_up.weight"] = torch.randn(out_dim, 2, generator=gen) * 0.1
        sd[f"{kname}.lora_down.weight"] = torch.randn(2, in_dim, generator=gen) * 0.1
        sd[f"{kname}.alpha"] = torch.tensor(1.0)
    lora_dir = folders / "loras"
    lora_dir.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(lora_dir), is_default=True)
    save_file(sd, str(lora_dir / f"{family}_lora.safetensors"))  # no metadata: its module names name the family
    named, ratios = FAMILIES[family][:2]
    out = LoraApply.execute(model, lora_name=f"{family}_lora.safetensors", strength_model=0.8,
                            block_weights=named).result
    got, base = effective(out[0], UNET), effective(model, UNET)
    for kname, key, _ in kohya_targets(model):
        w = 0.8 * ratios.get(block_of(family, key[len(UNET):]), 1.0)
        torch.testing.assert_close(got[key], base[key] + w * file_delta(sd, kname), rtol=1e-5, atol=1e-6, msg=key)
    assert "weights patched" in out[2]


@pytest.mark.parametrize("family", family_params(FAMILIES))
def test_combine_models_ties_runs(family, folders):
    base, m1, m2 = (unet(family, s) for s in (1, 2, 3))
    merged, report, recipe = CombineModels.execute(
        base=base, model_1=m1, model_2=m2, method="ties", alpha=1.0, weights="", density=0.5, drop_rate=0.9,
        epsilon=0.1, top=0.01, bottom=0.1, iterations=100, seed=0, blocks_alpha_preset="custom",
        blocks_alpha="").result
    got, wb = effective(merged, UNET), base_weights(base, UNET)
    assert recipe.startswith("ties(") and "of 2 models" in report
    assert sum(not torch.equal(got[k], wb[k].float()) for k in wb) > len(wb) // 2


@pytest.mark.parametrize("family", family_params(FAMILIES))
def test_elements_browser_lists_the_family(family, folders):
    layout, (block, element) = FAMILIES[family][3], FAMILIES[family][4]
    answer = block_elements(layout, block)
    assert answer["ok"] and element in answer["elements"], answer
    eblock = FAMILIES[family][2][0]
    table = ElementsBrowser.execute(block=eblock, match="", model=unet(family, 1)).result[0]
    rows = table.splitlines()[2:]
    assert rows and all(r.split()[0] == eblock for r in rows)


@pytest.mark.parametrize("family", family_params(CORE_NODES))
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


@pytest.mark.parametrize("family", family_params(["hunyuan-video", "ltx2"]))
def test_a_lora_of_blocks_only_applies_to_its_own_model(family, folders):
    """A HunyuanVideo LoRA of its blocks alone reads as Flux.1 by names, an LTX-2 one of a few video blocks as
    LTXV: the model's own family explains the names too, so the LoRA applies to it instead of being refused."""
    model = unet(family, 1)
    gen = torch.Generator().manual_seed(4)
    sd = {}
    for kname, key, (out_dim, in_dim) in kohya_targets(model):
        if block_of(family, key[len(UNET):]) in ("IN", "OUT"):
            continue  # the blocks alone
        sd[f"{kname}.lora_up.weight"] = torch.randn(out_dim, 2, generator=gen) * 0.1
        sd[f"{kname}.lora_down.weight"] = torch.randn(2, in_dim, generator=gen) * 0.1
    lora_dir = folders / "loras"
    lora_dir.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(lora_dir), is_default=True)
    save_file(sd, str(lora_dir / f"{family}_blocks.safetensors"))
    out = LoraApply.execute(model, lora_name=f"{family}_blocks.safetensors", strength_model=1.0).result
    got, base = effective(out[0], UNET), effective(model, UNET)
    changed = [k for k in got if not torch.equal(got[k], base[k])]
    assert changed and all(block_of(family, k[len(UNET):]) not in ("IN", "OUT") for k in changed)
