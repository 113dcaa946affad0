"""merge_core.io.output_file and the file-safety rules around it: inputs, no-clobber, partial files, damaged files."""
import json
import os
import shutil
import stat
import time

import pytest
import torch

from merge_core.io import filehash
from merge_core.methods import native
from merge_core.errors import MergeInputError
from merge_core.io.filehash import file_sha256
from merge_core.lora.files import next_free_path
from merge_core.io.output_file import PART_RE, OutputFile, next_numbered, remove_stale_parts, write_bytes
from merge_core.io.safetensors_file import SafetensorsReader, SafetensorsWriter

HAS_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))


def test_sink_refuses_inputs_by_real_path_and_inode(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"input")
    (tmp_path / "link").symlink_to(a)
    os.link(a, tmp_path / "hard")
    for target in (tmp_path / "sub" / ".." / "a.bin", tmp_path / "link", tmp_path / "hard"):
        with pytest.raises(MergeInputError, match="input file"):
            write_bytes(target, b"x", inputs=[a], overwrite=True)
    assert a.read_bytes() == b"input" and not (tmp_path / "sub").exists()


def test_commit_never_clobbers_a_file_that_appeared(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(MergeInputError, match="appeared while"):
        with OutputFile(target) as out:
            out.write(b"merged")
            target.write_bytes(b"someone else's")
    assert target.read_bytes() == b"someone else's"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_an_automatic_name_taken_meanwhile_goes_to_the_next_number(tmp_path, monkeypatch, links):
    """Two identical saves at once: the second commits under the next free number instead of failing after its
    work; what the first wrote is untouched. Both commit paths (link, and check-then-rename where the file
    system has no hard links)."""
    if not links:
        def no_link(src, dst):
            raise OSError(1, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_link)
    first = tmp_path / "m_00001_.safetensors"
    (tmp_path / "m_00002_.safetensors").write_bytes(b"older")
    writer = SafetensorsWriter(first, [("x", torch.float32, (2,))], renumber=next_numbered)
    writer.write("x", torch.ones(2))
    first.write_bytes(b"the other save")
    written = writer.commit()
    assert written == tmp_path / "m_00003_.safetensors" == writer.path
    with SafetensorsReader(written) as r:
        assert torch.equal(r.get("x"), torch.ones(2))
    assert first.read_bytes() == b"the other save" and (tmp_path / "m_00002_.safetensors").read_bytes() == b"older"
    assert sorted(os.listdir(tmp_path)) == [f"m_0000{i}_.safetensors" for i in (1, 2, 3)]


def test_ordinary_permissions_and_cleanup_on_error(tmp_path):
    path = write_bytes(tmp_path / "new" / "f.bin", b"data")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    with pytest.raises(RuntimeError):
        with OutputFile(tmp_path / "deep" / "er" / "g.bin") as out:
            out.write(b"half")
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["new"], "temporary file and the folders made for it are gone"


def test_writer_commit_failure_leaves_nothing(tmp_path):
    writer = SafetensorsWriter(tmp_path / "m.safetensors", [("k", torch.float32, (2,))])
    with pytest.raises(RuntimeError, match="only 0 of 1"):
        writer.commit()
    assert os.listdir(tmp_path) == []


def test_stale_parts_only_ours_and_only_stale(tmp_path):
    old = time.time() - 3600
    dead = tmp_path / ".x.safetensors.merge-suite-999999999-0123abcd.part"
    idle_live = tmp_path / f".y.safetensors.merge-suite-{os.getppid()}-0123abcd.part"
    fresh_live = tmp_path / f".z.safetensors.merge-suite-{os.getppid()}-89abcdef.part"
    fresh_dead = tmp_path / ".w.safetensors.merge-suite-999999998-89abcdef.part"
    foreign = tmp_path / ".x.safetensors.abc123.part"
    for p in (dead, idle_live, fresh_live, fresh_dead, foreign):
        p.write_bytes(b"")
    for p in (dead, idle_live, foreign):
        os.utime(p, (old, old))
    assert PART_RE.match(dead.name) and not PART_RE.match(foreign.name)
    removed = remove_stale_parts(tmp_path)
    assert sorted(removed) == sorted([dead, idle_live])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (fresh_live, fresh_dead, foreign))


