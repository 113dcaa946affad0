"""Streaming Save Checkpoint on real ComfyUI objects: reload with CheckpointLoaderSimple, precision,
recipe metadata, atomic write, bad input."""
import json

import pytest
import torch

import folder_paths  # (ComfyUI imported through conftest)
import nodes as comfy_nodes
from effective_weights import effective

from merge_suite.merge_core import recipe as core_recipe
from merge_suite.merge_core.io.safetensors_file import SafetensorsReader
from merge_suite.nodes import save as save_mod
from merge_suite.nodes.errors import MergeNodeError
from merge_suite.nodes.merge import CheckpointMerge
from merge_suite.nodes.save import SaveCheckpoint


UNSAVED = ("position_ids", "logit_scale", "text_projection.weight")  # SD1 CLIP: ComfyUI drops these on save


@pytest.fixture()
def ckpt_dir(tmp_path, monkeypatch):
    import tiny_models
    tiny_models.register()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "checkpoints",
                        ([str(folder)], folder_paths.supported_pt_extensions))
    for name, seed in (("tiny_sd1_a.safetensors", 1), ("tiny_sd1_b.safetensors", 2)):
        tiny_models.save_checkpoint(folder / name, "sd1", seed)
    return folder


def load(name):
    return comfy_nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]


class Hidden:
    def __init__(self, **kw):
        self.prompt, self.extra_pnginfo, self.unique_id = kw.get("prompt"), kw.get("extra_pnginfo"), kw.get("uid")


def merged_pair(monkeypatch):
    (ma, ca, vae), (mb, cb, _) = load("tiny_sd1_a.safetensors"), load("tiny_sd1_b.safetensors")
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1_a.safetensors"}},
              "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1_b.safetensors"}},
              "3": {"class_type": "MergeSuite_CheckpointMerge",
                    "inputs": {"model_a": ["1", 0], "clip_a": ["1", 1], "model_b": ["2", 0], "clip_b": ["2", 1]}}}
    monkeypatch.setattr(CheckpointMerge, "hidden", Hidden(prompt=prompt, uid="3"), raising=False)
    model, clip, _report, recipe = CheckpointMerge.execute(
        model_a=ma, clip_a=ca, model_b=mb, clip_b=cb, mode="Weight sum", alpha=0.3, beta=0.0,
        blocks_alpha_preset="GRAD_V").result
    return model, clip, vae, recipe


@pytest.mark.parametrize("precision", ["fp16", "fp32", "bf16", "fp8_e4m3fn"])
def test_saved_file_reloads_with_the_merged_weights(precision, ckpt_dir, monkeypatch):
    model, clip, vae, recipe = merged_pair(monkeypatch)
    assert recipe.startswith("Weight sum(tiny_sd1_a, tiny_sd1_b)") and "blocks_alpha=GRAD_V" in recipe
    monkeypatch.setattr(SaveCheckpoint, "hidden", Hidden(prompt={"p": 1}, extra_pnginfo={"workflow": {"w": 2}}),
                        raising=False)
    path = SaveCheckpoint.execute(model, clip, vae, filename_prefix="out/merged", precision=precision).result[0]
    assert path.endswith("merged_00001_.safetensors") and (ckpt_dir / "out").is_dir()
    dtype = save_mod.PRECISIONS[precision]
    with SafetensorsReader(path) as r:
        unet_dtypes = {r.tensors[k].dtype for k in r.keys() if k.startswith("model.diffusion_model.")}
        assert unet_dtypes == {dtype}
        meta = r.metadata
    assert json.loads(meta["prompt"]) == {"p": 1} and json.loads(meta["workflow"]) == {"w": 2}
    sm = json.loads(meta["sd_merge_recipe"])
    assert sm["type"] == "sd-webui-supermerger" and sm["mbw"] is True and len(sm["weights_alpha"]) == 25
    models = json.loads(meta["sd_merge_models"])
    assert sm["model_a"] in models and models[sm["model_b"]]["name"] == "tiny_sd1_b.safetensors"
    import hashlib
    assert sm["model_a"] == hashlib.sha256((ckpt_dir / "tiny_sd1_a.safetensors").read_bytes()).hexdigest()

    rmodel, rclip, rvae = load("out/" + path.rsplit("/", 1)[-1])
    want, got = effective(model, "diffusion_model."), effective(rmodel, "diffusion_model.")
    assert set(want) == set(got)
    for key in want:
        torch.testing.assert_close(got[key], want[key].to(dtype).float(), rtol=0, atol=0, msg=key)
    want_c, got_c = effective(clip), effective(rclip)
    side = torch.float16 if dtype == torch.float8_e4m3fn else dtype
    for key in want_c:
        if key.endswith(UNSAVED):
            continue
        torch.testing.assert_close(got_c[key], want_c[key].to(side).float(), rtol=0, atol=0, msg=key)
    for key, value in vae.get_sd().items():
        torch.testing.assert_close(rvae.get_sd()[key].float(), value.to(side).float(), rtol=0, atol=0)


