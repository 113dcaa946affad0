"""The web extension in a real browser: headless Debian Chromium, driven by playwright-core,
against the real ComfyUI server and its shipped frontend (1.32.9 with ComfyUI 0.3.75, 1.49.6 with 0.33).

editor_check.mjs acts like a user (loads an example workflow, moves a slider, picks a
preset, uses a group helper, types a bad elemental rule) and reports what it saw; the
checks are here, against values computed by merge_core on the Python side.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "demo"))
from browser_env import CHROMIUM, why_not_runnable  # noqa: E402
from server import ComfyServer  # noqa: E402
from workflow_api import to_prompt  # noqa: E402

from merge_core.blocks.presets import presets  # noqa: E402

WORKFLOW = REPO / "example_workflows" / "merge_checkpoints_block_weights.json"
SD1 = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
SHOTS = REPO / "out" / "browser"
FLUX1_GROUPS = [("BASE", 2), ("IN", 1), ("D", 19), ("S", 38), ("OUT", 1)]  # CLIP,T5 | IN | D00-D18 | S00-S37 | OUT


pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not_runnable() is not None,
                                                   reason=why_not_runnable() or "")]


def _floats(text):
    return [float(v) for v in text.split(",")]


@pytest.fixture(scope="module", params=["litegraph", "vue"])
def seen(request, tmp_path_factory):
    """One browser session per rendering mode of the frontend: LiteGraph canvas, and Vue nodes ("Nodes 2.0")."""
    mode = request.param
    assert (HERE / "node_modules" / "playwright-core").is_dir(), \
        "playwright-core is missing: run `npm ci` in tests/browser (scripts/setup_host.sh does)"
    base = tmp_path_factory.mktemp("comfy_browser")
    out = tmp_path_factory.mktemp("browser_out")
    subprocess.run([sys.executable, str(REPO / "demo" / "make_checkpoints.py"), str(base / "models" / "checkpoints")],
                   check=True, stdout=subprocess.DEVNULL)
    with ComfyServer(base) as server:
        run = subprocess.run(["node", str(HERE / "editor_check.mjs"), server.url, str(WORKFLOW), str(out)],
                             cwd=HERE, capture_output=True, text=True, timeout=480,
                             env=dict(os.environ, CHROMIUM=CHROMIUM, VUE_NODES="1" if mode == "vue" else "0"))
        object_info = server.get("/object_info")
        log = server.log_tail(60)
    assert run.returncode == 0, f"node failed:\n{run.stderr[-3000:]}"
    result = json.loads(run.stdout)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name in ("block_editor.png", "page.png", "after_load.png", "failure.png", "flux_editor.png",
                 "combine_ties.png", "combine_della.png"):
        if (out / name).is_file():
            shutil.copy(out / name, SHOTS / name.replace(".png", f"_{mode}.png"))
    assert "error" not in result, f"{mode}: {result['error']}\ndialogs: {result.get('dialogs')}\nserver log:\n{log}"
    result["by_step"] = {s["name"]: s for s in result["steps"]}
    result["object_info"] = object_info
    result["mode"] = mode
    return result


def test_extensions_load_without_errors(seen):
    assert sorted(seen["extensions"]) == ["merge_suite.block_editor", "merge_suite.elemental_helper",
                                          "merge_suite.history_tab",
                                          "merge_suite.method_inputs", "merge_suite.text_outputs"]
    files = [p.name for p in (REPO / "web" / "js").iterdir()]  # not ".mjs": 1.32's PrimeVue is served as .mjs
    ours = [m for m in seen["console"] if "merge_suite" in m or any(f in m for f in files)]
    assert not ours, ours


def test_editor_shows_the_chosen_preset(seen):
    step = seen["by_step"]["loaded"]
    assert step["widgets"] == {"blocks_alpha": "", "blocks_alpha_preset": "GRAD_V"}
    assert step["sliders"] == 26
    assert "GRAD_V" in step["status"]
    assert abs(float(step["in05"]) - presets()["GRAD_V"][SD1.index("IN05")]) <= 0.01  # slider step


def test_moving_a_slider_writes_the_string_and_the_queued_prompt_carries_it(seen):
    step = seen["by_step"]["slider"]
    text = step["widgets"]["blocks_alpha"]
    values, grad_v = _floats(text), presets()["GRAD_V"]
    assert len(values) == 26
    i = SD1.index("IN05")
    assert values[i] == pytest.approx(float(step["in05"])) and values[i] > grad_v[i] + 0.03  # five key presses up
    assert [v for j, v in enumerate(values) if j != i] == pytest.approx([v for j, v in enumerate(grad_v) if j != i],
                                                                        abs=1e-6)
    assert step["widgets"]["blocks_alpha_preset"] == "custom"  # the node refuses a preset and text together
    assert seen["by_step"]["graphToPrompt"]["inputs"]["blocks_alpha"] == text
    queued = seen["by_step"]["queued"]
    assert queued["answer"] == 200 and queued["prompt"]["blocks_alpha"] == text
    declared = seen["object_info"]["MergeSuite_CheckpointMerge"]["input"]
    assert set(queued["prompt"]) <= set(declared["required"]) | set(declared.get("optional", {})), \
        "editor panels must not be sent as inputs"


def test_the_run_report_appears_on_the_node_with_the_slider_value(seen):
    report = seen["by_step"]["queued"]["report"]
    value = _floats(seen["by_step"]["slider"]["widgets"]["blocks_alpha"])[SD1.index("IN05")]
    row = next(line for line in report.splitlines() if line.startswith("IN05"))
    assert f"{value:.4f}" in row, row


def test_preset_picker_keeps_the_name_and_group_helper_writes_values(seen):
    """A preset picked in the editor is chosen by name (recipes and grid labels say FLAT_25, not 26 numbers)."""
    picked = seen["by_step"]["preset"]
    assert picked["widgets"] == {"blocks_alpha": "", "blocks_alpha_preset": "FLAT_25"}
    assert "preset FLAT_25" in picked["status"]
    group = seen["by_step"]["group"]["widgets"]
    expect = [v * 2 if b.startswith("OUT") else v for b, v in zip(SD1, presets()["FLAT_25"])]
    assert _floats(group["blocks_alpha"]) == pytest.approx(expect) and group["blocks_alpha_preset"] == "custom"


def test_bad_text_is_an_error_on_the_widget_and_is_kept(seen):
    junk = seen["by_step"]["junk"]
    assert junk["widgets"]["blocks_alpha"] == "0.5,0.5,junk"
    assert "value #3 'junk' is not a number" in junk["status"]
    assert "has 2 values" in seen["by_step"]["count"]["status"]


def test_elemental_errors_point_at_the_entry_and_elements_are_listed(seen):
    bad = seen["by_step"]["elemental_bad"]["status"]
    assert "entry #2" in bad and "IN99" in bad and "line 2, column 1" in bad
    ok = seen["by_step"]["elemental_ok"]
    assert "3 rule(s)" in ok["status"]
    assert ok["elements"] and all("input_blocks" not in e for e in ok["elements"])
    assert ok["value"].splitlines()[-1] == "OUT04:1.transformer_blocks.0.attn2.to_k:0.5"
    assert 0 <= ok["gap"] < 30, f"the helper is {ok['gap']} px below its text box"


def test_a_workflow_saved_with_the_editor_loads_without_it(seen):
    saved = seen["workflow"]
    original = json.loads(WORKFLOW.read_text())
    for node_type in ("MergeSuite_CheckpointMerge", "MergeSuite_OptionElemental"):
        node = next(n for n in saved["nodes"] if n["type"] == node_type)
        before = next(n for n in original["nodes"] if n["type"] == node_type)
        assert len(node["widgets_values"]) == len(before["widgets_values"])  # no panel values stored
    prompt = to_prompt(saved, seen["object_info"])
    merge = next(n for n in saved["nodes"] if n["type"] == "MergeSuite_CheckpointMerge")
    elemental = next(n for n in saved["nodes"] if n["type"] == "MergeSuite_OptionElemental")
    assert prompt[str(merge["id"])]["inputs"]["blocks_alpha"] == "SMOOTHSTEP"
    assert prompt[str(elemental["id"])]["inputs"]["elemental"].startswith("OUT03-OUT05:attn2:0.5")


def test_panels_lie_inside_their_nodes_right_after_loading(seen):
    """No pan, no mouse move after loading a workflow: the editors and helpers are drawn on their nodes
    (they used to sit unplaced, full window width at the canvas' left edge, until the canvas was panned)."""
    placed = seen["placementAfterLoad"]
    names = {p["widget"] for p in placed}
    assert {"blocks_alpha_editor", "elemental_helper"} <= names, names
    for p in placed:
        box, panel = p["box"], p["panel"]
        inside = (panel["left"] >= box["left"] - 2 and panel["right"] <= box["right"] + 2
                  and panel["top"] >= box["top"] - 2 and panel["bottom"] <= box["bottom"] + 2)
        assert inside, f"{seen['mode']}: {p['widget']} of {p['type']} at {panel} is outside its node {box}"


def test_merge_checkpoints_fits_the_screen(seen):
    """Merge Checkpoints at 100 % zoom, title included: under a 1,000 px window (it was 1,120 px)."""
    heights = {"after_load": round(seen["heightAfterLoad"]), "after_run": round(seen["heightAfterRun"])}
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / f"merge_checkpoints_height_{seen['mode']}.json").write_text(json.dumps(heights))
    # Vue nodes ("Nodes 2.0") draw each widget row 34 px tall instead of 24: 7 rows add about 70 px there
    load_limit, run_limit = (600, 760) if seen["mode"] == "litegraph" else (680, 840)
    assert heights["after_load"] < load_limit, heights
    assert heights["after_run"] < run_limit, heights  # the report panel opens under the node after a run


