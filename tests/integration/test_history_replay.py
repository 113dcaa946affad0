"""Merge from History on real ComfyUI objects: the merge nodes record their runs, and the node re-creates
an entry with weights identical to the original merge; entries are picked by -1, -2 or id; a missing or
changed input file is an error naming it; the history route pages and filters on the server."""
import asyncio
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import folder_paths  # (ComfyUI imported through conftest)
import nodes as comfy_nodes
from effective_weights import effective

from merge_suite.merge_core.history import History, entry
from merge_suite.nodes import history_log, routes
from merge_suite.nodes.combine import CombineModels
from merge_suite.nodes.errors import MergeNodeError
from merge_suite.nodes.file_merge import DiffusionModelFileMerge
from merge_suite.nodes.history_node import MergeFromHistory
from merge_suite.nodes.merge import CheckpointMerge, ModelMerge

UNET = "diffusion_model."
UNINITIALISED = "text_projection.weight"
BLOCKS = dict(blocks_alpha_preset="custom", blocks_alpha="", blocks_beta_preset="custom", blocks_beta="")
COMBINE = dict(method="ties", alpha=1.0, weights="", density=0.3, drop_rate=0.9, epsilon=0.1, median_epsilon=1e-6,
               top=0.01, bottom=0.1, iterations=100, seed=0, blocks_alpha_preset="custom", blocks_alpha="")


class Hidden:
    """What ComfyUI hands a node: the prompt (the merge names its loaders' files from it) and its id."""

    def __init__(self, prompt, uid):
        self.prompt, self.unique_id, self.extra_pnginfo = prompt, uid, None


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
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        tiny_models.save_checkpoint(made["checkpoints"] / f"tiny_{name}.safetensors", "sd1", seed)
    for name in "ab":
        sd = load_file(made["checkpoints"] / f"tiny_{name}.safetensors")
        save_file({k[len("model.diffusion_model."):]: v for k, v in sd.items()
                   if k.startswith("model.diffusion_model.")}, made["diffusion_models"] / f"unet_{name}.safetensors")
    user = tmp_path / "user"  # the sha256 cache and the history: never the host's user directory
    user.mkdir()
    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(user))
    monkeypatch.setattr(history_log, "history_path", lambda: user / "merge_suite" / "history.jsonl")
    monkeypatch.delenv("MERGE_SUITE_HISTORY", raising=False)
    return made


def log() -> History:
    return history_log.comfy_history()


def load(name):
    return comfy_nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]


def loader_prompt(node_class, links):
    """A prompt in which node "9" (the merge) takes each input from a checkpoint loader of the named file."""
    prompt = {"9": {"class_type": node_class, "inputs": {}}}
    for i, (input_name, (file_name, slot)) in enumerate(links.items()):
        prompt[str(i + 1)] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": file_name}}
        prompt["9"]["inputs"][input_name] = [str(i + 1), slot]
    return prompt


def merge_models(monkeypatch, alpha=0.3):
    (ma, _, _), (mb, _, _) = load("tiny_a.safetensors"), load("tiny_b.safetensors")
    monkeypatch.setattr(ModelMerge, "hidden", Hidden(loader_prompt(
        "MergeSuite_ModelMerge", {"model_a": ("tiny_a.safetensors", 0), "model_b": ("tiny_b.safetensors", 0)}), "9"),
        raising=False)
    return ModelMerge.execute(model_a=ma, model_b=mb, mode="Weight sum", alpha=alpha, beta=0.25, **BLOCKS).result


def merge_checkpoints(monkeypatch):
    (ma, ca, _), (mb, cb, _), (mc, cc, _) = (load(f"tiny_{n}.safetensors") for n in "abc")
    links = {f"{kind}_{n}": (f"tiny_{n}.safetensors", slot) for n in "abc" for kind, slot in (("model", 0),
                                                                                                ("clip", 1))}
    monkeypatch.setattr(CheckpointMerge, "hidden", Hidden(loader_prompt("MergeSuite_CheckpointMerge", links), "9"),
                        raising=False)
    return CheckpointMerge.execute(model_a=ma, clip_a=ca, model_b=mb, clip_b=cb, model_c=mc, clip_c=cc,
                                   mode="Add difference", alpha=0.7, beta=0.25, blocks_alpha_preset="GRAD_V",
                                   blocks_alpha="", blocks_beta_preset="custom", blocks_beta="").result


def combine(monkeypatch):
    (base, _, _), (m1, _, _), (m2, _, _) = (load(f"tiny_{n}.safetensors") for n in "abc")
    monkeypatch.setattr(CombineModels, "hidden", Hidden(loader_prompt(
        "MergeSuite_CombineModels", {"base": ("tiny_a.safetensors", 0), "model_1": ("tiny_b.safetensors", 0),
                                     "model_2": ("tiny_c.safetensors", 0)}), "9"), raising=False)
    return CombineModels.execute(base=base, model_1=m1, model_2=m2, **COMBINE).result


