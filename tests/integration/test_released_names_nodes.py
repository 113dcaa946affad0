"""Flux.1, Chroma and Flux.2 in the host that runs the suite (0.33 loads their RMSNorm ``….scale`` as
``….weight``, 0.3.75 keeps it): the merge nodes use the family's layout (a named range, a preset), Save
Checkpoint writes the released names and the host's own loader reads the file back, and a file ComfyUI
itself saved merges with the original download into the released names."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import comfy.sd  # noqa: E402
import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402
import tiny_families  # noqa: E402
from test_merge_nodes import base_weights, effective  # noqa: E402

from merge_suite.merge_core.api import merge_files  # noqa: E402
from merge_suite.merge_core.io.safetensors_file import SafetensorsReader  # noqa: E402
from merge_suite.nodes.merge import ModelMerge  # noqa: E402
from merge_suite.nodes.save import SaveCheckpoint  # noqa: E402

UNET, CHECKPOINT = "diffusion_model.", "model.diffusion_model."
FAMILIES = {"flux1-dev": "Flux.1", "chroma": "Chroma", "flux2": "Flux.2"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tiny_families.register()
    root = tmp_path_factory.mktemp("released_names")
    for family in FAMILIES:
        for seed in (1, 2):
            tiny_families.save_diffusion_model(root / "diffusion_models" / f"{family}_{seed}.safetensors", family, seed)
    saved = folder_paths.folder_names_and_paths["diffusion_models"]
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(root / "diffusion_models")],
                                                               folder_paths.supported_pt_extensions)
    yield root
    folder_paths.folder_names_and_paths["diffusion_models"] = saved


def load(name):
    return comfy_nodes.UNETLoader().load_unet(name, "default")[0]


def keys_of(path):
    with SafetensorsReader(str(path)) as r:
        return {k: r.get(k).clone() for k in r.keys()}


def released(family):
    return set(tiny_families.diffusion_state_dict(family, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_nodes_use_the_family_layout(family, folders):
    a, b = load(f"{family}_1.safetensors"), load(f"{family}_2.safetensors")
    merged, report, _ = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=0.3, beta=0.0,
                                           blocks_alpha="D00-D01=0.5").result
    assert report.startswith(FAMILIES[family]), report.splitlines()[0]
    got, wa, wb = effective(merged, UNET), base_weights(a, UNET), base_weights(b, UNET)
    norm = next(k for k in got if k.startswith(UNET + "double_blocks.1.") and "key_norm" in k)
    torch.testing.assert_close(got[norm], (wa[norm].float() + wb[norm].float()) / 2)
    _, report, _ = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=0.3, beta=0.0,
                                      blocks_alpha_preset="GRAD_V").result
    assert report.startswith(FAMILIES[family]) and "automatic" not in report


@pytest.mark.parametrize("family", FAMILIES)
def test_save_checkpoint_writes_the_released_names_and_the_host_loads_them(family, folders):
    a, b = load(f"{family}_1.safetensors"), load(f"{family}_2.safetensors")
    merged = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=0.3, beta=0.0).result[0]
    path = Path(SaveCheckpoint.execute(merged, filename_prefix=f"released/{family}", precision="fp32",
                                       hash_inputs=False).result[0])
    assert set(keys_of(path)) == {CHECKPOINT + k for k in released(family)}
    reloaded = load(f"released/{path.name}")
    want, got = effective(merged, UNET), base_weights(reloaded, UNET)
    assert set(got) == set(want) and all(torch.equal(got[k].float(), want[k]) for k in want)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_file_comfyui_saved_merges_with_the_original(family, folders):
    """ComfyUI's own save (its ModelSave) writes the names its model uses (``.weight`` on 0.33); merged
    from files with an original download, the keys pair up and the result has the released names."""
    own = folders / f"{family}_comfyui_saved.safetensors"
    comfy.sd.save_checkpoint(str(own), load(f"{family}_2.safetensors"))
    original = folders / "diffusion_models" / f"{family}_1.safetensors"
    out = folders / f"{family}_file_merge.safetensors"
    plan = merge_files(str(original), str(own), None, str(out), alpha=0.5)
    assert plan.arch.label == FAMILIES[family]
    kept = [kp.key for kp in plan.keys if kp.action != "merge"]
    assert not kept, kept[:3]
    merged, a = keys_of(out), keys_of(original)
    assert set(merged) == set(a) == released(family)
    b = {k[len(CHECKPOINT):]: v for k, v in keys_of(own).items()}
    b = {k if k in a else k[:-len("weight")] + "scale": v for k, v in b.items()}
    assert all(torch.allclose(merged[k], (a[k].float() + b[k].float()) / 2, atol=1e-6) for k in merged)
