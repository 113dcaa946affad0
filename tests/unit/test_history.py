"""The merge history log (merge_core.history): ids, search, damaged lines, inputs that changed."""
import json
import os

import pytest

from merge_core.errors import MergeInputError
from merge_core.history import (History, check_input, default_cli_path, digest, enabled, entry, fingerprint,
                                input_record)


def _entry(i, mode="Weight sum", model="a.safetensors"):
    return entry("merge", "CLI merge", [input_record(model), input_record("b.safetensors")], mode=mode,
                 settings={"alpha": i / 10}, text=f"{mode}(a, b) alpha={i / 10:g}")


def test_ids_are_sequential_and_get_counts_from_the_end(tmp_path):
    log = History(tmp_path / "h.jsonl")
    made = [log.append(_entry(i)) for i in range(5)]
    assert [e["id"] for e in made] == [1, 2, 3, 4, 5]
    assert log.count() == 5
    assert log.get(-1)["settings"] == {"alpha": 0.4} and log.get(-5)["id"] == 1 and log.get(3)["id"] == 3
    for line in (tmp_path / "h.jsonl").read_text().splitlines():
        assert json.loads(line)["time"]


@pytest.mark.parametrize("ref", [0, 6, -6, 99])
def test_an_unknown_id_says_how_many_entries_exist(tmp_path, ref):
    log = History(tmp_path / "h.jsonl")
    for i in range(5):
        log.append(_entry(i))
    with pytest.raises(MergeInputError) as err:
        log.get(ref)
    assert "has 5 entries (ids 1 to 5)" in str(err.value) and str(ref) in str(err.value)


def test_an_empty_history_says_so(tmp_path):
    with pytest.raises(MergeInputError, match="has 0 entries"):
        History(tmp_path / "missing.jsonl").get(-1)


def test_search_and_or_newest_first_paged(tmp_path):
    log = History(tmp_path / "h.jsonl")
    for i in range(30):
        log.append(_entry(i, mode="Add difference" if i % 3 == 0 else "Weight sum",
                          model="flux.safetensors" if i % 2 == 0 else "sdxl.safetensors"))
    total, page = log.search("ADD flux", "and", limit=100)
    assert total == 5 and [e["id"] for e in page] == [25, 19, 13, 7, 1]  # i % 6 == 0, newest first
    total, page = log.search("add flux", "or", offset=2, limit=3)
    assert total == 20 and len(page) == 3 and page[0]["id"] > page[1]["id"] > page[2]["id"]
    total, page = log.search("", limit=20)
    assert total == 30 and page[0]["id"] == 30 and len(page) == 20
    assert log.search("nothing-like-this")[0] == 0
    with pytest.raises(MergeInputError, match="search mode"):
        log.search("x", "xor")


def test_the_index_follows_appends_from_other_writers(tmp_path):
    reader, writer = History(tmp_path / "h.jsonl"), History(tmp_path / "h.jsonl")
    writer.append(_entry(1))
    assert reader.search("alpha=0.1")[0] == 1
    writer.append(_entry(2))
    assert reader.search("alpha")[0] == 2 and reader.get(-1)["id"] == 2
    (tmp_path / "h.jsonl").unlink()  # a new file: read from the start
    writer.append(_entry(3))
    assert reader.count() == 1 and reader.get(-1)["id"] == 1


def test_a_damaged_line_is_skipped_with_one_warning_and_ids_go_on(tmp_path):
    warnings = []
    path = tmp_path / "h.jsonl"
    log = History(path, warn=warnings.append)
    log.append(_entry(1))
    with open(path, "a") as f:
        f.write("not json at all\n{\"id\": 7, \"cut off")  # a crash mid-write: no newline
    made = log.append(_entry(2))
    assert made["id"] == 2  # the last valid id is 1
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["id"] == 2, "the new entry starts on its own line"
    assert log.count() == 2 and log.search("alpha")[0] == 2
    log.search("alpha")
    assert len(warnings) == 1 and "2 damaged line(s)" in warnings[0]