def test_flux_layout_is_grouped_folds_and_takes_named_ranges(seen):
    """Flux.1's 61 sliders from the server's families, one folding section per group, the named-range entry."""
    layout = seen["by_step"]["flux_layout"]
    assert layout["sliders"] == 61 and layout["state"] == "ok"
    assert [(g, n) for g, n, _ in layout["groups"]] == FLUX1_GROUPS
    assert layout["groupOptions"] == ["ALL"] + [g for g, _ in FLUX1_GROUPS]
    folded = seen["by_step"]["flux_fold"]
    assert layout["shownS"] == 38 and folded["shownS"] == 0
    assert ["S", 38, "true"] in folded["groups"] and folded["panelHeight"] < layout["panelHeight"] - 100
    named = seen["by_step"]["flux_named"]
    assert named["text"] == "D00-D18=0.3, S00-S37=0.7, OUT=1" and named["state"] == "ok"
    assert float(named["values"]["D18"]) == pytest.approx(0.3) and float(named["values"]["S05"]) == pytest.approx(0.7)
    assert "named values for 58 blocks" in named["status"]
    listed = _floats(seen["by_step"]["flux_list"]["text"])
    assert len(listed) == 61 and listed[3 + 5:3 + 8] == [0.9] * 3 and listed.count(0.5) == 58
    unknown = seen["by_step"]["flux_unknown"]
    assert unknown["state"] == "error" and "unknown block id in 'D19' for Flux.1" in unknown["status"]
    assert unknown["text"] == seen["by_step"]["flux_list"]["text"]  # nothing written
    for p in seen["placementFlux"]:
        box, panel = p["box"], p["panel"]
        assert panel["bottom"] <= box["bottom"] + 2, f"{seen['mode']}: {p['widget']} overflows its node"


