"""The demo's check of its shipped models: a missing, truncated, damaged or re-hashed file is one clear message
naming the file and how to rebuild the models; whole files with the model card's hashes pass."""
import hashlib
import json
import struct
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "demo"))
import run_demo  # noqa: E402


def write_safetensors(path: Path, data: bytes = b"\0" * 8) -> Path:
    header = json.dumps({"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, len(data)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setattr(run_demo, "MODELS", tmp_path)
    monkeypatch.setattr(run_demo, "REPO", tmp_path.parent)
    return tmp_path


def test_whole_files_with_the_cards_hashes_pass(models):
    good = write_safetensors(models / "m-base.safetensors")
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    (models / "README.md").write_text(f"| m-base.safetensors | 1 MB | `{digest}` |\n")
    assert run_demo.card_hashes(models / "README.md") == {"m-base.safetensors": digest}
    run_demo.check_shipped(["m-base.safetensors"])


@pytest.mark.parametrize("damage,problem", [
    (lambda p: p.unlink(), "is missing"),
    (lambda p: p.write_bytes(p.read_bytes()[:-3]), "is truncated or damaged"),
    (lambda p: p.write_bytes(b"\x05\0\0\0\0\0\0\0{nope"), "has a damaged safetensors header"),
    (lambda p: p.write_bytes(b"abc"), "is too short"),
    (lambda p: write_safetensors(p, b"\1" * 8), "does not have the sha256 the model card lists"),
])
def test_a_bad_model_names_the_file_and_the_rebuild(models, damage, problem):
    path = write_safetensors(models / "m-pastel.safetensors")
    (models / "README.md").write_text(f"m-pastel.safetensors {hashlib.sha256(path.read_bytes()).hexdigest()}\n")
    damage(path)
    with pytest.raises(run_demo.DemoModelError) as info:
        run_demo.check_shipped(["m-pastel.safetensors"])
    message = str(info.value)
    assert f"m-pastel.safetensors {problem}" in message
    assert message.endswith("python demo/train/train.py --out demo/models --force")


def test_the_demo_graph_for_your_own_checkpoints_has_only_weight_sums():
    graph = run_demo.examples.demo_style_blend({"A": "mine_a.safetensors", "B": "mine_b.safetensors"},
                                               prompts=("a cat",))
    types = [n["type"] for n in graph.nodes]
    assert types.count("CheckpointLoaderSimple") == 2 and types.count("MergeSuite_ModelMerge") == 1
    assert graph.expect_images == 5 + 1