def test_lora_prefix_is_checked_before_folders_are_made(tmp_path):
    loras = tmp_path / "loras"
    loras.mkdir()
    for prefix in ("../outside/x", "/abs/x", "a/../../b/x"):
        with pytest.raises(MergeInputError, match="leaves the LoRA folder"):
            next_free_path(loras, prefix)
    assert sorted(os.listdir(tmp_path)) == ["loras"] and not os.listdir(loras)


@pytest.mark.parametrize("blob,words", [
    (b"\x10\x00\x00\x00\x00\x00\x00\x00[1,2]           ", "not an object"),
    (b"\x08\x00\x00\x00\x00\x00\x00\x00{\"k\": 3}", "not a JSON object"),
    (b"\x00\x00\x00\x00\x00\x01\x00\x00" + b" " * 32, "absurd"),
])
def test_damaged_headers_are_one_line_errors(tmp_path, blob, words):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(MergeInputError, match=words) as info:
        SafetensorsReader(path, "model_b")
    assert info.value.input_name == "model_b" and "bad.safetensors" in str(info.value)


def test_damaged_hash_cache_is_rebuilt(tmp_path):
    data = tmp_path / "m.bin"
    data.write_bytes(b"model")
    cache = tmp_path / "cache.json"
    for junk in ("[1, 2]", "{not json", '{"x": 5}', "null"):
        cache.write_text(junk)
        filehash._MEMORY.clear()
        digest = file_sha256(data, cache)
        assert len(digest) == 64
        assert digest in json.loads(cache.read_text()).values()


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_native_cache_refuses_a_shared_folder_and_unverified_library(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    folder = native._cache_dir()
    folder.mkdir(parents=True)
    lib = native.library()
    assert lib is not None
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0, "the cache folder is private"
    built = sorted(folder.glob("kernels-*.so"))
    assert len(built) == 1
    planted = built[0].read_bytes()
    swap = folder / "swap"
    swap.write_bytes(b"\x7fELF not the library we built")
    os.replace(swap, built[0])  # swapped behind our back (a new file: the loaded one stays mapped): hash differs
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    assert native.library() is not None and built[0].read_bytes() == planted, "rebuilt, not loaded"
    folder.chmod(0o777)  # anyone may write here: nothing is loaded from it
    before = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    lib = native.library()
    assert lib is not None and str(folder) not in lib._name
    assert built[0].stat().st_mtime_ns == before


def test_a_file_that_cannot_fit_is_refused_before_any_work(tmp_path, monkeypatch):
    from merge_core import cli
    from safetensors.torch import save_file

    for name in ("a", "b"):
        save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.randn(64, 64)},
                  str(tmp_path / f"{name}.safetensors"))
    real = shutil.disk_usage
    seen = []

    def tight(folder):  # the real figures, with room for only 1000 bytes
        seen.append(folder)
        return real(folder)._replace(free=1000)

    monkeypatch.setattr(shutil, "disk_usage", tight)
    out = tmp_path / "new" / "deeper" / "m.safetensors"
    with pytest.raises(MergeInputError, match=r"needs 0\.00 GB but only 0\.00 GB is free") as err:
        SafetensorsWriter(out, [("k", torch.float32, (64, 64))])
    assert err.value.input_name == "output"
    assert not (tmp_path / "new").exists(), "the folders it would have made are gone again"
    assert cli.main(["merge", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "-q",
                     "-o", str(tmp_path / "m.safetensors")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"], "no output, no part file"
    monkeypatch.setattr(shutil, "disk_usage", real)
    SafetensorsWriter(out, [("k", torch.float32, (64, 64))]).abort()  # with the real free space it starts
    assert seen


# --- hostile inputs: special files, prefixes, a damaged hash cache -----------------------------------

def _special_targets(tmp_path):
    """(target, check it is still what it was): a FIFO, a symlink to /dev/null (never opened here: the
    refusal comes before any open), a socket."""
    import socket
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    null_link = tmp_path / "null.csv"
    null_link.symlink_to("/dev/null")
    sock_path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    return [(fifo, "FIFO", lambda: stat.S_ISFIFO(os.stat(fifo).st_mode)),
            (null_link, "character device", lambda: stat.S_ISCHR(os.stat(null_link).st_mode)
             and os.readlink(null_link) == "/dev/null" and stat.S_ISCHR(os.stat("/dev/null").st_mode)),
            (sock_path, "socket", lambda: stat.S_ISSOCK(os.lstat(sock_path).st_mode))]


@pytest.mark.parametrize("overwrite", [True, False])
def test_only_regular_files_are_replaced(tmp_path, overwrite, monkeypatch):
    """Refused before anything is opened: os.open, os.replace and os.link fail the test if reached (a
    regression must never replace /dev/null)."""
    for target, kind, unchanged in _special_targets(tmp_path):
        with monkeypatch.context() as m:
            for name in ("open", "replace", "link", "rename"):
                m.setattr(os, name, lambda *a, n=name, **k: pytest.fail(f"os.{n}{a[:2]} reached"))
            with pytest.raises(MergeInputError, match=f"{kind}.*not a regular file.*only regular files"):
                write_bytes(target, b"csv", overwrite=overwrite, input_name="--csv")
        assert unchanged(), target
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_check_target_names_the_link_and_where_it_points(tmp_path):
    from merge_core.io.output_file import check_target
    (tmp_path / "out").symlink_to("/dev/null")
    with pytest.raises(MergeInputError) as info:
        check_target(tmp_path / "out", overwrite=True, input_name="-o")
    assert "a link to '/dev/null'" in str(info.value) and "\n" not in str(info.value)
    # a regular file is still replaced
    (tmp_path / "f").write_bytes(b"old")
    write_bytes(tmp_path / "f", b"new", overwrite=True)
    assert (tmp_path / "f").read_bytes() == b"new"


@pytest.mark.parametrize("prefix,words", [
    ("a\0b", "NUL byte"),
    ("sub/x\ny", "control character '\\n'"),
    ("..\\x", "backslash"),
    ("x" * 181, "file name 'xxxxxxxxxxxxxxxxxxxxxxxx...' is 181 bytes long; at most 180"),
    ("é" * 91, "is 182 bytes long"),  # bytes, not characters
    ("f" * 256 + "/x", "folder name"),
    ("   ", "is empty"),
])
def test_check_prefix_refuses(tmp_path, prefix, words):
    from merge_core.io.output_file import check_prefix
    with pytest.raises(MergeInputError) as info:
        check_prefix(prefix, "loras")
    text = str(info.value)
    assert words in text and "filename_prefix" in text and "Fix:" in text and "\n" not in text


def test_check_prefix_accepts_ordinary_names():
    from merge_core.io.output_file import check_prefix
    for prefix in (" merge_suite/x[1] ", "a/b/c", "x" * 180, "f" * 255 + "/x", "%year%/merged"):
        assert check_prefix(prefix, "checkpoints") == prefix.strip()


def test_deeply_nested_hash_cache_is_ignored_and_rebuilt(tmp_path, caplog):
    model = tmp_path / "m.bin"
    model.write_bytes(b"weights")
    cache = tmp_path / "cache.json"
    cache.write_text("[" * 100_000 + "]" * 100_000)
    filehash._MEMORY.clear()
    with caplog.at_level("WARNING", logger="merge_suite"):
        digest = file_sha256(model, cache)
    assert digest == __import__("hashlib").sha256(b"weights").hexdigest()
    assert any("nested more than" in r.getMessage() and "rebuilt" in r.getMessage() for r in caplog.records)
    assert list(json.loads(cache.read_text()).values()) == [digest]  # rebuilt as a valid cache
    filehash._MEMORY.clear()
    assert file_sha256(model, cache) == digest
