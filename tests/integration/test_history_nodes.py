"""Every merge a node performs is one entry of the merge history, with the settings and recipe the node
itself reports; the same merge run again adds none, MERGE_SUITE_HISTORY=0 records nothing, and a history
that cannot be written never stops a merge (one warning).

conftest.py points the history at a temporary file per test (the merge_history fixture)."""
import json
import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402
from test_lora_nodes import write_lora  # noqa: E402

from merge_suite.merge_core import recipe as core  # noqa: E402
from merge_suite.merge_core.io.safetensors_file import SafetensorsReader  # noqa: E402
from merge_suite.nodes.combine import CombineModels  # noqa: E402
from merge_suite.nodes.file_merge import CheckpointFileMerge, DiffusionModelFileMerge  # noqa: E402
from merge_suite.nodes.lora import LoraExtract, LoraMerge  # noqa: E402
from merge_suite.nodes.merge import CheckpointMerge, ModelMerge  # noqa: E402
from merge_suite.nodes.recipe_tags import get_recipe  # noqa: E402
from merge_suite.nodes.save import SaveCheckpoint  # noqa: E402

SETTINGS = dict(mode="Weight sum", alpha=0.3, beta=0.25, blocks_alpha_preset="custom", blocks_alpha="",
                blocks_beta_preset="custom", blocks_beta="")
NAMES = ("tiny_a.safetensors", "tiny_b.safetensors", "tiny_c.safetensors")


def entries(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def names(entry):
    return [m["name"] for m in entry["models"]]


class Hidden:
    def __init__(self, prompt=None, uid=None):
        self.prompt, self.unique_id, self.extra_pnginfo = prompt, uid, None


def from_loaders(**inputs):
    """A prompt in which node "9"'s inputs come from checkpoint loaders of the given files (its recipe's leaves
    are then those names), as ComfyUI hands it to a merge node."""
    prompt = {str(i): {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}}
              for i, name in enumerate(dict.fromkeys(inputs.values()))}
    node = {}
    for input_name, name in inputs.items():
        source = next(k for k, v in prompt.items() if v["inputs"]["ckpt_name"] == name)
        node[input_name] = [source, 1 if input_name.startswith("clip") else 0]
    prompt["9"] = {"class_type": "merge", "inputs": node}
    return Hidden(prompt, "9")


@pytest.fixture()
def folders(tmp_path, monkeypatch):
    import tiny_models
    tiny_models.register()
    made = {}
    for kind in ("checkpoints", "diffusion_models", "loras"):
        made[kind] = tmp_path / kind
        made[kind].mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, kind,
                            ([str(made[kind])], folder_paths.supported_pt_extensions))
    for name, seed in zip(NAMES, (1, 2, 3)):
        tiny_models.save_checkpoint(made["checkpoints"] / name, "sd1", seed, all_random=True)
    return made


def load(name):
    return comfy_nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]


def assert_inputs(entry, folder, files, root):
    assert names(entry) == list(files)
    for record, name in zip(entry["models"], files):
        assert record["folder"] == folder and record["path"] == os.path.abspath(root / name)
        assert len(record["fingerprint"]) == 32


def test_merge_models_entry_is_the_nodes_recipe_and_a_rerun_adds_none(folders, merge_history, monkeypatch):
    (ma, _, _), (mb, _, _) = load(NAMES[0]), load(NAMES[1])
    monkeypatch.setattr(ModelMerge, "hidden", from_loaders(model_a=NAMES[0], model_b=NAMES[1]), raising=False)
    merged, _, recipe = ModelMerge.execute(model_a=ma, model_b=mb, **dict(SETTINGS, blocks_alpha="GRAD_V")).result
    tree = get_recipe(merged, "model")
    (entry,) = entries(merge_history)
    assert entry["id"] == 1 and entry["kind"] == "merge" and entry["source"] == "Merge Models"
    assert entry["recipe"] == {"model": tree, "clip": None} and entry["settings"] == tree["settings"]
    assert entry["settings"]["alpha"] == 0.3 and entry["settings"]["blocks_alpha"] == "GRAD_V"
    assert entry["mode"] == "Weight sum" and entry["text"] == recipe and "prompt_id" not in entry
    assert "output" not in entry
    assert_inputs(entry, "checkpoints", NAMES[:2], folders["checkpoints"])
    ModelMerge.execute(model_a=ma, model_b=mb, **dict(SETTINGS, blocks_alpha="GRAD_V"))
    assert len(entries(merge_history)) == 1, "the same merge again (a dropped cache) adds nothing"
    ModelMerge.execute(model_a=ma, model_b=mb, **SETTINGS)
    assert [e["settings"]["blocks_alpha"] for e in entries(merge_history)] == ["GRAD_V", ""]


