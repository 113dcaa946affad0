"""sha256 of model files, cached by (path, size, mtime).

SuperMerger records the full sha256 of each input in the saved file's metadata
and finds models by it. Hashing a 7 GB checkpoint takes tens of seconds, so
results are kept in memory and, when a cache file is given, on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Optional

_LOCK = threading.Lock()
_MEMORY: dict[str, str] = {}


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _load(cache_file: Optional[Path]) -> dict:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        return json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}


def file_sha256(path: str | os.PathLike, cache_file: Optional[str | os.PathLike] = None) -> str:
    path = Path(path)
    cache_path = Path(cache_file) if cache_file else None
    stamp = _stamp(path)
    with _LOCK:
        if stamp in _MEMORY:
            return _MEMORY[stamp]
        stored = _load(cache_path).get(stamp)
        if stored:
            _MEMORY[stamp] = stored
            return stored
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _LOCK:
        _MEMORY[stamp] = value
        if cache_path is not None:
            data = _load(cache_path)
            data[stamp] = value
            try:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=0))
                os.replace(tmp, cache_path)
            except OSError:
                pass  # the cache is an optimisation only
    return value
