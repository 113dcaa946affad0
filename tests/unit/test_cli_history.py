"""The command line's merge history: what each command records, the history command, --from-history replays
(bit-identical), and the log's safety (concurrent appends, damaged lines, an unwritable file)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_lora import SD1_MODULES, low_rank, write
from test_merge_api import small_model

from merge_core.cli.app import main
from merge_core.history import History, default_cli_path, entry, input_record

REPO = Path(__file__).resolve().parents[2]
SD1_BLOCKS = 26


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture
def models(tmp_path, sd1_keys):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_file(small_model(sd1_keys, i, torch.float32), paths[-1])
    return paths


def test_tests_never_write_the_real_user_history():
    assert Path(os.environ["XDG_DATA_HOME"]) != Path.home() / ".local" / "share"
    if sys.platform.startswith("linux"):
        assert default_cli_path() == Path(os.environ["XDG_DATA_HOME"]) / "merge-suite" / "history.jsonl"


def test_merge_records_its_exact_settings_and_replays_bit_identical(tmp_path, models, capsys):
    log = tmp_path / "h.jsonl"
    blocks = ",".join(["0.123456789012345"] + ["0.5"] * (SD1_BLOCKS - 1))  # beyond the metadata's 10 digits
    out = tmp_path / "out.safetensors"
    assert main(["merge", *models, "--mode", "add_difference", "--alpha", "0.3", "--blocks", blocks,
                 "--include", "IN01-IN05 attn2", "--dtype", "fp16", "--history", str(log), "-q",
                 "-o", str(out)]) == 0
    [item] = lines(log)
    assert item["id"] == 1 and item["kind"] == "file merge" and item["source"] == "CLI merge"
    assert item["mode"] == "Add difference" and item["output"] == str(out)
    assert [m["name"] for m in item["models"]] == models and [m["path"] for m in item["models"]] == models
    assert all(len(m["fingerprint"]) == 32 and "sha256" not in m for m in item["models"])
    assert item["settings"] == {
        "mode": "Add difference", "alpha": 0.3, "beta": 0.25, "blocks_alpha": blocks, "blocks_beta": "",
        "calcmode": "normal", "gamma": 0.3, "seed": 0, "tensor2_corrected": False, "elemental": "",
        "elemental_full_key": False, "adjust": "", "include_exclude": "include: IN01-IN05 attn2"}
    assert item["options"] == {"dtype": "fp16", "scaled_layout": "scaled_fp8", "hash_inputs": False,
                               "device": "auto"}
    tree = item["recipe"]["model"]
    assert item["recipe"]["clip"] == tree and tree["kind"] == "checkpoint"
    assert [tree[k]["file"] for k in "abc"] == ["m0.safetensors", "m1.safetensors", "m2.safetensors"]
    assert item["text"].startswith("Add difference(m0, m1, m2) blocks_alpha=0.123456789,0.5,")
    again = tmp_path / "again.safetensors"
    assert main(["merge", "--from-history", "-1", "--history", str(log), "-q", "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    replayed = lines(log)[-1]
    assert replayed["id"] == 2 and replayed["settings"] == item["settings"] and replayed["output"] == str(again)
    capsys.readouterr()


def test_hashed_inputs_are_recorded_and_the_replay_is_bit_identical(tmp_path, models):
    log, out, again = tmp_path / "h.jsonl", tmp_path / "o.safetensors", tmp_path / "r.safetensors"
    assert main(["merge", *models[:2], "--calc", "cosineA", "--alpha", "0.7", "--hash-inputs", "--history",
                 str(log), "-q", "-o", str(out)]) == 0
    [item] = lines(log)
    assert all(len(m["sha256"]) == 64 for m in item["models"]) and item["options"]["hash_inputs"] is True
    assert item["settings"]["calcmode"] == "cosineA" and item["settings"]["alpha"] == 0.7
    assert main(["merge", "--from-history", "1", "--history", str(log), "-q", "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_combine_records_its_settings_and_replays_bit_identical(tmp_path, models):
    log, out, again = tmp_path / "h.jsonl", tmp_path / "o.safetensors", tmp_path / "r.safetensors"
    assert main(["combine", *models[1:], "--base", models[0], "--method", "dare_ties", "--weights",
                 "0.3333333333333,0.7", "--drop-rate", "0.5", "--seed", "7", "--history", str(log), "-q",
                 "-o", str(out)]) == 0
    [item] = lines(log)
    assert item["kind"] == "combine" and item["source"] == "CLI combine" and item["mode"] == "dare_ties"
    assert [m["path"] for m in item["models"]] == models  # the base first
    assert item["settings"] == {
        "method": "dare_ties", "alpha": 1.0, "weights": "0.3333333333333,0.7", "density": 0.2, "drop_rate": 0.5,
        "epsilon": 0.1, "median_epsilon": 1e-06, "top": 0.01, "bottom": 0.1, "iterations": 100, "seed": 7,
        "blocks_alpha": "", "elemental": "", "include_exclude": ""}
    assert item["recipe"]["model"]["kind"] == "combine" and item["options"] == {"dtype": None}
    assert main(["combine", "--from-history", "-1", "--history", str(log), "-q", "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_a_later_parameter_is_recorded_where_its_method_reads_it_and_replays(tmp_path, models, capsys):
    """Parameters added after the first release (rank, slerp_axis, ...) are recorded only by the methods that read
    them; the entry's command line names them and the replay is bit-identical."""
    log, out, again = tmp_path / "h.jsonl", tmp_path / "o.safetensors", tmp_path / "r.safetensors"
    assert main(["combine", *models[1:], "--base", models[0], "--method", "nuslerp", "--slerp-axis", "rows",
                 "--weights", "1,3", "--history", str(log), "-q", "-o", str(out)]) == 0
    [item] = lines(log)
    assert item["settings"]["slerp_axis"] == "rows" and "rank" not in item["settings"]
    capsys.readouterr()
    assert main(["history", "show", "-1", "--history", str(log)]) == 0
    command = capsys.readouterr().out.split("\ncommand line: ")[1].strip()
    assert "--method nuslerp" in command and "--weights 1,3" in command and "--slerp-axis rows" in command, command
    assert main(["combine", "--from-history", "-1", "--history", str(log), "-q", "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_lora_commands_record_their_parameters(tmp_path, capsys):
    log = tmp_path / "h.jsonl"
    p1 = write(tmp_path / "l1.safetensors", {n: low_rank(6, 5, 2, i) for i, n in enumerate(SD1_MODULES)})
    p2 = write(tmp_path / "l2.safetensors", {n: low_rank(6, 5, 2, 9 + i) for i, n in enumerate(SD1_MODULES)})
    merged = tmp_path / "merged.safetensors"
    assert main(["lora-merge", f"{p1}:0.5:OUTALL, {p2}:1", "-o", str(merged), "--rank", "4", "--dtype", "fp32",
                 "--history", str(log)]) == 0
    extracted = tmp_path / "e.safetensors"
    assert main(["lora-extract", "--loras", f"{p1}:1", f"{p2}:1", "-o", str(extracted), "--alpha", "0.5",
                 "--gamma", "2", "--history", str(log)]) == 0
    merge_item, extract_item = lines(log)
    assert merge_item["kind"] == "lora merge" and merge_item["source"] == "CLI lora-merge"
    assert merge_item["mode"] == "exact" and merge_item["output"] == str(merged) and "recipe" not in merge_item
    assert [m["path"] for m in merge_item["models"]] == [p1, p2]
    assert merge_item["settings"] == {"loras": f"{p1}:0.5:OUTALL, {p2}:1", "method": "exact", "rank": 4,
                                      "svd": "full", "clamp": None, "kohya_strength": False,
                                      "metadata": "create new", "presets": "", "dtype": "fp32"}
    assert extract_item["kind"] == "lora extract" and extract_item["mode"] == "extract from LoRAs"
    assert extract_item["settings"] == {"loras": True, "alpha": 0.5, "beta": 1.0, "a": f"{p1}:1", "b": f"{p2}:1",
                                        "gamma": 2.0, "presets": "", "dtype": "fp16"}
    assert main(["history", "show", "-1", "--history", str(log)]) == 0
    assert "no command line: LoRA entries" in capsys.readouterr().out
    assert main(["merge", "--from-history", "-1", "--history", str(log), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "entry 2 (lora extract) has no merge recipe to redo" in capsys.readouterr().err


def test_lora_extract_from_checkpoints_is_recorded(tmp_path, models):
    log = tmp_path / "h.jsonl"
    out = tmp_path / "x.safetensors"
    assert main(["lora-extract", models[1], models[0], "-o", str(out), "--rank", "2", "--beta", "0.5",
                 "--history", str(log)]) == 0
    [item] = lines(log)
    assert item["mode"] == "extract" and [m["path"] for m in item["models"]] == models[1::-1]
    assert item["settings"] == {"loras": False, "alpha": 1.0, "beta": 0.5, "rank": 2, "conv_rank": 0,
                                "te_min_diff": 0.1, "svd": "full", "clamp": None, "dtype": "fp16"}


def test_default_log_and_turning_it_off(tmp_path, models, monkeypatch):
    default = default_cli_path()
    before = len(lines(default)) if default.exists() else 0
    assert main(["merge", *models[:2], "-q", "-o", str(tmp_path / "a.safetensors")]) == 0
    assert len(lines(default)) == before + 1 and lines(default)[-1]["output"] == str(tmp_path / "a.safetensors")
    monkeypatch.setenv("MERGE_SUITE_HISTORY", "0")
    log = tmp_path / "off.jsonl"
    assert main(["merge", *models[:2], "-q", "--history", str(log), "-o", str(tmp_path / "b.safetensors")]) == 0
    assert not log.exists() and len(lines(default)) == before + 1


def test_nothing_is_recorded_when_the_merge_fails(tmp_path, models, capsys):
    log = tmp_path / "h.jsonl"
    assert main(["merge", *models[:2], "--blocks", "0.1,0.2", "--history", str(log), "-o",
                 str(tmp_path / "o.safetensors")]) == 2
    assert not log.exists()
    capsys.readouterr()


def test_an_unwritable_history_still_merges(tmp_path, models, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = tmp_path / "o.safetensors"
    assert main(["merge", *models[:2], "-q", "--history", str(blocker / "h.jsonl"), "-o", str(out)]) == 0
    assert out.exists()
    err = capsys.readouterr().err
    assert err.count("cannot be written") == 1 and "Traceback" not in err


def sample(i, mode="Weight sum", words="", output=None):
    leaf_a, leaf_b = {"file": f"a{i}.safetensors", "sha256": ""}, {"file": f"b{i}.safetensors", "sha256": ""}
    tree = {"kind": "checkpoint", "settings": {"mode": mode, "alpha": 0.5}, "a": leaf_a, "b": leaf_b}
    return entry("file merge", "CLI merge", [input_record(f"a{i}", f"/in/a{i}.safetensors"),
                                                  input_record(f"b{i}", f"/in/b{i}.safetensors")], mode=mode,
                 settings=tree["settings"], recipe={"model": tree, "clip": tree},
                 text=f"{mode}(a{i}, b{i}) alpha=0.5 {words}".strip(), output=output or f"/out/o{i}.safetensors")


def test_history_lists_searches_and_shows(tmp_path, capsys):
    log = History(tmp_path / "h.jsonl")
    log.append(sample(1, words="apple"))
    log.append(sample(2, "Add difference", "apple pear"))
    log.append(sample(3, words="pear"))
    where = ["--history", str(log.path)]
    assert main(["history", *where]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:3]] == ["3", "2", "1"] and out[3].startswith("3 of 3 entries")
    assert "file merge" in out[0] and "Weight sum(a3, b3) alpha=0.5 pear -> /out/o3.safetensors" in out[0]
    assert main(["history", "--search", "APPLE pear", *where]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:-1]] == ["2"] and out[-1].startswith("1 of 1 entry matching")
    assert main(["history", "--search", "apple pear", "--any", "--limit", "2", *where]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:-1]] == ["3", "2"] and out[-1].startswith("2 of 3 entries")
    assert main(["history", "--search", "apple pear", "--any", "--offset", "2", *where]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:-1]] == ["1"] and out[-1].startswith("1 of 3 entries")
    assert main(["history", "show", "2", *where]) == 0
    shown = capsys.readouterr().out
    body, command = shown.split("\ncommand line: ")
    assert json.loads(body)["text"] == "Add difference(a2, b2) alpha=0.5 apple pear"
    assert " merge /in/a2.safetensors /in/b2.safetensors --mode add_difference --alpha 0.5 " \
           "-o /out/o2.safetensors" in command
    assert main(["history", "show", "9", *where]) == 2
    err = capsys.readouterr().err
    assert "there is no entry 9" in err and "has 3 entries" in err


def test_show_prints_a_merge_and_a_combine_command_line(tmp_path, models, capsys):
    log = tmp_path / "h.jsonl"
    assert main(["merge", *models, "--mode", "sum_twice", "--beta", "0.4", "--exclude", "OUT03 VAE",
                 "--dtype", "bf16", "--history", str(log), "-q", "-o", str(tmp_path / "o.safetensors")]) == 0
    assert main(["combine", *models[1:], "--base", models[0], "--method", "ties", "--density", "0.3",
                 "--history", str(log), "-q", "-o", str(tmp_path / "c.safetensors")]) == 0
    capsys.readouterr()
    assert main(["history", "show", "1", "--history", str(log)]) == 0
    command = capsys.readouterr().out.split("\ncommand line: ")[1].strip()
    assert command.endswith(f"merge {' '.join(models)} --mode sum_twice --alpha 0.5 --beta 0.4 --exclude "
                            f"'OUT03 VAE' --dtype bf16 -o {tmp_path / 'o.safetensors'}")
    assert main(["history", "show", "-1", "--history", str(log)]) == 0
    command = capsys.readouterr().out.split("\ncommand line: ")[1].strip()
    assert command.endswith(f"combine {models[1]} {models[2]} --base {models[0]} --method ties --alpha 1 "
                            f"--density 0.3 -o {tmp_path / 'c.safetensors'}")


def test_replay_refuses_unknown_ids_changed_inputs_and_chained_recipes(tmp_path, models, sd1_keys, capsys):
    log = tmp_path / "h.jsonl"
    out = tmp_path / "o.safetensors"
    assert main(["merge", *models[:2], "-q", "--history", str(log), "-o", str(out)]) == 0
    target = ["-o", str(tmp_path / "r.safetensors"), "--history", str(log)]
    assert main(["merge", "--from-history", "5", *target]) == 2
    err = capsys.readouterr().err
    assert "input '--from-history': there is no entry 5" in err and "has 1 entry (ids 1 to 1)" in err
    save_file(small_model(sd1_keys, 5, torch.float32), models[1])  # model B rewritten since the merge
    assert main(["merge", "--from-history", "-1", *target]) == 2
    err = capsys.readouterr().err
    assert f"the entry's input '{models[1]}' has changed since the merge" in err
    os.remove(models[1])
    assert main(["merge", "--from-history", "-1", *target]) == 2
    assert f"the entry's input '{models[1]}' is missing" in capsys.readouterr().err
    assert main(["merge", models[0], "--from-history", "-1", *target]) == 2
    assert "give no MODEL" in capsys.readouterr().err
    inner = sample(1)["recipe"]["model"]
    chained = dict(sample(2), recipe={"model": dict(inner, a=inner), "clip": None})
    History(log).append(chained)
    assert main(["merge", "--from-history", "-1", *target]) == 2
    assert "chains several merge steps" in capsys.readouterr().err
    assert not (tmp_path / "r.safetensors").exists()


APPENDER = """
import sys
from merge_core.history import History, entry
log = History(sys.argv[1])
for i in range(300):
    assert log.append(entry("merge", "writer " + sys.argv[2], [], text="x" * (i * 7 % 900))) is not None
"""


def test_two_processes_appending_at_once_lose_nothing(tmp_path):
    path = tmp_path / "h.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), name], cwd=REPO) for name in "ab"]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    items = lines(path)  # every line valid JSON
    assert sorted(item["id"] for item in items) == list(range(1, 601))
    assert sum(item["source"] == "writer a" for item in items) == 300
    assert History(path).count() == 600


def test_a_damaged_line_is_skipped_once_and_ids_go_on(tmp_path):
    path = tmp_path / "h.jsonl"
    log = History(path)
    for i in range(1, 4):
        log.append(sample(i))
    text = path.read_text().splitlines()
    path.write_text("\n".join(text[:1] + ['{"id": 2, "time": "cut off mid-wr'] + text[2:]) + "\n")
    warnings = []
    reader = History(path, warn=warnings.append)
    assert reader.count() == 2 and [e["id"] for e in reader.search()[1]] == [3, 1]
    assert reader.search("a3")[0] == 1 and len(warnings) == 1 and "1 damaged line" in warnings[0]
    assert reader.append(sample(4))["id"] == 4 and reader.get(-1)["id"] == 4 and len(warnings) == 1