def test_merge_checkpoints_is_one_entry_with_the_model_and_clip_recipes(folders, merge_history, monkeypatch):
    (ma, ca, _), (mb, cb, _), (mc, cc, _) = (load(n) for n in NAMES)
    hidden = from_loaders(model_a=NAMES[0], clip_a=NAMES[0], model_b=NAMES[1], clip_b=NAMES[1],
                          model_c=NAMES[2], clip_c=NAMES[2])
    monkeypatch.setattr(CheckpointMerge, "hidden", hidden, raising=False)
    model, clip, _, recipe = CheckpointMerge.execute(ma, ca, mb, cb, mc, cc, **dict(SETTINGS, mode="Add difference",
                                                                                     alpha=0.7)).result
    (entry,) = entries(merge_history)
    assert entry["source"] == "Merge Checkpoints" and entry["mode"] == "Add difference"
    assert entry["recipe"] == {"model": get_recipe(model, "model"), "clip": get_recipe(clip, "clip")}
    assert entry["recipe"]["model"]["kind"] == "checkpoint" and entry["settings"]["alpha"] == 0.7
    assert entry["text"] == recipe
    assert_inputs(entry, "checkpoints", NAMES, folders["checkpoints"])


def test_a_sweep_records_one_entry_per_cell_with_the_prompt_id(folders, merge_history, monkeypatch):
    """As ComfyUI runs a merge fed by a list: execute once per value, each inside the prompt's execution context
    (comfy_execution.utils, the context both hosts set around a node's run)."""
    from comfy_execution.utils import CurrentNodeContext
    (ma, _, _), (mb, _, _) = load(NAMES[0]), load(NAMES[1])
    monkeypatch.setattr(ModelMerge, "hidden", from_loaders(model_a=NAMES[0], model_b=NAMES[1]), raising=False)

    def run():
        recipes = []
        for i, alpha in enumerate((0.2, 0.5, 0.8)):
            with CurrentNodeContext("prompt-7", "9", i):
                recipes.append(ModelMerge.execute(model_a=ma, model_b=mb, **dict(SETTINGS, alpha=alpha)).result[2])
        return recipes

    recipes = run()
    got = entries(merge_history)
    assert [e["settings"]["alpha"] for e in got] == [0.2, 0.5, 0.8] and [e["text"] for e in got] == recipes
    assert {e["prompt_id"] for e in got} == {"prompt-7"} and all(names(e) == list(NAMES[:2]) for e in got)
    run()
    assert len(entries(merge_history)) == 3


def test_combine_entry_is_the_nodes_recipe(folders, merge_history, monkeypatch):
    (base, _, _), (m1, _, _), (m2, _, _) = (load(n) for n in NAMES)
    monkeypatch.setattr(CombineModels, "hidden", from_loaders(base=NAMES[0], model_1=NAMES[1], model_2=NAMES[2]),
                        raising=False)
    merged, _, recipe = CombineModels.execute(
        base=base, method="dare", alpha=0.8, weights="1,0.5", density=0.2, drop_rate=0.5, epsilon=0.1, top=0.01,
        bottom=0.1, iterations=100, seed=3, blocks_alpha_preset="custom", blocks_alpha="", model_1=m1,
        model_2=m2).result
    tree = get_recipe(merged, "model")
    (entry,) = entries(merge_history)
    assert entry["kind"] == "combine" and entry["source"] == "Combine Models" and entry["mode"] == "dare"
    assert entry["recipe"] == {"model": tree, "clip": None} and entry["settings"] == tree["settings"]
    assert entry["settings"]["drop_rate"] == 0.5 and entry["settings"]["weights"] == "1,0.5"
    assert entry["text"] == recipe
    assert_inputs(entry, "checkpoints", NAMES, folders["checkpoints"])


