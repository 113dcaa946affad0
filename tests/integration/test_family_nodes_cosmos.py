"""The merge and LoRA nodes on Cosmos 1, Cosmos-Predict2 and Anima, with tiny models built from ComfyUI's own
classes (demo/tiny_cosmos.py) loaded through UNETLoader; parity with core's ModelMergeCosmos* nodes.

Expected weights come from the formula, with block ratios from the independent transcription of the block
rules (tests/unit/spec_cosmos.py); the CLI merges the same files and must agree at every key. Anima needs
ComfyUI 0.33: on 0.3.75 its tests skip with the reason.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402
import spec_cosmos as spec  # noqa: E402
import tiny_cosmos  # noqa: E402
from core_parity import compare, core_node  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from spec_families import KEEP  # noqa: E402
from test_combine_nodes import combine  # noqa: E402
from test_family_nodes import UNET, base_weights, effective, read  # noqa: E402
from test_lora_family_nodes import effective as patched, file_delta, kohya_targets  # noqa: E402

from merge_suite.merge_core import cli  # noqa: E402
from merge_suite.merge_core.architectures import detect_or_auto  # noqa: E402
from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.lora import LoraApply  # noqa: E402
from merge_suite.nodes.merge import ModelMerge  # noqa: E402
from merge_suite.nodes.routes import block_elements  # noqa: E402
from merge_suite.nodes.save import SaveCheckpoint  # noqa: E402

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
ALPHA = 0.3


def need(family):
    reason = tiny_cosmos.missing(family)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Diffusion-model files (seeds 1, 2, 3) of every tiny family this ComfyUI has, in its model folder."""
    tiny_cosmos.register()
    root = tmp_path_factory.mktemp("cosmos_families")
    unets = root / "diffusion_models"
    for family in FAMILIES:
        if tiny_cosmos.missing(family) is None:
            for seed in (1, 2, 3):
                tiny_cosmos.save_diffusion_model(unets / f"{family}_{seed}.safetensors", family, seed)
    saved = folder_paths.folder_names_and_paths["diffusion_models"]
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(unets)], folder_paths.supported_pt_extensions)
    yield root
    folder_paths.folder_names_and_paths["diffusion_models"] = saved


LOADED = {}


def unet(family, seed):
    """A family's model as UNETLoader loads it (cached: merges never modify their inputs)."""
    need(family)
    if (family, seed) not in LOADED:
        LOADED[family, seed] = comfy_nodes.UNETLoader().load_unet(f"{family}_{seed}.safetensors", "default")[0]
    return LOADED[family, seed]


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_loader_loads_each_tiny_family(family, folders):
    model = unet(family, 1)
    stored = read(folders / "diffusion_models" / f"{family}_1.safetensors")
    loaded = base_weights(model, UNET)
    assert set(loaded) == {UNET + k for k in stored}
    assert all(torch.equal(loaded[UNET + k].float(), t.float()) for k, t in stored.items())
    assert type(model.model.model_config).__name__.startswith("Tiny")


def ratio_of(family, rel):
    block_of, _, ratios, _, (block, element, value) = FAMILIES[family]
    here = block_of(rel)
    assert here != KEEP, f"{rel}: every key of the tiny {family} belongs to a block"
    return value if here == block and element in rel else ratios.get(here, ALPHA)


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_models_gives_the_formula_with_named_block_weights_and_elemental(family, folders):
    _, named, _, elemental, _ = FAMILIES[family]
    a, b = unet(family, 1), unet(family, 2)
    before = base_weights(a, UNET)
    merged, report, _ = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=ALPHA, beta=0.0,
                                           blocks_alpha=named, options={"elemental": elemental}).result
    got, wb = effective(merged, UNET), base_weights(b, UNET)
    assert set(got) == set(before) and "not used" not in report
    elemental_hits = 0
    for key, w in got.items():
        r = ratio_of(family, key[len(UNET):])
        elemental_hits += r == FAMILIES[family][4][2]
        torch.testing.assert_close(w, before[key].float() * (1 - r) + wb[key].float() * r, rtol=1e-5, atol=1e-6,
                                   msg=key)
    assert elemental_hits > 0
    after = base_weights(a, UNET)
    assert all(torch.equal(after[k], before[k]) for k in before), "model A untouched"