def test_save_never_overwrites_and_prunes_nothing_needed(ckpt_dir, monkeypatch):
    model, clip, vae, _ = merged_pair(monkeypatch)
    first = SaveCheckpoint.execute(model, clip, vae, filename_prefix="m", precision="fp16").result[0]
    second = SaveCheckpoint.execute(model, clip, vae, filename_prefix="m", precision="fp16", prune=True).result[0]
    assert first != second and first.endswith("m_00001_.safetensors") and second.endswith("m_00002_.safetensors")
    with SafetensorsReader(first) as a, SafetensorsReader(second) as b:
        assert set(b.keys()) <= set(a.keys())
        assert all(k.startswith(save_mod.PRUNE_KEEP) for k in b.keys())


def test_interrupted_save_leaves_no_file(ckpt_dir, monkeypatch):
    import comfy.model_management
    model, clip, vae, _ = merged_pair(monkeypatch)
    calls = {"n": 0}

    def interrupt():
        calls["n"] += 1
        if calls["n"] == 50:
            raise comfy.model_management.InterruptProcessingException()
    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", interrupt)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        SaveCheckpoint.execute(model, clip, vae, filename_prefix="partial/x", precision="fp16")
    assert calls["n"] == 50
    assert not (ckpt_dir / "partial").exists(), "no partial or temporary file, nor the folder made for it, is left"


@pytest.mark.parametrize("prefix,match", [
    ("../escape", r"input 'filename_prefix': '../escape' points outside the checkpoints folder"),
    ("  ", r"input 'filename_prefix': is empty"),
    ("locked/x", r"input 'filename_prefix': cannot (use folder|write)"),
])
def test_bad_output_path_names_the_input(prefix, match, ckpt_dir, monkeypatch):
    model, clip, vae, _ = merged_pair(monkeypatch)
    if prefix.startswith("locked"):
        (ckpt_dir / "locked").write_text("a file where a folder is needed (chmod does not stop root)")
    with pytest.raises(MergeNodeError, match=match) as info:
        SaveCheckpoint.execute(model, clip, vae, filename_prefix=prefix, precision="fp16")
    assert "Save Checkpoint (streamed, with recipe)" in str(info.value) and "Fix:" in str(info.value)


def test_sdxl_text_encoder_groups_match_comfyui_whole_conversion(tiny):
    """SDXL's CLIP-G q/k/v are fused per layer; the per-layer conversion equals ComfyUI's whole-dict one."""
    import tiny_models
    model, clip = tiny("model", "sdxl", 5), tiny("clip", "sdxl", 5)
    parts = save_mod.checkpoint_parts(model, clip, tiny_models.build_vae(0), "fp32")
    te = parts[1]
    assert any(src is None for _, entries in te.groups for _, src, _ in entries), "fused keys exist"
    whole = model.model.model_config.process_clip_state_dict_for_saving(
        {k: effective_weight_of(clip, k) for k in clip.get_key_patches()})
    streamed = dict(te.tensors())
    assert set(streamed) == set(whole)
    for key, value in whole.items():
        torch.testing.assert_close(streamed[key], value.to(streamed[key].dtype), msg=key)


def effective_weight_of(clip, key):
    from merge_suite.nodes.comfy_models import effective_weight
    return effective_weight(clip.get_key_patches()[key])


