"""File-streamed merge nodes on real tiny checkpoints: the result loads through ComfyUI's own loaders in
every output precision and equals the MODEL-merge node key by key; a second run reuses the file;
an interrupt leaves no file."""
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import comfy.lora  # noqa: F401  (ComfyUI imported through conftest)
import comfy.model_management
import folder_paths

from merge_suite.merge_core.io.precision import PRECISIONS
from merge_suite.nodes import file_merge
from merge_suite.nodes.file_merge import CheckpointFileMerge, DiffusionModelFileMerge
from merge_suite.nodes.merge import CheckpointMerge, ModelMerge

SETTINGS = dict(mode="Weight sum", alpha=0.3, beta=0.25, blocks_alpha_preset="custom",
                blocks_alpha="", blocks_beta_preset="custom", blocks_beta="")
UNET = "diffusion_model."


def effective(model):
    """Each U-Net key as ComfyUI would run it: stored weight through its layer's convert (scale) + patches."""
    out = {}
    for key, kp in model.get_key_patches(UNET).items():
        base, convert = kp[0]
        out[key] = comfy.lora.calculate_weight(kp[1:], convert(base.float().clone()), key)
    return out


@pytest.fixture()
def folders(tmp_path, monkeypatch):
    import tiny_models
    tiny_models.register()
    made = {}
    for kind in ("checkpoints", "diffusion_models"):
        folder = tmp_path / kind
        folder.mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, kind,
                            ([str(folder)], folder_paths.supported_pt_extensions))
        made[kind] = folder
    for name, seed in (("a", 1), ("b", 2)):
        ckpt = tiny_models.save_checkpoint(made["checkpoints"] / f"tiny_{name}.safetensors", "sd1", seed,
                                           all_random=True)
        sd = load_file(ckpt)
        save_file({k[len("model.diffusion_model."):]: v for k, v in sd.items()
                   if k.startswith("model.diffusion_model.")}, made["diffusion_models"] / f"unet_{name}.safetensors")
    return made


def node_merge_reference():
    import nodes as comfy_nodes
    (ma, ca, _), (mb, cb, _) = (comfy_nodes.CheckpointLoaderSimple().load_checkpoint(f"tiny_{n}.safetensors")[:3]
                                for n in "ab")
    model = CheckpointMerge.execute(ma, ca, mb, cb, **SETTINGS).result[0]
    return effective(model)


def files_in(folder):
    return sorted(p for p in os.listdir(folder) if not p.startswith("tiny_") and not p.startswith("unet_"))


# bf16: per tensor (rel None), as loaded on this CPU build elementwise errors reached ~1.5 % at small values
TOLERANCE = {"fp32": (1e-6, 1e-7), "fp16": (2 ** -11, 2 ** -24), "bf16": (None, None),
             "fp8_e4m3fn": (2 ** -4, 2 ** -9), "scaled_fp8": (None, None), "as A": (1e-6, 1e-7)}


@pytest.mark.parametrize("precision", ["as A", *PRECISIONS])
def test_checkpoint_file_merge_loads_and_equals_the_model_merge_node(folders, precision):
    ref = node_merge_reference()
    out = CheckpointFileMerge.execute("tiny_a.safetensors", "tiny_b.safetensors", precision=precision,
                                      filename_prefix="merged/x", **SETTINGS).result
    model, clip, vae, name = out
    assert name.startswith(os.path.join("merged", "x_")) and name.endswith("_.safetensors")
    assert clip is not None and vae is not None
    got = effective(model)
    assert set(ref) <= set(got) and all(k.endswith(("scale_weight", "scale_input")) for k in set(got) - set(ref))
    rel, floor = TOLERANCE[precision]
    for key, want in ref.items():
        err = (got[key] - want).detach().abs()
        want = want.detach()
        if rel is None:  # per-tensor scale: error within fp8's step at the tensor's largest value
            assert float(err.max()) <= 2 ** -4 * float(want.abs().max()) + 2 ** -9 * float(want.abs().max()), key
        else:
            assert bool((err <= rel * want.abs() + floor).all()), (key, float(err.max()))
    if precision == "scaled_fp8":
        assert model.model.model_config.scaled_fp8 == torch.float8_e4m3fn


def test_second_identical_run_reuses_the_file_and_settings_change_the_name(folders, monkeypatch):
    calls = []
    real = file_merge.merge_files
    monkeypatch.setattr(file_merge, "merge_files", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = CheckpointFileMerge.execute("tiny_a.safetensors", "tiny_b.safetensors", **SETTINGS).result[-1]
    again = CheckpointFileMerge.execute("tiny_a.safetensors", "tiny_b.safetensors", **SETTINGS).result[-1]
    assert first == again and len(calls) == 1
    other = CheckpointFileMerge.execute("tiny_a.safetensors", "tiny_b.safetensors",
                                        **dict(SETTINGS, alpha=0.31)).result[-1]
    assert other != first and len(calls) == 2
    meta_key = file_merge.CONTENT_KEY
    from merge_suite.merge_core.io.safetensors_file import SafetensorsReader
    with SafetensorsReader(folders["checkpoints"] / first) as r:
        assert meta_key in r.metadata and "merge_suite_recipe" in r.metadata


def test_interrupt_leaves_no_file(folders):
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            CheckpointFileMerge.execute("tiny_a.safetensors", "tiny_b.safetensors", **SETTINGS)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    leftovers = [p for _, _, fs in os.walk(folders["checkpoints"]) for p in fs if not p.startswith("tiny_")]
    assert leftovers == []


def test_diffusion_model_file_merge_scaled_fp8_loads_with_unet_loader(folders):
    import nodes as comfy_nodes
    ma, mb = (comfy_nodes.UNETLoader().load_unet(f"unet_{n}.safetensors", "default")[0] for n in "ab")
    ref_model = ModelMerge.execute(model_a=ma, model_b=mb, **SETTINGS).result[0]
    ref = effective(ref_model)
    model, name = DiffusionModelFileMerge.execute("unet_a.safetensors", "unet_b.safetensors",
                                                  precision="scaled_fp8", **SETTINGS).result
    stored = load_file(folders["diffusion_models"] / name)
    assert stored["scaled_fp8"].dtype == torch.float8_e4m3fn
    assert model.model.model_config.scaled_fp8 == torch.float8_e4m3fn
    got = effective(model)
    for key, want in ref.items():
        assert float((got[key] - want).abs().max()) <= 2 ** -3 * float(want.abs().max()) + 1e-12, key


def test_missing_file_is_a_one_line_error_naming_the_input(folders):
    from merge_suite.nodes.errors import MergeNodeError
    with pytest.raises(MergeNodeError, match="file_b.*not in the checkpoints folder"):
        CheckpointFileMerge.execute("tiny_a.safetensors", "nope.safetensors", **SETTINGS)
    assert files_in(folders["checkpoints"]) == []