def test_an_unwritable_history_warns_once_and_never_raises(tmp_path):
    warnings = []
    (tmp_path / "h.jsonl").mkdir()  # a directory where the file should be
    log = History(tmp_path / "h.jsonl", warn=warnings.append)
    assert log.append(_entry(1)) is None and log.append(_entry(2)) is None
    assert len(warnings) == 1 and "cannot be written" in warnings[0]


def test_an_entry_that_is_not_json_serialisable_is_stored_as_text(tmp_path):
    log = History(tmp_path / "h.jsonl")
    made = log.append(entry("merge", "x", [], settings={"path": tmp_path}))
    assert log.get(made["id"])["settings"]["path"] == str(tmp_path)


def test_inputs_missing_or_changed_are_errors_naming_the_file(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(os.urandom(3 << 20))
    record = input_record("m.safetensors", model)
    check_input(record, model)  # unchanged
    data = bytearray(model.read_bytes())
    data[(len(data) - (1 << 16)) * 8 // 15 + 10] ^= 0xFF  # one byte inside a sampled window
    model.write_bytes(bytes(data))
    with pytest.raises(MergeInputError, match="'m.safetensors' has changed"):
        check_input(record, model)
    with pytest.raises(MergeInputError, match="'m.safetensors' is missing"):
        check_input(record, tmp_path / "gone.safetensors")
    hashed = dict(record, sha256="0" * 64)
    with pytest.raises(MergeInputError, match="sha256 differs"):
        check_input(hashed, model, sha256_of=lambda p: "1" * 64)
    check_input(hashed, model, sha256_of=lambda p: "0" * 64)  # a known hash decides over the fingerprint


def test_fingerprint_sees_size_and_header(tmp_path):
    one, two = tmp_path / "1", tmp_path / "2"
    one.write_bytes(b"x" * 100)
    two.write_bytes(b"x" * 101)
    assert fingerprint(one) != fingerprint(two)
    two.write_bytes(b"y" + b"x" * 99)
    assert fingerprint(one) != fingerprint(two)


def test_digest_ignores_id_time_and_prompt():
    a = dict(_entry(1), id=1, time="t1", prompt_id="p1")
    b = dict(_entry(1), id=2, time="t2", prompt_id="p2")
    assert digest(a) == digest(b) != digest(_entry(2))


def test_switch_and_default_place(monkeypatch, tmp_path):
    assert enabled({}) and enabled({"MERGE_SUITE_HISTORY": "1"})
    assert not any(enabled({"MERGE_SUITE_HISTORY": v}) for v in ("0", "false", "OFF", " no "))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    if os.name != "nt" and not str(default_cli_path()).startswith(str(os.path.expanduser("~/Library"))):
        assert default_cli_path() == tmp_path / "merge-suite" / "history.jsonl"


def test_a_fresh_process_finds_entries_without_the_index_as_the_index_does(tmp_path):
    """The CLI's get(-k) and get(id) read near the end or bisect the file; same answers as the full index,
    damaged lines and a cut last line included."""
    path = tmp_path / "h.jsonl"
    writer = History(path, warn=lambda text: None)
    for i in range(600):
        writer.append(dict(_entry(i), padding="x" * (i % 7) * 150))
        if i % 97 == 5:
            with open(path, "a") as f:
                f.write('{"id": 999999, damaged\n')
    with open(path, "a") as f:
        f.write('{"id": 601, "cut')
    indexed = History(path, warn=lambda text: None)
    indexed.count()
    for ref in (-1, -2, -77, -600, 1, 2, 300, 599, 600):
        fresh = History(path, warn=lambda text: None)
        assert fresh.get(ref) == indexed.get(ref), ref
        assert fresh._stamp is None, "answered without building the index"
    with pytest.raises(MergeInputError, match="has 600 entries"):
        History(path, warn=lambda text: None).get(601)


def test_non_ascii_entries_are_found_case_insensitively_and_read_back(tmp_path):
    log = History(tmp_path / "h.jsonl")
    log.append(_entry(1, model="Café_Ünïcode.safetensors"))
    log.append(_entry(2))
    total, page = log.search("café ÜNÏCODE")
    assert total == 1 and page[0]["models"][0]["name"] == "Café_Ünïcode.safetensors"
    assert log.get(-1)["id"] == 2 and log.get(1)["models"][0]["name"].startswith("Café")
