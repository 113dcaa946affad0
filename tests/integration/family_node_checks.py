"""The model folder, the loader and the checks each family group's node tests (test_family_nodes_cosmos,
_image_models, _video_models) run over its own table of families and its tiny module (demo/tiny_*.py).

Each check takes what differs between the groups (the family's block ratios, named block weights, elemental
rule, how a MODEL's keys map to the released names) as arguments; the assertions are the same for all.
"""
from pathlib import Path

import folder_paths
import nodes as comfy_nodes
import pytest
import torch
from safetensors.torch import save_file
from test_family_nodes import read
from test_lora_family_nodes import file_delta, kohya_targets
from test_merge_nodes import base_weights, effective

from merge_suite.merge_core import cli
from merge_suite.nodes.analysis import ElementsBrowser
from merge_suite.nodes.combine import CombineModels
from merge_suite.nodes.lora import LoraApply
from merge_suite.nodes.merge import ModelMerge
from merge_suite.nodes.routes import block_elements
from merge_suite.nodes.save import SaveCheckpoint

UNET = "diffusion_model."
ALPHA = 0.3


def same(weights):
    return weights


def family_params(tiny, families):
    """The families as test parameters, each skipped with the reason where this ComfyUI cannot build it."""
    return [pytest.param(f, marks=pytest.mark.skipif(bool(tiny.missing(f)), reason=tiny.missing(f) or "-"))
            for f in families]


def model_folders(tmp_path_factory, tiny, families, name):
    """Diffusion-model files (seeds 1, 2, 3) of every tiny family this host has, in the diffusion_models folder
    while the generator is open (a module fixture yields from it)."""
    tiny.register()
    root = tmp_path_factory.mktemp(name)
    unets = root / "diffusion_models"
    for family in families:
        if not tiny.missing(family):
            for seed in (1, 2, 3):
                tiny.save_diffusion_model(unets / f"{family}_{seed}.safetensors", family, seed)
    saved = folder_paths.folder_names_and_paths["diffusion_models"]
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(unets)], folder_paths.supported_pt_extensions)
    yield root
    folder_paths.folder_names_and_paths["diffusion_models"] = saved


class LoadedUnets:
    """A family's model as UNETLoader loads it (cached: merges never modify their inputs)."""

    def __init__(self):
        self.cache = {}

    def __call__(self, family, seed):
        if (family, seed) not in self.cache:
            self.cache[family, seed] = comfy_nodes.UNETLoader().load_unet(f"{family}_{seed}.safetensors",
                                                                          "default")[0]
        return self.cache[family, seed]


def lora_folder(folders):
    """A LoRA folder beside the model files, registered with ComfyUI."""
    folder = folders / "loras"
    folder.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    return folder


def check_unet_loader(model, folders, family, naming=same):
    """UNETLoader's model holds the stored file's weights under its keys, with the tiny config. Returns them."""
    stored = read(folders / "diffusion_models" / f"{family}_1.safetensors")
    loaded = naming(base_weights(model, UNET))
    assert set(loaded) == {UNET + k for k in stored}
    assert all(torch.equal(loaded[UNET + k].float(), t.float()) for k, t in stored.items())
    assert type(model.model.model_config).__name__.startswith("Tiny")
    return stored


def check_formula(a, b, blocks_alpha, elemental, ratio, elemental_ratio, naming=same):
    """Weight sum with named block weights and an elemental rule: every key is A * (1 - r) + B * r with
    ``ratio(rel)`` its r; the rule reaches some key; model A is untouched."""
    before = base_weights(a, UNET)
    merged, report, _ = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=ALPHA, beta=0.0,
                                           blocks_alpha=blocks_alpha, options={"elemental": elemental}).result
    got, wa, wb = naming(effective(merged, UNET)), naming(before), naming(base_weights(b, UNET))
    assert set(got) == set(wa) and "not used" not in report
    elemental_hits = 0
    for key, w in got.items():
        r = ratio(key[len(UNET):])
        elemental_hits += r == elemental_ratio
        torch.testing.assert_close(w, wa[key].float() * (1 - r) + wb[key].float() * r, rtol=1e-5, atol=1e-6, msg=key)
    assert elemental_hits > 0
    after = base_weights(a, UNET)
    assert all(torch.equal(after[k], before[k]) for k in before), "model A untouched"


