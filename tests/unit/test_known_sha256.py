"""known_sha256: the cached sha256 of a file or '', never a hash computed on the spot."""
import hashlib

from merge_core.io import filehash


def test_known_only_after_a_hash_and_read_from_the_cache_file(tmp_path, monkeypatch):
    path, cache = tmp_path / "m.safetensors", tmp_path / "cache.json"
    path.write_bytes(b"weights")
    assert filehash.known_sha256(path, cache) == "" and not cache.exists()
    value = filehash.file_sha256(path, cache)
    assert value == hashlib.sha256(b"weights").hexdigest() and filehash.known_sha256(path) == value
    monkeypatch.setattr(filehash, "_MEMORY", {})  # a new process: only the cache file knows it
    assert filehash.known_sha256(path) == "" and filehash.known_sha256(path, cache) == value
    assert filehash.known_sha256(tmp_path / "missing.safetensors", cache) == ""