def replay(history_id=-1):
    return MergeFromHistory.execute(history_id=history_id).result


def assert_identical(got, want, prefix=None):
    """torch.equal on every key, but SD1 CLIP's text projection: the tiny checkpoints do not store it and
    ComfyUI leaves it uninitialised memory, different at each load."""
    got, want = effective(got, prefix), effective(want, prefix)
    assert set(got) == set(want)
    different = [k for k in want if not k.endswith(UNINITIALISED) and not torch.equal(got[k], want[k])]
    assert not different, different[:5]


def test_last_merge_is_recreated_with_identical_weights(folders, monkeypatch):
    merged, _report, recipe = merge_models(monkeypatch)
    recorded = log().get(-1)
    assert recorded["source"] == "Merge Models" and [m["folder"] for m in recorded["models"]] == ["checkpoints"] * 2
    before = log().count()
    model, clip, vae, text = replay()
    assert log().count() == before, "a replay re-creates an entry; it records nothing"
    assert text == recipe == "Weight sum(tiny_a, tiny_b) alpha=0.3"
    assert_identical(model, merged, UNET)
    _, clip_a, vae_a = load("tiny_a.safetensors")
    assert clip is not None and set(vae.get_sd()) == set(vae_a.get_sd()), "CLIP and VAE of the first input"


def test_merge_checkpoints_model_and_clip_are_recreated(folders, monkeypatch):
    model, clip, _report, recipe = merge_checkpoints(monkeypatch)
    rmodel, rclip, rvae, text = replay()
    assert text == recipe and text.startswith("Add difference(tiny_a, tiny_b, tiny_c)")
    assert_identical(rmodel, model, UNET)
    assert_identical(rclip, clip)
    assert rvae is not None


def test_combine_is_recreated(folders, monkeypatch):
    merged, _report, recipe = combine(monkeypatch)
    assert log().get(-1)["kind"] == "combine"
    model, _clip, _vae, text = replay()
    assert text == recipe and text.startswith("ties(tiny_a, tiny_b, tiny_c)")
    assert_identical(model, merged, UNET)


def test_minus_two_and_an_id_pick_their_entry_and_an_unknown_id_says_how_many(folders, monkeypatch):
    first = merge_models(monkeypatch, alpha=0.2)
    second = merge_models(monkeypatch, alpha=0.6)
    assert [e["id"] for e in log().search()[1]] == [2, 1]
    assert_identical(replay(-2)[0], first[0], UNET)
    assert_identical(replay(1)[0], first[0], UNET)
    assert_identical(replay(2)[0], second[0], UNET)
    assert replay(-1)[3] == second[2]
    for missing in (3, -3, 0):
        with pytest.raises(MergeNodeError, match=rf"Merge from History: input 'history_id': there is no entry "
                                                 rf"{missing}: the merge history \(.*\) has 2 entries") as info:
            replay(missing)
        assert "Fix:" in str(info.value)


def test_fingerprint_follows_the_entry_minus_one_stands_for(folders, monkeypatch):
    empty = MergeFromHistory.fingerprint_inputs(history_id=-1)
    merge_models(monkeypatch, alpha=0.2)
    one = MergeFromHistory.fingerprint_inputs(history_id=-1)
    merge_models(monkeypatch, alpha=0.6)
    two = MergeFromHistory.fingerprint_inputs(history_id=-1)
    assert len({empty, one, two}) == 3, "a newer merge makes -1 run again"
    assert MergeFromHistory.fingerprint_inputs(history_id=1) == one


def rewrite_with_other_values(path):
    tensors = load_file(path)
    save_file({k: v + 0.125 if v.is_floating_point() else v for k, v in tensors.items()}, path)


def test_changed_or_missing_input_is_an_error_naming_the_file(folders, monkeypatch):
    merge_models(monkeypatch)
    rewrite_with_other_values(folders["checkpoints"] / "tiny_b.safetensors")
    with pytest.raises(MergeNodeError, match=r"input 'history_id': the entry's input 'tiny_b.safetensors' has "
                                             r"changed since the merge \(its content differs\)"):
        replay()
    (folders["checkpoints"] / "tiny_b.safetensors").unlink()
    with pytest.raises(MergeNodeError, match=r"the entry's input 'tiny_b.safetensors' is missing \(no file at "
                                             r".*tiny_b.safetensors\)"):
        replay()


def test_an_input_with_a_known_sha256_is_compared_by_it(folders, monkeypatch):
    from merge_suite.nodes.save import checkpoint_hash
    sha = checkpoint_hash("tiny_a.safetensors")  # hashed before the merge (as Save Checkpoint does): recorded
    merge_models(monkeypatch)
    assert log().get(-1)["models"][0]["sha256"] == sha
    assert replay()[0] is not None
    rewrite_with_other_values(folders["checkpoints"] / "tiny_a.safetensors")
    with pytest.raises(MergeNodeError, match=r"the entry's input 'tiny_a.safetensors' has changed since the merge "
                                             r"\(its sha256 differs\)"):
        replay()


