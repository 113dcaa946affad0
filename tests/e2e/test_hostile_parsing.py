"""Hostile catalogue, parsing: recipes, block and elemental text, the check routes, Ctrl+C.

Each probe gives a one-line error naming the option / node input (or the documented result), leaves every
input byte-identical and writes no output. CLI cases run in one subprocess through merge_core.cli.main
(DRIVER of test_faults_settings); Ctrl+C is a real SIGINT to `python -m merge_core` while the output is being
written (the fault hook of test_faults_files holds the write); server cases post /prompt and raw HTTP.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from catalogue import digest, node, one_line_error, run_cli  # noqa: E402
from test_faults_settings import raw_post, recipe_file, ComfyServer, small_model  # noqa: E402

HOOKS = REPO / "tests" / "e2e" / "fault_hooks"
TYPO = "IN01:attn3:0.5"  # IN01 exists; no key of it holds 'attn3'
TYPO_TEXT = f"entry #1 '{TYPO}': elements 'attn3' match no key in block IN01"

# (id, argv after the two model files, fragments of stderr; None = success expected)
CLI_CASES = [
    ("blocks-commas", ["--blocks", ",,,,"], ["'--blocks'", "',,,,' holds only commas"]),
    ("blocks-comma-newlines", ["--blocks", " ,\n, "], ["'--blocks'", "holds only commas"]),
    ("blocks-semicolons", ["--blocks", " , ; "], ["'--blocks'", "';' is neither a preset name"]),
    ("blocks-beta-commas", ["--mode", "sum_twice", "--blocks-beta", ",,"], ["'--blocks-beta'", "holds only commas"]),
    ("elemental-typo", ["--elemental", TYPO], ["'--elemental'", TYPO_TEXT]),
    ("elemental-typo-second", ["--elemental", f"OUT03:attn2:0.5\n{TYPO}"], ["entry #2 'IN01:attn3:0.5'"]),
    ("elemental-all-blocks-typo", ["--elemental", ":atn2:0.5"], ["elements 'atn2' match no key of this SD1.x"]),
    ("elemental-ok", ["--elemental", "IN01:attn2:0.5"], None),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, sd1_keys):
    folder = tmp_path_factory.mktemp("hostile_parsing")
    for i in range(2):
        save_file(small_model(sd1_keys, i, torch.float32), str(folder / f"m{i}.safetensors"))
    return folder


def test_cli_catalogue(files, tmp_path):
    before = digest(files)
    runs, outputs = [], []
    for case_id, args, _ in CLI_CASES:
        outputs.append(tmp_path / f"{case_id}.safetensors")
        runs.append(["merge", str(files / "m0.safetensors"), str(files / "m1.safetensors"), *args, "-q",
                     "-o", str(outputs[-1])])
    failures = []
    for (case_id, _, expected), (rc, stderr), out in zip(CLI_CASES, run_cli(runs), outputs):
        if expected is None:
            ok = rc == 0 and out.is_file()
        else:
            ok = one_line_error(rc, stderr, ["error: merge: ", *expected]) and not out.exists()
        if not ok:
            failures.append(f"{case_id}: rc={rc} out={out.exists()} stderr={stderr!r}")
    assert not failures, "\n".join(failures)
    assert digest(files) == before, "inputs changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elemental-ok.safetensors"], "partial files left behind"


def test_ctrl_c_says_interrupted(files, tmp_path):
    """A real SIGINT while the output is written (the hook holds the write): 'interrupted', exit 130."""
    before = digest(files)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=os.pathsep.join([str(HOOKS), str(REPO)]),
               MERGE_SUITE_FAULT="slow")
    out = tmp_path / "out" / "m.safetensors"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "merge_core", "merge", str(files / "m0.safetensors"),
                             str(files / "m1.safetensors"), "-q", "-o", str(out)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline, seen = time.time() + 60, False
    while time.time() < deadline and proc.poll() is None and not seen:
        seen = any(out.parent.glob("*.part"))
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert seen, "the signal was sent before the output was being written"
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["error: merge: interrupted; no output was written."], err
    assert list(out.parent.iterdir()) == [] and digest(files) == before


# --- the real server ----------------------------------------------------------------------------------------

def combine_step(iterations):
    leaf = {"file": "tiny_sd1_a.safetensors", "sha256": ""}
    settings = {"method": "geometric_median", "alpha": 1.0, "iterations": iterations}
    return {"kind": "combine", "settings": settings, "a": leaf, "models": [dict(leaf, file="tiny_sd1_b.safetensors")]}


RECIPES = {  # file -> (metadata, fragments of the error)
    "r_iterations_huge.safetensors": ({"merge_suite": {"model": combine_step(2 ** 63), "clip": None}},
                                      ["'merge_suite.model.settings.iterations'", "from 1 to 10000"]),
    "r_iterations_zero.safetensors": ({"merge_suite": {"model": combine_step(0), "clip": None}},
                                      ["'merge_suite.model.settings.iterations'", "is 0"]),
    "r_nested.safetensors": ("[" * 100_000 + "]" * 100_000, ["unreadable recipe metadata"]),
    "r_no_trees.safetensors": ({"merge_suite": {"model": None, "clip": None}},
                               ["'merge_suite'", "neither a model nor a clip"]),
}
NO_BETA = "r_no_beta.safetensors"  # a step without beta (and calcmode, blocks...): replayed with the defaults


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile_parsing_server")
    made = tmp_path_factory.mktemp("made")
    subprocess.run([sys.executable, str(REPO / "demo" / "make_checkpoints.py"), str(made)], check=True,
                   stdout=subprocess.DEVNULL)
    srv = ComfyServer(base)
    ckpts = base / "models" / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    for name in ("tiny_sd1_a.safetensors", "tiny_sd1_b.safetensors"):
        (made / name).rename(ckpts / name)
    for name, (metadata, _) in RECIPES.items():
        recipe_file(ckpts / name, metadata)
    step = {"kind": "checkpoint", "settings": {"mode": "Weight sum", "alpha": 0.25},
            "a": {"file": "tiny_sd1_a.safetensors", "sha256": ""},
            "b": {"file": "tiny_sd1_b.safetensors", "sha256": ""}}
    recipe_file(ckpts / NO_BETA, {"merge_suite": {"model": step, "clip": step}})
    srv.start()
    srv.info = srv.get("/object_info")
    yield srv
    srv.stop()


def inputs(srv) -> dict:
    """The checkpoints the tests start with (saves go to models/checkpoints/hostile/)."""
    return {k: v for k, v in digest(srv.base / "models").items() if not k.startswith("checkpoints/hostile/")}


def state(srv) -> dict:
    return digest(srv.base / "models") | digest(srv.base / "output")


def save(srv, model, clip, prefix="hostile/never"):
    return node(srv.info, "MergeSuite_SaveCheckpoint", model=model, clip=clip, vae=["1", 2], filename_prefix=prefix)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_load_recipe_refuses_hostile_metadata(server, name):
    before = state(server)
    prompt = {"1": node(server.info, "CheckpointLoaderSimple", ckpt_name="tiny_sd1_a.safetensors"),
              "2": node(server.info, "MergeSuite_LoadRecipe", ckpt_name=name), "9": save(server, ["2", 0], ["2", 1])}
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        server.run_prompt(prompt, timeout=60)
    message = str(info.value)
    assert time.perf_counter() - start < 30
    assert f"input 'ckpt_name': '{name}': " in message and "MergeNodeError" in message, message
    assert all(e in message for e in RECIPES[name][1]), message
    assert state(server) == before


def test_load_recipe_fills_a_missing_beta_with_its_default(server):
    before = inputs(server)
    prompt = {"1": node(server.info, "CheckpointLoaderSimple", ckpt_name="tiny_sd1_a.safetensors"),
              "2": node(server.info, "MergeSuite_LoadRecipe", ckpt_name=NO_BETA),
              "9": save(server, ["2", 0], ["2", 1], "hostile/no_beta")}
    entry = server.run_prompt(prompt, timeout=120)
    assert entry["status"]["status_str"] == "success"
    assert len(list((server.base / "models" / "checkpoints" / "hostile").glob("no_beta*.safetensors"))) == 1
    assert inputs(server) == before


def merge_prompt(srv, merge_node, **settings):
    """Loader -> Merge Option: Elemental -> Merge Models / Checkpoints -> Save Checkpoint."""
    ckpt = merge_node == "MergeSuite_CheckpointMerge"
    links = ({"model_a": ["1", 0], "clip_a": ["1", 1], "model_b": ["3", 0], "clip_b": ["3", 1]} if ckpt else
             {"model_a": ["1", 0], "model_b": ["3", 0]})
    elemental = settings.pop("elemental", None)
    inex = settings.pop("include_exclude", None)
    prompt = {"1": node(srv.info, "CheckpointLoaderSimple", ckpt_name="tiny_sd1_a.safetensors"),
              "3": node(srv.info, "CheckpointLoaderSimple", ckpt_name="tiny_sd1_b.safetensors"),
              "2": node(srv.info, merge_node, **links, **settings),
              "9": save(srv, ["2", 0], ["2", 1] if ckpt else ["1", 1])}
    if elemental is not None:
        prompt["4"] = node(srv.info, "MergeSuite_OptionElemental", elemental=elemental)
        prompt["2"]["inputs"]["options"] = ["4", 0]
    if inex is not None:
        prompt["5"] = node(srv.info, "MergeSuite_OptionIncludeExclude", include_exclude=inex)
        if elemental is not None:
            prompt["5"]["inputs"]["options"] = ["4", 0]
        prompt["2"]["inputs"]["options"] = ["5", 0]
    return prompt


NODE_CASES = [  # (id, merge node, settings, fragments of the error)
    ("model-elemental-typo", "MergeSuite_ModelMerge", {"elemental": TYPO}, ["Merge Models", TYPO_TEXT]),
    ("checkpoint-elemental-typo", "MergeSuite_CheckpointMerge", {"elemental": TYPO}, ["Merge Checkpoints", TYPO_TEXT]),
    ("model-blocks-commas", "MergeSuite_ModelMerge", {"blocks_alpha": ",,,,"},
     ["Merge Models", "input 'blocks_alpha': ',,,,' holds only commas"]),
]


@pytest.mark.parametrize("case", NODE_CASES, ids=[c[0] for c in NODE_CASES])
def test_merge_nodes_refuse_unmatched_rules_and_empty_block_text(server, case):
    _, merge_node, settings, expected = case
    before = state(server)
    with pytest.raises(RuntimeError) as info:
        server.run_prompt(merge_prompt(server, merge_node, **settings), timeout=120)
    message = str(info.value)
    assert "MergeNodeError" in message and all(e in message for e in expected), message
    assert state(server) == before


def test_merge_checkpoints_checks_targets_over_unet_and_text_encoder(server):
    """'exclude: OUT11' and a U-Net elemental rule select U-Net keys only: the text-encoder half is no typo."""
    prompt = merge_prompt(server, "MergeSuite_CheckpointMerge", elemental="OUT03:attn2:0.5",
                          include_exclude="exclude: OUT11")
    prompt["9"]["inputs"]["filename_prefix"] = "hostile/ckpt_ok"
    before = inputs(server)
    assert server.run_prompt(prompt, timeout=120)["status"]["status_str"] == "success"
    assert inputs(server) == before


ROUTE = "/merge_suite/check/block_weights"
JSON = {"Content-Type": "application/json"}


def timed_post(server, route, body):
    start = time.perf_counter()
    status, answer = raw_post(server, route, body, JSON)
    return status, answer, time.perf_counter() - start


def test_check_routes_bound_their_work(server):
    """A 1 MB body on flux1:999,999 cost 17 s of CPU per request: now refused at once, 400/413 with JSON."""
    pairs = "ALL=0.5, " * ((1 << 20) // 9)
    status, answer, took = timed_post(server, ROUTE, json.dumps({"text": pairs, "layout": "flux1:999,999"}).encode())
    assert status == 413 and "at most" in answer["error"] and took < 2, (status, answer, took)
    status, answer, took = timed_post(server, ROUTE,
                                      json.dumps({"text": "ALL=0.5", "layout": "flux1:999,999"}).encode())
    assert status == 400 and "'layout' 'flux1:999,999' is not a layout" in answer["error"] and took < 2
    status, answer, took = timed_post(server, ROUTE, json.dumps({"text": pairs[:20_000]}).encode())
    assert status == 400 and "at most 16384 are checked" in answer["error"] and took < 2
    status, answer, took = timed_post(server, ROUTE, json.dumps({"text": pairs[:16_000],
                                                                 "layout": "flux1:38,76"}).encode())
    assert status == 200 and took < 5, (answer, took)  # the largest accepted check
    status, answer, _ = timed_post(server, ROUTE, json.dumps({"text": ",,,,", "layout": "sd1"}).encode())
    assert status == 200 and answer["ok"] is False and "holds only commas" in answer["error"]
    status, answer, _ = timed_post(server, "/merge_suite/check/elemental",
                                   json.dumps({"text": f"OUT03:attn2:0.5\n{TYPO}", "layout": "sd1"}).encode())
    assert status == 200 and answer["ok"] is False and "entry #2 'IN01:attn3:0.5'" in answer["error"]
    assert (answer["entry"], answer["start"], answer["end"]) == (2, 16, 30)
