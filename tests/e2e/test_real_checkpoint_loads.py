"""The tiny-model registry (demo/tiny_registry) never changes how a real checkpoint loads.

A server with the registry installed, as every end-to-end test and the demo run it, loads a synthetic
full-size SD1.5 checkpoint (every key and shape of the released file, fp16) with CheckpointLoaderSimple and
builds ComfyUI's own SD1.5 model from it: 320 U-Net channels, a 768-wide CLIP-L, no tiny config claiming it.
"""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "demo"))
sys.path.insert(0, str(REPO / "bench"))
from server import ComfyServer  # noqa: E402
from synth import write_synthetic  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_real_ckpt")
    srv = ComfyServer(base)
    write_synthetic("sd1", base / "models" / "checkpoints" / "full_size_sd15.safetensors", seed=1)
    srv.start()
    yield srv
    srv.stop()


def test_full_size_sd15_checkpoint_loads_with_tiny_registry_installed(server):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "full_size_sd15.safetensors"}},
        "2": {"class_type": "MergeSuite_Elements",
              "inputs": {"block": "M00", "match": "attn2.to_k", "model": ["1", 0], "clip": ["1", 1]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    entry = server.run_prompt(prompt, timeout=600)
    log = server.log_tail(400)
    assert "model_type EPS" in log, log  # ComfyUI's SD1.5 config, not a tiny one
    texts = [t for out in entry["outputs"].values() for t in out.get("text", [])]
    table = "\n".join(texts)
    # SD1.5's middle block: 1280 channels attending to a 768-wide text encoder (tiny models are 32 wide)
    assert "middle_block.1.transformer_blocks.0.attn2.to_k.weight" in table, table
    assert "1280x768" in table, table