def test_editor_follows_the_run_with_the_models_own_block_count(seen):
    """After a run "auto" shows the layout the node used: the tiny SD3's 2 joint blocks (an SD3-medium run
    its 24), not SD3.5-large's full-size 38 (it used to); the full-size layout stays in the list."""
    before, after, full = (seen["by_step"][s] for s in ("sd3_before", "sd3_run", "sd3_full"))
    assert before["sliders"] == 41 and before["layout"] == "sd3"  # BASE, IN, J00-J37, OUT
    assert after["layout"] == "sd3:2" and after["property"] == "sd3:2", after
    assert after["ids"] == ["BASE", "IN", "J00", "J01", "OUT"] and after["state"] == "ok"
    assert after["status"] == "SD3/SD3.5: named values for 3 blocks, the others take the scalar"
    assert full["sliders"] == 41 and full["layout"] == "sd3"


# Combine Models' widgets per method: what the method reads, besides method, alpha and block weights; a weights
# text stays in sight under a method that refuses it (Model Stock). The pack's panels (block editor, report) too.
COMBINE_SHOWN = ["method", "alpha", "blocks_alpha_preset", "blocks_alpha"]
COMBINE_PANELS = ["blocks_alpha_editor", "merge_suite_output"]
COMBINE_STEPS = {"combine_loaded": ("ties", ["weights", "density"]),
                 "combine_della": ("della", ["weights", "drop_rate", "epsilon", "seed"]),
                 "combine_median": ("geometric_median", ["weights", "median_epsilon", "iterations"]),
                 "combine_stock": ("model_stock", ["weights"])}