def test_file_merge_entry_carries_the_files_recipe_and_a_reuse_adds_none(folders, merge_history):
    name = CheckpointFileMerge.execute(NAMES[0], NAMES[1], filename_prefix="h/x", **SETTINGS).result[-1]
    written = folders["checkpoints"] / name
    with SafetensorsReader(written) as reader:
        stored = core.parse_file_recipe(reader.metadata)["model"]
    (entry,) = entries(merge_history)
    assert entry["kind"] == "file merge" and entry["source"] == CheckpointFileMerge.DISPLAY
    assert entry["output"] == os.path.abspath(written)
    want = dict(stored, a=core.leaf(NAMES[0]), b=core.leaf(NAMES[1]))  # the inputs named as picked
    assert entry["recipe"] == {"model": want, "clip": want} and entry["settings"] == stored["settings"]
    assert entry["settings"]["alpha"] == 0.3 and entry["mode"] == "Weight sum"
    assert entry["text"] == core.recipe_text(want)
    assert_inputs(entry, "checkpoints", NAMES[:2], folders["checkpoints"])
    again = CheckpointFileMerge.execute(NAMES[0], NAMES[1], filename_prefix="h/x", **SETTINGS).result[-1]
    assert again == name and len(entries(merge_history)) == 1, "the file reused: the same merge"


def test_diffusion_model_file_merge_names_its_folder(folders, merge_history):
    from safetensors.torch import load_file, save_file
    for name in NAMES[:2]:
        sd = load_file(folders["checkpoints"] / name)
        save_file({k[len("model.diffusion_model."):]: v for k, v in sd.items()
                   if k.startswith("model.diffusion_model.")}, folders["diffusion_models"] / name)
    name = DiffusionModelFileMerge.execute(NAMES[0], NAMES[1], filename_prefix="u", **SETTINGS).result[-1]
    (entry,) = entries(merge_history)
    assert entry["output"] == os.path.abspath(folders["diffusion_models"] / name)
    assert entry["recipe"]["clip"] is None and entry["recipe"]["model"]["a"] == core.leaf(NAMES[0])
    assert_inputs(entry, "diffusion_models", NAMES[:2], folders["diffusion_models"])


def test_save_checkpoint_entry_is_the_recipe_written_into_the_file(folders, merge_history, monkeypatch):
    (ma, ca, vae), (mb, cb, _) = load(NAMES[0]), load(NAMES[1])
    hidden = from_loaders(model_a=NAMES[0], clip_a=NAMES[0], model_b=NAMES[1], clip_b=NAMES[1])
    monkeypatch.setattr(CheckpointMerge, "hidden", hidden, raising=False)
    model, clip, _, _ = CheckpointMerge.execute(ma, ca, mb, cb, **SETTINGS).result
    path = SaveCheckpoint.execute(model, clip, vae, filename_prefix="saved/m", precision="fp32").result[0]
    with SafetensorsReader(path) as reader:
        stored = core.parse_file_recipe(reader.metadata)
    merge, save = entries(merge_history)
    assert merge["kind"] == "merge" and save["kind"] == "save" and save["id"] == 2
    assert save["source"] == SaveCheckpoint.DISPLAY and save["output"] == os.path.abspath(path)
    assert save["recipe"] == stored and save["settings"] == stored["model"]["settings"]
    assert save["text"] == core.recipe_text(stored["model"]) and save["mode"] == "Weight sum"
    assert_inputs(save, "checkpoints", NAMES[:2], folders["checkpoints"])
    assert [m["sha256"] for m in save["models"]] == [stored["model"]["a"]["sha256"], stored["model"]["b"]["sha256"]]
    SaveCheckpoint.execute(ma, ca, vae, filename_prefix="saved/plain", precision="fp32")
    assert len(entries(merge_history)) == 2, "a model without a merge recipe is no merge"
    CheckpointMerge.execute(ma, ca, mb, cb, **SETTINGS)
    assert len(entries(merge_history)) == 2, "the inputs' sha256, known since the save, make no new merge"


