"""The "Merge history" sidebar tab in a real browser: headless Debian Chromium, driven by playwright-core,
against the real ComfyUI server, its GET /merge_suite/history route and its shipped frontend (1.32.9 with
ComfyUI 0.3.75, 1.49.6 with 0.33), in both rendering modes.

Before the server starts, 30 entries are written through merge_core.history.History into the log the server
reads (<base>/user/merge_suite/history.jsonl). history_check.mjs opens the tab, pages, searches and adds a node,
and reports what it saw; the expected entries are computed here with History.search.
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

from merge_core.history import History, entry, input_record  # noqa: E402

SHOTS = REPO / "out" / "browser"
NODE_TYPE = "MergeSuite_MergeFromHistory"
WORDS = "anime realistic"
PAGE_SIZE = 50
MODELS = ["animeMix_v3.safetensors", "realisticVision_v5.safetensors", "dreamshaper_8.safetensors",
          "sdxl/juggernaut_xl.safetensors", "flux1-dev-fp8.safetensors"]
MODES = ["Weight sum", "Add difference", "Train Difference", "ties", "della"]


pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not_runnable() is not None,
                                                   reason=why_not_runnable() or "")]


def _made_entry(i: int, folder: Path) -> dict:
    """Entry i of 30: kinds, modes, models and settings vary; the last one's recipe text has two lines."""
    kind = ["merge", "combine", "file merge", "save", "lora merge"][i % 5]
    names = [MODELS[i % 5], MODELS[(i + 1 + i // 5) % 5]] + ([MODELS[(i + 3) % 5]] if kind == "combine" else [])
    models = [input_record(n, path=folder / n, folder="checkpoints") for n in names]
    mode = MODES[i % len(MODES)]
    alpha = round(0.1 + (i % 9) / 10, 2)
    text = f"{mode}({', '.join(Path(n).stem for n in names)}) alpha={alpha:g}"
    if i == 29:
        text += f"\n[1] + detail_lora.safetensors strength={alpha:g}"
    return entry(kind, "Merge Checkpoints" if kind != "combine" else "Combine Models", models, mode=mode,
                 settings={"alpha": alpha, "blocks_alpha_preset": "GRAD_V" if i % 4 == 0 else ""},
                 recipe={"model": None, "clip": None}, text=text,
                 output=str(folder / f"merged_{i}.safetensors") if kind in ("file merge", "save") else None,
                 prompt_id=f"prompt-{i}")


def _write_history(base: Path) -> tuple[Path, list[dict], str]:
    """The server's log with 30 entries, and one more entry line (id 31) for a writer to append later."""
    log_path = base / "user" / "merge_suite" / "history.jsonl"
    log = History(log_path)
    made = [log.append(_made_entry(i, base / "models" / "checkpoints")) for i in range(30)]
    assert all(made) and [e["id"] for e in made] == list(range(1, 31))
    later = base / "later.jsonl"
    shutil.copy(log_path, later)
    extra = History(later).append(entry("merge", "Merge Models", [input_record("late.safetensors")],
                                        mode="Weight sum", settings={"alpha": 0.5}, text="Weight sum(late) alpha=0.5"))
    assert extra and extra["id"] == 31
    return log_path, made, later.read_text(encoding="utf-8").splitlines(keepends=True)[-1]


@pytest.fixture(scope="module", params=["litegraph", "vue"])
def seen(request, tmp_path_factory):
    """One browser session per rendering mode of the frontend: LiteGraph canvas, and Vue nodes ("Nodes 2.0")."""
    mode = request.param
    assert (HERE / "node_modules" / "playwright-core").is_dir(), \
        "playwright-core is missing: run `npm ci` in tests/browser (scripts/setup_host.sh does)"
    base = tmp_path_factory.mktemp("comfy_history")
    out = tmp_path_factory.mktemp("history_out")
    log_path, made, extra_line = _write_history(base)
    expected = {m: History(log_path).search(WORDS, m, 0, PAGE_SIZE) for m in ("and", "or")}
    config = out / "config.json"
    config.write_text(json.dumps({"words": WORDS, "historyPath": str(log_path), "extraLine": extra_line,
                                  "pageSize": PAGE_SIZE}))
    with ComfyServer(base, extra_env={"MERGE_SUITE_HISTORY": "1"}) as server:
        run = subprocess.run(["node", str(HERE / "history_check.mjs"), server.url, str(out), str(config)],
                             cwd=HERE, capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, CHROMIUM=CHROMIUM, VUE_NODES="1" if mode == "vue" else "0"))
        log = server.log_tail(60)
    assert run.returncode == 0, f"node failed:\n{run.stderr[-3000:]}"
    result = json.loads(run.stdout)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name in ("history_tab.png", "history_search.png", "history_added.png", "history_failure.png"):
        if (out / name).is_file():
            shutil.copy(out / name, SHOTS / name.replace(".png", f"_{mode}.png"))
    assert "error" not in result, f"{mode}: {result['error']}\nserver log:\n{log}"
    result["expected"] = expected  # what History itself finds
    result["made"] = made
    result["mode"] = mode
    return result


def test_the_tab_loads_without_errors(seen):
    assert "merge_suite.history_tab" in seen["extensions"]
    assert seen["nodeRegistered"], f"{NODE_TYPE} is not registered"
    ours = [m for m in seen["console"] if "merge_suite" in m or "history_tab" in m]
    assert not ours, ours


def test_opening_the_tab_shows_the_newest_entries_first_with_the_page_count(seen):
    opened = seen["opened"]
    assert opened["state"] == "ok" and opened["total"] == 30
    assert opened["ids"] == list(range(30, 10, -1))
    assert opened["pager"] == "1\u201320 of 30"
    assert opened["prevDisabled"] and not opened["nextDisabled"]
    assert opened["requests"] == 1, "opening the tab asks the server once"


def test_an_entry_row_shows_id_time_kind_models_and_the_first_line_of_its_recipe(seen):
    newest, first = seen["made"][-1], seen["opened"]["first"]
    assert first["head"].startswith("#30")
    assert first["kind"] == newest["kind"]
    assert first["models"] == ", ".join(m["name"] for m in newest["models"])
    assert "\n" in newest["text"]
    assert first["text"] == newest["text"].splitlines()[0]
    assert first["title"] == newest["text"]
    assert first["buttons"] == ["Copy recipe", "Add to graph"]


def test_pages_move_forward_and_back_and_the_page_size_applies(seen):
    assert seen["nextPage"]["ids"] == list(range(10, 0, -1)) and seen["nextPage"]["pager"] == "21\u201330 of 30"
    assert seen["nextPage"]["nextDisabled"] and not seen["nextPage"]["prevDisabled"]
    assert seen["prevPage"]["ids"] == seen["opened"]["ids"]
    assert seen["bigPage"]["ids"] == list(range(30, 0, -1)) and seen["bigPage"]["pager"] == "1\u201330 of 30"


def test_searching_all_words_lists_exactly_the_entries_with_both(seen):
    total, page = seen["expected"]["and"]
    assert 0 < total < 30
    found = seen["allWords"]
    assert found["total"] == total and found["ids"] == [e["id"] for e in page]
    assert found["pager"] == f"1\u2013{total} of {total}"
    assert found["requests"] < len(WORDS), "the search box waits for a pause in typing"


def test_searching_any_word_lists_the_entries_with_either(seen):
    total, page = seen["expected"]["or"]
    assert seen["expected"]["and"][0] < total <= 30
    assert seen["anyWord"]["total"] == total and seen["anyWord"]["ids"] == [e["id"] for e in page]


def test_add_to_graph_adds_a_merge_from_history_node_for_the_entry(seen):
    added = seen["added"]
    assert added["addId"] == seen["expected"]["and"][1][0]["id"]
    assert added["type"] == NODE_TYPE and added["historyId"] == added["addId"], added
    assert added["inView"], added
    assert [p.get("history_id") for p in added["prompt"]] == [added["addId"]]


def test_the_list_refreshes_after_a_prompt_finishes(seen):
    after = seen["afterRun"]
    assert after["run"]["status"] == 200, after["run"]
    assert after["ids"][0] == 31 and after["total"] == 31, after
    assert 1 <= after["requests"] <= 2, "a finished prompt costs one request (two events at most)"
