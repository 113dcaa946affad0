"""The Python examples of docs/library.md run as written (in order, in one namespace, in an empty folder)."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def library_python_blocks() -> list[str]:
    text = (REPO / "docs" / "library.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```$", text, re.M | re.S)


def test_library_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = library_python_blocks()
    assert len(blocks) >= 5  # toy models, merge_state_dicts, merge_files, analyze_files, LoRA
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "library_examples"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/library.md python block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "keys merged into out.safetensors" in out and "% similar" in out
    for name in ("out", "lora_b", "lora_c", "lora_bc"):
        assert (tmp_path / f"{name}.safetensors").stat().st_size > 0
    merged = namespace["merged"]
    assert set(merged) == set(namespace["sd_a"]) and not any(v.isnan().any() for v in merged.values())