def test_diffusion_model_file_merge_replays_with_the_diffusion_model_loader(folders):
    settings = dict(mode="Weight sum", alpha=0.3, beta=0.25, **BLOCKS)
    DiffusionModelFileMerge.execute("unet_a.safetensors", "unet_b.safetensors", **settings)
    recorded = log().get(-1)
    assert recorded["kind"] == "file merge" and {m["folder"] for m in recorded["models"]} == {"diffusion_models"}
    model, clip, vae, text = replay()
    assert clip is None and vae is None
    assert text.startswith("Weight sum(unet_a, unet_b)")
    ma, mb = (comfy_nodes.UNETLoader().load_unet(f"unet_{n}.safetensors", "default")[0] for n in "ab")
    assert_identical(model, ModelMerge.execute(model_a=ma, model_b=mb, **settings).result[0], UNET)


def test_lora_entries_and_entries_without_a_recipe_say_what_they_are(folders):
    log().append(entry("lora extract", "Extract LoRA", [], mode="extract", settings={"rank": 8}, text="extract"))
    with pytest.raises(MergeNodeError, match=r"entry 1 \(Extract LoRA\) is a lora extract: it wrote a LoRA file") \
            as info:
        replay()
    assert "its settings are in the entry: copy them from the Merge History tab" in str(info.value)
    log().append(entry("merge", "CLI merge", [], mode="Weight sum", settings={"alpha": 0.5}))
    with pytest.raises(MergeNodeError, match=r"entry 2 \(CLI merge\) is a merge without a recipe.*copy them"):
        replay()


def test_history_turned_off_is_a_clear_error(folders, monkeypatch):
    monkeypatch.setenv("MERGE_SUITE_HISTORY", "0")
    with pytest.raises(MergeNodeError, match=r"the merge history is turned off \(MERGE_SUITE_HISTORY=0\)"):
        replay()
    assert routes.history_page({}) == {"total": 0, "count": 0, "offset": 0, "limit": 20, "entries": [],
                                       "disabled": True}


# --- the route ----------------------------------------------------------------------------

@pytest.fixture()
def written(folders):
    texts = ["Weight sum(anime, real) alpha=0.3", "Add difference(anime, real, base) alpha=1",
             "ties(anime, photo, base) density=0.3", "Weight sum(photo, real) alpha=0.5"]
    for text in texts:
        log().append(entry("merge", "Merge Models", [], mode=text.split("(")[0], text=text))
    return texts


def test_history_page_searches_with_and_or(written):
    page = routes.history_page({"search": "anime real"})
    assert (page["total"], page["count"]) == (2, 4) and [e["id"] for e in page["entries"]] == [2, 1]
    page = routes.history_page({"search": "anime photo", "mode": "or"})
    assert page["total"] == 4 and [e["id"] for e in page["entries"]] == [4, 3, 2, 1]
    assert routes.history_page({"search": "ANIME Photo"})["total"] == 1


def test_history_page_pages_newest_first(written):
    page = routes.history_page({"offset": "1", "limit": "2"})
    assert {k: page[k] for k in ("total", "count", "offset", "limit")} == {"total": 4, "count": 4, "offset": 1,
                                                                          "limit": 2}
    assert [e["id"] for e in page["entries"]] == [3, 2]
    assert routes.history_page({"offset": "4"})["entries"] == []
    assert routes.history_page({})["limit"] == 20


@pytest.mark.parametrize("params, message", [
    ({"limit": "0"}, "'limit' is 0"), ({"limit": "101"}, "at most 100"), ({"limit": "ten"}, "not a whole number"),
    ({"offset": "-1"}, "'offset' is -1"), ({"mode": "xor"}, "'mode' is 'xor'"), ({"search": "x" * 1001}, "1001"),
])
def test_history_page_refuses_bad_values(written, params, message):
    with pytest.raises(routes.BadRequest, match=message):
        routes.history_page(params)


def test_history_route_answers_over_http(written):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def scenario():
        table = web.RouteTableDef()
        routes.register(table)
        app = web.Application()
        app.add_routes(table)
        async with TestClient(TestServer(app)) as client:
            good = await client.get("/merge_suite/history?search=ties&limit=5")
            bad = await client.get("/merge_suite/history?limit=500")
            return good.status, await good.json(), bad.status, await bad.json()

    status, page, bad_status, bad = asyncio.run(scenario())
    assert status == 200 and page["total"] == 1 and page["entries"][0]["text"].startswith("ties(")
    assert bad_status == 400 and "at most 100" in bad["error"]
    json.dumps(page)