def check_node_and_cli(folders, family, case, unet, blocks_alpha, elemental, naming=same):
    """Merge Models and the CLI, on the same files, agree at every key (and on which keys keep model A's)."""
    a = unet(family, 1)  # first: where the family cannot be built, ``unet`` skips before the CLI runs
    files = [str(folders / "diffusion_models" / f"{family}_{s}.safetensors") for s in (1, 2, 3)]
    out = folders / f"cli_{family}_{case.replace(' ', '_')}.safetensors"
    if case == "add difference":
        argv = ["merge", *files, "--mode", "add_difference", "--alpha", "0.6"]
        params = dict(mode="Add difference", alpha=0.6, model_c=unet(family, 3))
    else:
        argv = ["merge", *files[:2], "--alpha", str(ALPHA), "--blocks", blocks_alpha, "--elemental", elemental]
        params = dict(mode="Weight sum", alpha=ALPHA, blocks_alpha=blocks_alpha, options={"elemental": elemental})
    assert cli.main(argv + ["--dtype", "fp32", "-o", str(out), "-q"]) == 0
    by_cli = read(out)
    merged = ModelMerge.execute(model_a=a, model_b=unet(family, 2), beta=0.0, **params).result[0]
    by_node = {k[len(UNET):]: v for k, v in naming(effective(merged, UNET)).items()}
    wa = {k[len(UNET):]: v for k, v in naming(base_weights(a, UNET)).items()}
    assert set(by_node) == set(by_cli)
    problems = [k for k, x in by_cli.items() if torch.equal(x, wa[k]) != torch.equal(by_node[k], wa[k])
                or not torch.allclose(x.double(), by_node[k].double(), rtol=1e-5, atol=1e-6)]
    assert not problems, f"{len(problems)} keys differ, e.g. {problems[:5]}"


def check_save_reloads(folders, family, a, b, blocks_alpha):
    """Save Checkpoint of a merge writes a diffusion-model file that UNETLoader reloads with the merged weights."""
    merged = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=0.4, beta=0.0,
                                blocks_alpha=blocks_alpha).result[0]
    path = Path(SaveCheckpoint.execute(merged, filename_prefix=f"saved/{family}", precision="fp32",
                                       hash_inputs=False).result[0])
    assert path.parent.parent == folders / "diffusion_models"
    reloaded = comfy_nodes.UNETLoader().load_unet(f"saved/{path.name}", "default")[0]
    assert type(reloaded.model.model_config).__name__.startswith("Tiny")
    want, got = effective(merged, UNET), base_weights(reloaded, UNET)
    assert set(got) == set(want) and all(torch.equal(got[k].float(), want[k]) for k in want)


def write_kohya_lora(path, model, seed, keep=lambda key: True, alpha=True):
    """A rank-2 kohya LoRA of the model's linear layers that ``keep`` accepts (by model key). Returns it."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for kname, key, (out_dim, in_dim) in kohya_targets(model):
        if not keep(key):
            continue
        sd[f"{kname}.lora_up.weight"] = torch.randn(out_dim, 2, generator=gen) * 0.1
        sd[f"{kname}.lora_down.weight"] = torch.randn(2, in_dim, generator=gen) * 0.1
        if alpha:
            sd[f"{kname}.alpha"] = torch.tensor(1.0)
    save_file(sd, str(path))
    return sd


def check_kohya_lora(model, folder, name, seed, blocks_alpha, ratios, block_of, weights):
    """LoRA Apply with block weights: every layer gets 0.8 * its block's ratio of the LoRA's delta.
    ``weights(model)``: the model's effective weights by key."""
    sd = write_kohya_lora(folder / name, model, seed)
    out = LoraApply.execute(model, lora_name=name, strength_model=0.8, block_weights=blocks_alpha).result
    got, base = weights(out[0]), weights(model)
    for kname, key, _ in kohya_targets(model):
        w = 0.8 * ratios.get(block_of(key[len(UNET):]), 1.0)
        torch.testing.assert_close(got[key], base[key] + w * file_delta(sd, kname), rtol=1e-5, atol=1e-6, msg=key)
    assert "weights patched" in out[2]


def check_combine_ties(base, models, **params):
    """Combine Models' TIES over two models runs: every key finite, most of them moved from the base."""
    inputs = dict(method="ties", weights="", drop_rate=0.9, epsilon=0.1, top=0.01, bottom=0.1, iterations=100,
                  seed=0, blocks_alpha_preset="custom", blocks_alpha="") | params
    inputs |= {f"model_{i + 1}": m for i, m in enumerate(models)}
    merged, report, recipe = CombineModels.execute(base=base, **inputs).result
    got, wb = effective(merged, UNET), base_weights(base, UNET)
    assert recipe.startswith("ties(") and "of 2 models" in report and set(got) == set(wb)
    assert all(torch.isfinite(w).all() for w in got.values())
    assert sum(not torch.equal(got[k], wb[k].float()) for k in wb) > len(wb) // 2


def check_elements_browser(layout, block, element, model, model_block):
    """The browser route lists the full-size layout's element; the node lists the model's rows of a block."""
    answer = block_elements(layout, block)
    assert answer["ok"] and element in answer["elements"], answer
    table = ElementsBrowser.execute(block=model_block, match="", model=model).result[0]
    rows = table.splitlines()[2:]
    assert rows and all(r.split()[0] == model_block for r in rows)