def test_combine_models_shows_only_the_chosen_methods_inputs(seen):
    """The example workflow (TIES) and three picked methods: only the inputs the method reads are drawn (canvas)
    or rendered (Vue nodes), at most 10 widgets besides the editor panel; the node gets shorter than with all
    23 inputs, its panel stays inside it, and the prompt still carries every input with the saved values."""
    counts = {}
    for name, (method, inputs) in COMBINE_STEPS.items():
        step = seen["by_step"][name]
        assert step["method"] == method, step
        assert sorted(step["panels"]) == COMBINE_PANELS
        assert sorted(step["drawn"]) == sorted(COMBINE_SHOWN + inputs + COMBINE_PANELS), \
            f"{seen['mode']} {method}: {step['drawn']}"
        if seen["mode"] == "vue":
            assert step["rendered"] == len(step["drawn"]), f"{method}: {step['rendered']} widget rows on the page"
        counts[method] = len(step["drawn"]) - len(COMBINE_PANELS)
        assert counts[method] <= 10
    SHOTS.mkdir(parents=True, exist_ok=True)
    steps = [seen["by_step"][n] for n in COMBINE_STEPS]
    heights = {s["method"]: round(s["height"] - s["panelHeight"]) for s in steps}  # the widgets' part
    (SHOTS / f"combine_widgets_{seen['mode']}.json").write_text(json.dumps({"widgets": counts, "height": heights}))
    assert heights["model_stock"] < heights["ties"] < heights["della"], heights
    saved = json.loads((WORKFLOW.parent / "combine_ties_three_fine_tunes.json").read_text())
    node = next(n for n in saved["nodes"] if n["type"] == "MergeSuite_CombineModels")
    expected = to_prompt(saved, seen["object_info"])[str(node["id"])]["inputs"]
    got = seen["by_step"]["combine_della"]["inputs"]
    assert {k: got.get(k) for k in expected} == {**expected, "method": "della"}, "hidden inputs keep their values"
    assert {"density", "top", "bottom", "iterations", "median_epsilon"} <= set(got), got
    for p in seen["placementCombine"]:
        box, panel = p["box"], p["panel"]
        assert panel["bottom"] <= box["bottom"] + 2 and panel["top"] >= box["top"] - 2, \
            f"{seen['mode']}: {p['widget']} lies outside its node"


MERGE_NODES = ["MergeSuite_CLIPMerge", "MergeSuite_LoraMerge", "MergeSuite_ModelMerge", "MergeSuite_CheckpointMerge"]


def _prefix_length(name: str, display: str, query: str = "merge") -> float:
    """What the frontend (1.32 and 1.49) ranks a match by first: the shortest of id and display name that
    starts with the query (a name that only contains it comes after all of those)."""
    starting = [len(s) for s in (name, display or "") if s.lower().startswith(query)]
    return min(starting) if starting else float("inf")


def test_searching_merge_in_the_search_box_shows_the_merge_nodes_first(seen):
    """Typing "merge" into the node search box. Every MergeSuite_* id starts with "merge", so the whole pack
    matches, and (ComfyUI 0.33) core nodes such as Merge Splats, Merge Meshes and Merge Audio too. Both
    frontends rank by the shortest id or display name that starts with the query, then by popularity data
    (none for these nodes), then by how well id, display name and (1.49) search aliases match. So: Merge
    CLIP comes first, the merge nodes come before the rest of the pack, and a node of another pack or of
    ComfyUI comes before a merge node only with a shorter name (MergeSplat, 10 characters, ties with
    "Merge CLIP" and loses on the alias "merge"; "Merge Audio" is shorter than "Merge Models")."""
    search = seen["search"]
    shown, ranked = search["shown"], search["ranked"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / f"search_merge_{seen['mode']}.json").write_text(json.dumps(search, indent=1))
    assert len(shown) >= 8 and ranked, search
    assert [s for s in shown[:12] if s] == [n for n, _ in ranked[:12] if n in shown[:12]], \
        f"the search box lists what the frontend's search ranks: {search}"
    names = [n for n, _ in ranked]
    assert names[0] == "MergeSuite_CLIPMerge", ranked
    pack = [n for n in names if n.startswith("MergeSuite_")]
    assert pack[:4] == MERGE_NODES, ranked
    length = {n: _prefix_length(n, d) for n, d in ranked}
    for node in MERGE_NODES:
        ahead = [n for n in names[:names.index(node)] if not n.startswith("MergeSuite_")]
        assert all(length[n] < length[node] for n in ahead), \
            f"{[(n, length[n]) for n in ahead]} rank above {node} ({length[node]}): {ranked}"


def test_merge_nodes_carry_search_aliases_where_the_host_sends_them(seen):
    """ComfyUI 0.33 sends search_aliases in /object_info (its MergeSplat has some); 0.3.75 has no such field."""
    info = seen["object_info"]
    host_sends = any("search_aliases" in d for d in info.values())
    for node in MERGE_NODES:
        if host_sends:
            assert "merge" in (info[node].get("search_aliases") or []), node
        else:
            assert "search_aliases" not in info[node], node


def test_screenshot_of_the_editor_was_taken(seen):
    shot = SHOTS / f"block_editor_{seen['mode']}.png"
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_every_example_workflow_gives_the_frontend_the_prompt_the_tests_run(seen):
    """The frontend assigns widgets_values by position, with extra slots for seed controls: the
    example workflows must line up with what it builds, not only with demo/workflow_api.py."""
    examples = seen["examples"]
    assert sorted(examples) == sorted(p.name for p in WORKFLOW.parent.glob("*.json"))
    for name, frontend in examples.items():
        expected = to_prompt(json.loads((WORKFLOW.parent / name).read_text()), seen["object_info"])
        for node_id, node in expected.items():
            got = frontend[node_id]["inputs"]
            for key, value in node["inputs"].items():
                assert got.get(key) == value, f"{name} node {node_id} ({node['class_type']}) input {key}"