def test_lora_merge_and_extract_entries_hold_the_nodes_parameters(folders, merge_history, monkeypatch):
    (ma, ca, _), (mb, _, _) = load(NAMES[0]), load(NAMES[1])
    n1 = write_lora(folders["loras"], "style", ma, ca, "sd1", 1)
    n2 = write_lora(folders["loras"], "detail", ma, ca, "sd1", 2)
    params = dict(method="exact", rank=4, svd="full", clamp_quantile=0.0, same_to_strength=True,
                  metadata="create new", filename_prefix="h/merged", save_dtype="fp32", lbw_presets="")
    merged_name = LoraMerge.execute(f"{n1}:1, detail:0.5", **params).result[0]
    (entry,) = entries(merge_history)
    assert entry["kind"] == "lora merge" and entry["source"] == "Merge LoRAs" and entry["mode"] == "exact"
    assert entry["settings"] == dict(params, lora_list=f"{n1}:1, detail:0.5") and "recipe" not in entry
    assert names(entry) == [n1, "detail"] and entry["models"][1]["path"] == str(folders["loras"] / n2)
    assert all(m["folder"] == "loras" for m in entry["models"])
    assert entry["output"] == str(folders["loras"] / merged_name)

    monkeypatch.setattr(ModelMerge, "hidden", from_loaders(model_a=NAMES[0], model_b=NAMES[1]), raising=False)
    tuned = ModelMerge.execute(model_a=ma, model_b=mb, **SETTINGS).result[0]
    extract = dict(alpha=1.0, beta=1.0, rank=8, conv_rank=0, svd="full", clamp_quantile=0.0, te_min_diff=0.1,
                   filename_prefix="h/extracted", save_dtype="fp16")
    extracted = LoraExtract.execute(tuned, ma, **extract).result[0]
    entry = entries(merge_history)[-1]
    assert entry["kind"] == "lora extract" and entry["source"] == "Extract LoRA from Models"
    assert entry["settings"] == extract and entry["output"] == str(folders["loras"] / extracted)
    assert names(entry) == list(NAMES[:2]) and entry["models"][0]["folder"] == "checkpoints"


def test_history_turned_off_records_nothing(folders, merge_history, monkeypatch):
    monkeypatch.setenv("MERGE_SUITE_HISTORY", "0")
    (ma, _, _), (mb, _, _) = load(NAMES[0]), load(NAMES[1])
    ModelMerge.execute(model_a=ma, model_b=mb, **SETTINGS)
    assert not merge_history.exists()


def test_an_unwritable_history_still_merges_with_one_warning(folders, merge_history, caplog):
    merge_history.mkdir()  # a directory where the log should be
    (ma, _, _), (mb, _, _) = load(NAMES[0]), load(NAMES[1])
    with caplog.at_level(logging.WARNING):
        for alpha in (0.3, 0.4):
            merged, report, recipe = ModelMerge.execute(model_a=ma, model_b=mb, **dict(SETTINGS, alpha=alpha)).result
            assert merged is not None and recipe.startswith("Weight sum(")
    warned = [r for r in caplog.records if "merge history" in r.getMessage()]
    assert len(warned) == 1 and str(merge_history) in warned[0].getMessage()


def test_an_error_while_recording_is_one_warning_not_a_failed_merge(folders, merge_history, monkeypatch, caplog):
    from merge_suite.nodes import history_log

    def broken():
        raise RuntimeError("no context")
    monkeypatch.setattr(history_log, "prompt_id", broken)
    (ma, _, _), (mb, _, _) = load(NAMES[0]), load(NAMES[1])
    with caplog.at_level(logging.WARNING):
        assert ModelMerge.execute(model_a=ma, model_b=mb, **SETTINGS).result[0] is not None
    warned = [r.getMessage() for r in caplog.records if "merge history" in r.getMessage()]
    assert len(warned) == 1 and "Merge Models" in warned[0] and "no context" in warned[0]
    assert not merge_history.exists()