def test_recipe_metadata_round_trips():
    leaf_a, leaf_b = core_recipe.leaf("a.safetensors", "aa" * 32), core_recipe.leaf("b.safetensors", "bb" * 32)
    tree = {"kind": "checkpoint", "settings": core_recipe.settings_dict({"alpha": 0.3}),
            "supermerger": {"type": "sd-webui-supermerger"}, "a": leaf_a, "b": leaf_b}
    meta = core_recipe.file_metadata(tree, tree)
    assert core_recipe.parse_file_recipe(meta) == {"model": tree, "clip": tree}


def test_load_recipe_recreates_the_merge_and_finds_renamed_inputs(ckpt_dir, monkeypatch):
    from merge_suite.nodes.recipe import LoadRecipe
    model, clip, vae, recipe = merged_pair(monkeypatch)
    path = SaveCheckpoint.execute(model, clip, vae, filename_prefix="rt", precision="fp32").result[0]
    (ckpt_dir / "tiny_sd1_b.safetensors").rename(ckpt_dir / "renamed_b.safetensors")  # found by sha256
    rmodel, rclip, rvae, rtext = LoadRecipe.execute(path.rsplit("/", 1)[-1]).result
    assert rtext == recipe.replace("tiny_sd1_b", "renamed_b")
    want, got = effective(model, "diffusion_model."), effective(rmodel, "diffusion_model.")
    with SafetensorsReader(path) as saved:
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
            torch.testing.assert_close(saved.get("model." + key), want[key], rtol=0, atol=0)
    want_c, got_c = effective(clip), effective(rclip)
    bad = [k for k in want_c
           if not k.endswith(UNSAVED) and not torch.allclose(got_c[k], want_c[k], rtol=0, atol=0, equal_nan=True)]
    assert not bad, bad
    assert set(rvae.get_sd()) == set(vae.get_sd())
    (ckpt_dir / "renamed_b.safetensors").unlink()
    with pytest.raises(MergeNodeError, match=r"Load Recipe \(re-create a merge\): input 'ckpt_name': its recipe "
                                             r"needs 'tiny_sd1_b.safetensors' \(sha256 [0-9a-f]{12}\.\.\.\)") as info:
        LoadRecipe.execute(path.rsplit("/", 1)[-1])
    assert "Fix:" in str(info.value)
    with pytest.raises(MergeNodeError, match=r"input 'ckpt_name': has no 'sd_merge_recipe'"):
        LoadRecipe.execute("tiny_sd1_a.safetensors")


def test_recipe_chains_through_merges_and_flags_later_patches(tiny):
    from merge_suite.nodes.merge import ModelMerge
    from merge_suite.nodes.recipe_tags import get_recipe
    a, b, c = (tiny("model", "sd1", s) for s in (1, 2, 3))
    kw = dict(beta=0.0, blocks_alpha_preset="custom", blocks_alpha="", blocks_beta_preset="custom", blocks_beta="")
    merged, _report, text = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=0.4, **kw).result
    assert text == "Weight sum(?model_a, ?model_b) alpha=0.4"
    assert get_recipe(merged.clone(), "model") == get_recipe(merged, "model"), "clones carry the recipe"
    assert get_recipe(a, "model") is None, "inputs are not tagged"
    again = ModelMerge.execute(model_a=merged, model_b=c, mode="Weight sum", alpha=0.2, **kw).result[2]
    assert again.splitlines() == ["[1] Weight sum(?model_a, ?model_b) alpha=0.4",
                                  "[2] Weight sum([1], ?model_b) alpha=0.2"]
    key = "diffusion_model.out.2.bias"
    lora_like = merged.clone()
    lora_like.add_patches({key: (torch.full((4,), 0.01),)}, 1.0)
    after = ModelMerge.execute(model_a=lora_like, model_b=c, mode="Weight sum", alpha=0.2, **kw).result[2]
    assert "[1] Weight sum(?model_a, ?model_b) alpha=0.4 (changed after this merge" in after


