"""Shared test setup: make merge_core importable without shadowing ComfyUI's `nodes`, and keep the CLI's
merge history out of the real user data directory.

The repo root holds this pack's `nodes/` package, so it goes at the END of
sys.path: ComfyUI's own top-level `nodes` module (inserted first by the
integration conftest) must win.
"""
import gzip
import json
import os
import sys
from pathlib import Path

import pytest

# the shared check modules the test modules import: pytest's assertion messages inside them too
pytest.register_assert_rewrite("family_checks", "family_node_checks", "core_parity")

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


@pytest.fixture(scope="session", autouse=True)
def isolated_user_data(tmp_path_factory):
    """XDG_DATA_HOME in a temporary directory for the whole session (subprocesses inherit it): CLI merges
    record their history there, never in ~/.local/share."""
    before = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("user_data"))
    yield Path(os.environ["XDG_DATA_HOME"])
    if before is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = before