@pytest.mark.parametrize("case", ["blocks+elemental", "add difference"])
@pytest.mark.parametrize("family", FAMILIES)
def test_node_and_cli_agree_on_every_key(family, case, folders):
    _, named, _, elemental, _ = FAMILIES[family]
    a, b, c = (unet(family, s) for s in (1, 2, 3))
    files = [str(folders / "diffusion_models" / f"{family}_{s}.safetensors") for s in (1, 2, 3)]
    out = folders / f"cli_{family}_{case.replace(' ', '_')}.safetensors"
    if case == "add difference":
        argv = ["merge", *files, "--mode", "add_difference", "--alpha", "0.6"]
        params = dict(mode="Add difference", alpha=0.6, model_c=c)
    else:
        argv = ["merge", *files[:2], "--alpha", str(ALPHA), "--blocks", named, "--elemental", elemental]
        params = dict(mode="Weight sum", alpha=ALPHA, blocks_alpha=named, options={"elemental": elemental})
    assert cli.main(argv + ["--dtype", "fp32", "-o", str(out), "-q"]) == 0
    by_cli = read(out)
    merged = ModelMerge.execute(model_a=a, model_b=b, beta=0.0, **params).result[0]
    by_node = {k[len(UNET):]: v for k, v in effective(merged, UNET).items()}
    wa = {k[len(UNET):]: v for k, v in base_weights(a, UNET).items()}
    assert set(by_node) == set(by_cli)
    problems = [k for k, x in by_cli.items() if torch.equal(x, wa[k]) != torch.equal(by_node[k], wa[k])
                or not torch.allclose(x.double(), by_node[k].double(), rtol=1e-5, atol=1e-6)]
    assert not problems, f"{len(problems)} keys differ, e.g. {problems[:5]}"


@pytest.mark.parametrize("family", FAMILIES)
def test_save_checkpoint_of_a_merge_reloads_through_unet_loader(family, folders):
    merged = ModelMerge.execute(model_a=unet(family, 1), model_b=unet(family, 2), mode="Weight sum", alpha=0.4,
                                beta=0.0, blocks_alpha=FAMILIES[family][1]).result[0]
    path = Path(SaveCheckpoint.execute(merged, filename_prefix=f"saved/{family}", precision="fp32",
                                       hash_inputs=False).result[0])
    assert path.parent.parent == folders / "diffusion_models"
    reloaded = comfy_nodes.UNETLoader().load_unet(f"saved/{path.name}", "default")[0]
    assert type(reloaded.model.model_config).__name__.startswith("Tiny")
    want, got = effective(merged, UNET), base_weights(reloaded, UNET)
    assert set(got) == set(want) and all(torch.equal(got[k].float(), want[k]) for k in want)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cosmos_loras")
    folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    return folder


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_lora_with_block_weights_follows_the_formula(family, folders, loras):
    """Every linear layer, kohya-named; Predict2's names are Wan's LoRA group, which a Predict2 model accepts."""
    model = unet(family, 1)
    gen = torch.Generator().manual_seed(11)
    sd = {}
    for kname, _, (out_dim, in_dim) in kohya_targets(model):
        sd[f"{kname}.lora_up.weight"] = torch.randn(out_dim, 2, generator=gen) * 0.1
        sd[f"{kname}.lora_down.weight"] = torch.randn(2, in_dim, generator=gen) * 0.1
        sd[f"{kname}.alpha"] = torch.tensor(1.0)
    name = f"{family}_kohya.safetensors"
    save_file(sd, str(loras / name))
    block_of, named, ratios = FAMILIES[family][:3]
    out = LoraApply.execute(model, lora_name=name, strength_model=0.8, block_weights=named).result
    got, base = patched(out[0]), patched(model)
    for kname, key, _ in kohya_targets(model):
        w = 0.8 * ratios.get(block_of(key[len(UNET):]), 1.0)
        torch.testing.assert_close(got[key], base[key] + w * file_delta(sd, kname), rtol=1e-5, atol=1e-6)
    assert "weights patched" in out[2]


@pytest.mark.parametrize("family", FAMILIES)
def test_combine_models_ties_runs(family, folders):
    base, *models = (unet(family, s) for s in (1, 2, 3))
    merged, report, _ = combine(base, models, method="ties", alpha=0.5)
    got, wb = effective(merged, UNET), base_weights(base, UNET)
    assert "of 2 models" in report and set(got) == set(wb)
    assert all(torch.isfinite(w).all() for w in got.values())
    assert sum(not torch.equal(got[k], wb[k].float()) for k in got) > len(got) // 2


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
