import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import comfy_env  # noqa: E402

comfy_env.setup()

import pytest  # noqa: E402
import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """Builds tiny models on demand and caches them per (kind, layout, seed)."""
    cache = {}

    def get(kind, layout, seed):
        key = (kind, layout, seed)
        if key not in cache:
            cache[key] = (tiny_models.build_model if kind == "model" else tiny_models.build_clip)(layout, seed)
        return cache[key]
    return get


@pytest.fixture(autouse=True)
def merge_history(tmp_path_factory, monkeypatch):
    """Every test records its merges in a history of its own, never in the host's user directory."""
    from merge_suite.nodes import history_log
    path = tmp_path_factory.mktemp("history") / "history.jsonl"
    monkeypatch.setattr(history_log, "history_path", lambda: path)
    return path