def test_sdxl_save_reloads_exactly_with_modelspec(ckpt_dir, tiny):
    import tiny_models
    model, clip, vae = tiny("model", "sdxl", 7), tiny("clip", "sdxl", 7), tiny_models.build_vae(1)
    path = SaveCheckpoint.execute(model, clip, vae, filename_prefix="xl", precision="fp32").result[0]
    with SafetensorsReader(path) as r:
        assert r.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
        assert r.metadata["modelspec.predict_key"] == "epsilon" and "sd_merge_recipe" not in r.metadata
        assert any(k.endswith("in_proj_weight") for k in r.keys()), "CLIP-G q/k/v fused as ComfyUI saves them"
    rmodel, rclip, _ = load(path.rsplit("/", 1)[-1])
    want, got = effective(model, "diffusion_model."), effective(rmodel, "diffusion_model.")
    assert all(torch.equal(got[k], want[k]) for k in want)
    want_c, got_c = effective(clip), effective(rclip)
    assert all(torch.equal(got_c[k], want_c[k].half().float()) for k in want_c if not k.endswith(UNSAVED))


@pytest.mark.parametrize("prefix,words", [
    ("new/a\0b", "NUL byte"),
    ("new/" + "x" * 300, "is 300 bytes long; at most 180"),
    ("new/" + "d" * 256 + "/x", "folder name"),
    ("new\\x", "backslash"),
])
def test_hostile_prefix_is_refused_before_any_folder(prefix, words, ckpt_dir, monkeypatch):
    """NUL, names too long for the file system, a backslash: one line, nothing created."""
    model, clip, vae, _ = merged_pair(monkeypatch)
    before = sorted(p.name for p in ckpt_dir.iterdir())
    with pytest.raises(MergeNodeError) as info:
        SaveCheckpoint.execute(model, clip, vae, filename_prefix=prefix, precision="fp16")
    text = str(info.value)
    assert words in text and "filename_prefix" in text and "Save Checkpoint" in text and "\n" not in text
    assert sorted(p.name for p in ckpt_dir.iterdir()) == before


def test_glob_characters_are_names_and_dates_expand(ckpt_dir, monkeypatch):
    """'x[1]' is a name (the counter goes on from the files there), and ComfyUI's %year% placeholders work."""
    import time
    model, clip, vae, _ = merged_pair(monkeypatch)
    (ckpt_dir / "g[1]").mkdir()
    (ckpt_dir / "g[1]" / "x_00007_.safetensors").write_bytes(b"a file of an earlier save")
    (ckpt_dir / "g[1]" / "x1_00009_.safetensors").write_bytes(b"another name: not counted")
    got = SaveCheckpoint.execute(model, clip, vae, filename_prefix="g[1]/x", precision="fp16").result[0]
    assert got == str(ckpt_dir / "g[1]" / "x_00008_.safetensors")
    dated = SaveCheckpoint.execute(model, clip, vae, filename_prefix="%year%/d", precision="fp16").result[0]
    assert dated == str(ckpt_dir / str(time.localtime().tm_year) / "d_00001_.safetensors")


def test_a_name_taken_by_an_identical_save_meanwhile_goes_to_the_next_number(ckpt_dir, monkeypatch):
    """Two identical saves at once (two queues or servers, one folder) both pick '_00001_': the one that
    commits second takes '_00002_' and reports it, instead of failing after its work."""
    model, clip, vae, _ = merged_pair(monkeypatch)
    chosen = save_mod.output_path

    def raced(prefix, kind="checkpoints"):
        path = chosen(prefix, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"the other save's file")  # committed by the other save while ours is written
        return path
    monkeypatch.setattr(save_mod, "output_path", raced)
    got = SaveCheckpoint.execute(model, clip, vae, filename_prefix="twin/m", precision="fp16").result[0]
    assert got == str(ckpt_dir / "twin" / "m_00002_.safetensors")
    assert (ckpt_dir / "twin" / "m_00001_.safetensors").read_bytes() == b"the other save's file"
    with SafetensorsReader(got) as reader:
        assert any(k.startswith("model.diffusion_model.") for k in reader.keys())
    assert sorted(p.name for p in (ckpt_dir / "twin").iterdir()) == ["m_00001_.safetensors", "m_00002_.safetensors"]
