"""Shared test setup: make merge_core importable without shadowing ComfyUI's `nodes`.

The repo root holds this pack's `nodes/` package, so it goes at the END of
sys.path: ComfyUI's own top-level `nodes` module (inserted first by the
integration conftest) must win.
"""
import gzip
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))


def load_keyset(name: str) -> dict[str, tuple[int, ...]]:
    """Every key and shape of a full SD1.5 ("sd1") or SDXL ("sdxl") checkpoint."""
    with gzip.open(REPO / "merge_core" / "architectures" / "keysets" / f"{name}.json.gz") as f:
        return {k: tuple(v[0]) for k, v in json.loads(f.read()).items()}


@pytest.fixture(scope="session")
def sd1_keys():
    return load_keyset("sd1")


@pytest.fixture(scope="session")
def sdxl_keys():
    return load_keyset("sdxl")
