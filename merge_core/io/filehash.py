"""sha256 of model files, cached by (path, size, mtime).

SuperMerger records the full sha256 of each input in the saved file's metadata
and finds models by it. Hashing a 7 GB checkpoint takes tens of seconds, so
results are kept in memory and, when a cache file is given, on disk.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Optional

from ..errors import MergeInputError
from .json_limits import loads_bounded
from .output_file import write_bytes

_LOCK = threading.Lock()
_MEMORY: dict[str, str] = {}


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _load(cache_file: Optional[Path]) -> dict:
    """The cache's entries; a missing, unreadable or damaged cache is empty (it is rebuilt on the next write).
    A damaged one (bad JSON, nested deeper than any cache: json.loads would raise RecursionError, and every
    hashed save would fail) is logged in one line and ignored: the cache is an optimisation only."""
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        data = loads_bounded(cache_file.read_bytes(), f"the sha256 cache '{cache_file}'")
    except OSError:
        return {}
    except ValueError as exc:
        logging.getLogger("merge_suite").warning("merge_suite: %s; it is ignored and rebuilt.", exc)
        return {}
    if not isinstance(data, dict):
        logging.getLogger("merge_suite").warning("merge_suite: the sha256 cache '%s' is not an object; it is "
                                                 "ignored and rebuilt.", cache_file)
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str) and len(v) == 64}


def known_sha256(path: str | os.PathLike, cache_file: Optional[str | os.PathLike] = None) -> str:
    """The sha256 of ``path`` when it was already computed (in memory, or in the cache file), else '': never
    hashes, so a caller that only wants to note the hash when it is free (the merge history) costs nothing."""
    try:
        stamp = _stamp(Path(path))
    except OSError:
        return ""
    with _LOCK:
        if stamp in _MEMORY:
            return _MEMORY[stamp]
        stored = _load(Path(cache_file)).get(stamp) if cache_file else None
        if stored:
            _MEMORY[stamp] = stored
            return stored
    return ""


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
                write_bytes(cache_path, json.dumps(data, indent=0).encode("utf-8"), overwrite=True)
            except (OSError, MergeInputError):
                pass  # the cache is an optimisation only
    return value
