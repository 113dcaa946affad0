"""Hostile catalogue, files written: special files under --overwrite, hostile save prefixes, the file-merge reuse key,
concurrent identical file merges, NaN/inf inputs of a file merge, a damaged sha256 cache.

Through the CLI (one subprocess running merge_core.cli.main per case list, as test_faults_settings.py) and
the real server's /prompt (two servers sharing one models folder, as two ComfyUI instances on one disk).
Every case asserts the one-line error (or the correct result), inputs byte-identical, no output, no
partial file and no empty folder left. The CLI driver refuses, in-process, any write into /dev: a
regression of the special-file check must fail the case, never replace /dev/null.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
HOOKS = Path(__file__).resolve().parent / "hostile_files_hooks"
sys.path.insert(0, str(REPO / "demo"))
sys.path.insert(0, str(REPO / "tests" / "unit"))
from server import ComfyServer, comfy_path  # noqa: E402
from catalogue import node, one_line_error, run_cli  # noqa: E402
from fault_inputs import tiny_lora  # noqa: E402
from test_merge_api import small_model  # noqa: E402

PART = ".merge-suite-"
LORA_MODULES = ["lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te_text_model_encoder_layers_0_mlp_fc1"]
PAUSE_FILE = "pause_writes"  # while it exists, the servers' hook holds each write open (hostile_files_hooks)
NOT_REGULAR = "not a regular file; only regular files are ever replaced"

# run before the catalogue's DRIVER: a case that would open, replace, rename or link something into /dev fails
# instead (the refusals must come before any such call; a slip must never reach a real device)
DEV_GUARD = """
import os
def _into_dev(p):
    try:
        return os.path.realpath(os.fsdecode(p)).startswith('/dev/')
    except (TypeError, ValueError):
        return False
def _guard(name, real, where):
    def call(*a, **k):
        if (any(_into_dev(a[i]) for i in where if i < len(a))
                and (name != 'open' or (len(a) > 1 and a[1] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))):
            raise SystemExit('GUARD: ' + name + ' into /dev: ' + repr(a[:2]))
        return real(*a, **k)
    return call
for _n, _w in (('open', (0,)), ('replace', (1,)), ('rename', (1,)), ('link', (1,))):
    setattr(os, _n, _guard(_n, getattr(os, _n), _w))
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kind_of(path: Path) -> str:
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return "link->" + os.readlink(path) + ":" + kind_of_target(path)
    return kind_of_target(path)


def kind_of_target(path: Path) -> str:
    mode = os.stat(path).st_mode
    for test, name in ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"),
                       (stat.S_ISSOCK, "sock"), (stat.S_ISDIR, "dir"), (stat.S_ISREG, "reg")):
        if test(mode):
            return name
    return "?"


def tree(ws: Path) -> dict[str, str]:
    """Every entry under ws: regular files by digest, the rest by kind (a FIFO is never read)."""
    return {str(p.relative_to(ws)): (sha(p) if kind_of(p) == "reg" else kind_of(p)) for p in sorted(ws.rglob("*"))}


def _fifo(name):
    return lambda ws: os.mkfifo(ws / name)


def _dev_null_link(name):
    return lambda ws: (ws / name).symlink_to("/dev/null")


def _dir(name):
    return lambda ws: (ws / name).mkdir()


def _regular(name):
    return lambda ws: (ws / name).write_bytes(b"old")


M = ["merge", "{A}", "{B}", "-q"]
# (id, argv ({A}, {B}: models, {L1}, {L2}: LoRAs, {ws}: the case's folder), prepare, words of the error or None)
CLI_CASES = [
    ("merge_o_fifo", M + ["-o", "{ws}/pipe", "--overwrite"], _fifo("pipe"), ["-o", "FIFO", NOT_REGULAR]),
    ("merge_o_fifo_no_overwrite", M + ["-o", "{ws}/pipe"], _fifo("pipe"), ["-o", "FIFO", NOT_REGULAR]),
    ("merge_o_dev_null_link", M + ["-o", "{ws}/null.safetensors", "--overwrite"], _dev_null_link("null.safetensors"),
     ["-o", "a link to '/dev/null'", "character device", NOT_REGULAR]),
    ("merge_o_dir", M + ["-o", "{ws}/d", "--overwrite"], _dir("d"), ["-o", "existing directory"]),
    ("merge_o_regular_overwrite_ok", M + ["-o", "{ws}/old.safetensors", "--overwrite"], _regular("old.safetensors"),
     None),
    ("combine_o_fifo", ["combine", "--base", "{A}", "{A}", "{B}", "--method", "task_arithmetic", "-o", "{ws}/pipe",
                        "--overwrite"], _fifo("pipe"), ["-o", "FIFO", NOT_REGULAR]),
    ("analyze_csv_dev_null_link", ["analyze", "{A}", "{B}", "--csv", "{ws}/t.csv", "--overwrite"],
     _dev_null_link("t.csv"), ["--csv", "character device", NOT_REGULAR]),
    ("analyze_csv_fifo", ["analyze", "{A}", "{B}", "--csv", "{ws}/pipe", "--overwrite"], _fifo("pipe"),
     ["--csv", "FIFO", NOT_REGULAR]),
    ("analyze_png_fifo", ["analyze", "{A}", "{B}", "--png", "{ws}/pipe", "--overwrite"], _fifo("pipe"),
     ["--png", "FIFO", NOT_REGULAR]),
    ("analyze_diff_png_dev_null_link", ["analyze", "{A}", "{B}", "--diff-png", "{ws}/d.png", "--overwrite"],
     _dev_null_link("d.png"), ["--diff-png", "character device", NOT_REGULAR]),
    ("lora_merge_o_fifo", ["lora-merge", "{L1}:1", "-o", "{ws}/pipe", "--overwrite"], _fifo("pipe"),
     ["-o", "FIFO", NOT_REGULAR]),
    ("lora_extract_o_dev_null_link", ["lora-extract", "{A}", "{B}", "--rank", "2", "-o", "{ws}/x.safetensors",
                                      "--overwrite"], _dev_null_link("x.safetensors"),
     ["-o", "character device", NOT_REGULAR]),
    ("lora_extract_loras_o_fifo", ["lora-extract", "--loras", "{L1}:1", "{L2}:1", "-o", "{ws}/pipe", "--overwrite"],
     _fifo("pipe"), ["-o", "FIFO", NOT_REGULAR]),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sd1_keys):
    folder = tmp_path_factory.mktemp("hostile_files_inputs")
    for i, name in enumerate("AB"):
        save_file(small_model(sd1_keys, i, torch.float32), str(folder / f"{name}.safetensors"))
    for i, name in enumerate(("L1", "L2")):
        save_file(tiny_lora(LORA_MODULES, i + 1), str(folder / f"{name}.safetensors"))
    return folder


def test_cli_catalogue(inputs, tmp_path):
    names = {n: str(inputs / f"{n}.safetensors") for n in ("A", "B", "L1", "L2")}
    before_inputs = tree(inputs)
    runs, spaces = [], []
    for case_id, argv, prepare, _ in CLI_CASES:
        ws = tmp_path / case_id
        ws.mkdir()
        prepare(ws)
        spaces.append((ws, tree(ws)))
        runs.append([a.format(ws=ws, **names) for a in argv])
    results = run_cli(runs, preamble=DEV_GUARD)
    failures = []
    for (case_id, _, _, words), (rc, err), (ws, before) in zip(CLI_CASES, results, spaces):
        after = tree(ws)
        if words is None:
            changed = {k for k in after if after[k] != before.get(k)}
            ok = rc == 0 and "Traceback" not in err and changed == {"old.safetensors"}
        else:
            ok = one_line_error(rc, err, words) and after == before
        if not ok:
            failures.append(f"{case_id}: rc={rc} stderr={err!r} before={before} after={after}")
    assert not failures, "\n".join(failures)
    assert tree(inputs) == before_inputs, "an input changed"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# --- the real server ------------------------------------------------------------------------------------

def _tiny_checkpoints(folder: Path) -> None:
    """Tiny SD1 checkpoints (ComfyUI's loader reads them): a, b, a B with NaN values, and v1/model, v2/model
    (other weights, equal size, equal mtime)."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from comfy.cli_args import args; args.cpu = True\n"
            "import tiny_models\n"
            "for name, seed in (('a', 1), ('b', 2), ('v1/model', 3), ('v2/model', 4)):\n"
            "    tiny_models.save_checkpoint(sys.argv[3] + '/' + name + '.safetensors', 'sd1', seed)\n")
    (folder / "v1").mkdir(parents=True)
    (folder / "v2").mkdir()
    subprocess.run([sys.executable, "-c", code, str(comfy_path()), str(REPO / "demo"), str(folder)], check=True,
                   cwd=comfy_path(), stdout=subprocess.DEVNULL)
    b = load_file(folder / "b.safetensors")
    key = next(k for k, v in b.items() if k.startswith("model.diffusion_model.") and v.is_floating_point()
               and v.numel() > 4)
    b[key] = b[key].clone()
    b[key].view(-1)[:2] = float("nan")
    save_file(b, folder / "b_nan.safetensors")
    v1, v2 = folder / "v1" / "model.safetensors", folder / "v2" / "model.safetensors"
    assert v1.stat().st_size == v2.stat().st_size
    os.utime(v2, ns=(v1.stat().st_atime_ns, v1.stat().st_mtime_ns))


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers on one models folder (the second's models is a link to the first's)."""
    root = tmp_path_factory.mktemp("hostile_files_server")
    one, two = root / "one", root / "two"
    _tiny_checkpoints(one / "models" / "checkpoints")
    (one / "models" / "loras").mkdir()
    two.mkdir()
    (two / "models").symlink_to(one / "models", target_is_directory=True)
    cache = one / "user" / "merge_suite" / "sha256_cache.json"
    cache.parent.mkdir(parents=True)
    cache.write_text("{\"x\": " + "[" * 100_000 + "]" * 100_000 + "}")
    env = {"PYTHONPATH": str(HOOKS), "MERGE_SUITE_PAUSE_FILE": str(one / PAUSE_FILE)}
    made = [ComfyServer(one, extra_env=env), ComfyServer(two, extra_env=env)]
    errors = []
    threads = [threading.Thread(target=lambda s=s: _start(s, errors)) for s in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        made[0].info = made[0].get("/object_info")
        yield made
    finally:
        for srv in made:
            srv.stop()


def _start(srv: ComfyServer, errors: list) -> None:
    try:
        srv.start(timeout=240)
    except Exception as exc:  # noqa: BLE001 - reported by the fixture
        errors.append(exc)


def file_merge(info, a="a.safetensors", b="b.safetensors", prefix="hostile/fm") -> dict:
    return {"1": node(info, "MergeSuite_CheckpointFileMerge", file_a=a, file_b=b, filename_prefix=prefix,
                      alpha=0.3),
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 3]}}}


def save(info, prefix: str, hash_inputs: bool = False) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
            "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
            "3": node(info, "MergeSuite_CheckpointMerge", model_a=["1", 0], clip_a=["1", 1], model_b=["2", 0],
                      clip_b=["2", 1], alpha=0.3),
            "4": {"class_type": "MergeSuite_SaveCheckpoint",
                  "inputs": {"model": ["3", 0], "clip": ["3", 1], "vae": ["1", 2], "filename_prefix": prefix,
                             "precision": "fp16", "prune": False, "save_workflow": False,
                             "hash_inputs": hash_inputs}}}


def lora_extract(info, prefix: str) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
            "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
            "3": node(info, "MergeSuite_LoraExtract", model_a=["1", 0], model_b=["2", 0], rank=2,
                      filename_prefix=prefix)}


def lora_merge(info, prefix: str) -> dict:
    return {"3": node(info, "MergeSuite_LoraMerge", lora_list="l1:1", filename_prefix=prefix)}


LONG = "x" * 300
DEEP = "d" * 256 + "/x"
# id: (prompt builder (info -> prompt), words of the node's one-line error)
REFUSED = {
    "save_prefix_nul": (lambda i: save(i, "new/a\0b"), ["Save Checkpoint", "filename_prefix", "NUL byte"]),
    "save_prefix_long": (lambda i: save(i, "new/" + LONG), ["filename_prefix", "300 bytes long; at most 180"]),
    "save_prefix_long_folder": (lambda i: save(i, "new/" + DEEP), ["filename_prefix", "folder name", "at most 255"]),
    "save_prefix_backslash": (lambda i: save(i, "..\\x"), ["filename_prefix", "backslash", "'/'"]),
    "lora_extract_prefix_backslash": (lambda i: lora_extract(i, "..\\x"), ["filename_prefix", "backslash"]),
    "lora_extract_prefix_nul": (lambda i: lora_extract(i, "new/\0"), ["filename_prefix", "NUL byte"]),
    "lora_merge_prefix_long": (lambda i: lora_merge(i, "new/" + LONG), ["filename_prefix", "at most 180"]),
    "file_merge_prefix_nul": (lambda i: file_merge(i, prefix="new/a\0"), ["Merge Checkpoint Files",
                                                                         "filename_prefix", "NUL byte"]),
    "file_merge_prefix_long": (lambda i: file_merge(i, prefix="new/" + LONG), ["filename_prefix", "at most 180"]),
    "file_merge_prefix_backslash": (lambda i: file_merge(i, prefix="new\\x"), ["filename_prefix", "backslash"]),
}


def outcome(srv: ComfyServer, prompt: dict, timeout: float = 180) -> tuple[dict, str]:
    """(outputs, error message of the failed node or '')."""
    status, answer = srv.post("/prompt", {"prompt": prompt, "client_id": "hostile-files"})
    assert status == 200, answer
    deadline = time.time() + timeout
    while time.time() < deadline:
        entry = srv.get(f"/history/{answer['prompt_id']}").get(answer["prompt_id"])
        if entry and entry.get("status", {}).get("completed") is not None:
            errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
            return entry.get("outputs", {}), (errors[0]["exception_message"] if errors else "")
        time.sleep(0.1)
    raise TimeoutError(f"no answer; log:\n{srv.log_tail()}")


def models_tree(srv: ComfyServer) -> dict[str, str]:
    return tree(srv.base / "models")


def no_parts(srv: ComfyServer) -> bool:
    return not [p for p in (srv.base / "models").rglob(f"*{PART}*")] and \
        not [p for p in (srv.base / "models").rglob(".merge-suite-*.lock")]


@pytest.mark.parametrize("case", list(REFUSED))
def test_server_refuses_hostile_prefix(case, servers):
    srv = servers[0]
    before = models_tree(srv)
    build, words = REFUSED[case]
    _, message = outcome(srv, build(srv.info))
    assert message and len(message.strip().splitlines()) == 1, message
    assert all(w in message for w in words), message
    assert "Fix:" in message, message
    assert models_tree(srv) == before, "a refused save created or changed files or folders"
    assert not (srv.base / "new").exists() and not (srv.base / "models" / "new").exists()
    assert no_parts(srv)


def file_name(outputs: dict) -> str:
    return outputs["2"]["text"][0]


def merged_files(srv: ComfyServer, sub: str) -> list[str]:
    folder = srv.base / "models" / "checkpoints" / sub
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_server_glob_prefix_reuses_its_file(servers):
    """The second run on the other server (ComfyUI's own cache would answer the same prompt on one server):
    it finds the first's file although the prefix holds glob characters."""
    srv = servers[0]
    first, err1 = outcome(srv, file_merge(srv.info, prefix="g[1]/m[ab]*"))
    again, err2 = outcome(servers[1], file_merge(srv.info, prefix="g[1]/m[ab]*"))
    assert "same inputs and settings as" in servers[1].log_path.read_text()
    assert not err1 and not err2, (err1, err2)
    assert file_name(first) == file_name(again) and file_name(first).startswith("g[1]/m[ab]*_")
    assert merged_files(srv, "g[1]") == [os.path.basename(file_name(first))]


def test_server_reuse_key_tells_equal_files_in_two_folders_apart(servers):
    srv = servers[0]
    inputs = {p: sha(srv.base / "models" / "checkpoints" / p) for p in ("a.safetensors", "v1/model.safetensors",
                                                                        "v2/model.safetensors")}
    one, e1 = outcome(srv, file_merge(srv.info, b="v1/model.safetensors", prefix="stale/m"))
    two, e2 = outcome(srv, file_merge(srv.info, b="v2/model.safetensors", prefix="stale/m"))
    assert not e1 and not e2, (e1, e2)
    assert file_name(one) != file_name(two) and len(merged_files(srv, "stale")) == 2
    folder = srv.base / "models" / "checkpoints"
    x, y = load_file(folder / file_name(one)), load_file(folder / file_name(two))
    assert any(not torch.equal(x[k], y[k]) for k in x), "the second merge returned the first one's weights"
    assert {p: sha(folder / p) for p in inputs} == inputs


def test_server_input_rewritten_in_place_with_restored_mtime_is_merged_again(servers):
    srv = servers[0]
    folder = srv.base / "models" / "checkpoints"
    target = folder / "rewritten.safetensors"
    target.write_bytes((folder / "v1" / "model.safetensors").read_bytes())
    first, e1 = outcome(srv, file_merge(srv.info, b="rewritten.safetensors", prefix="rewrite/m"))
    assert not e1, e1
    old = target.stat()
    time.sleep(0.05)
    with open(target, "r+b") as f:  # the same inode, the same size, other weights
        f.write((folder / "v2" / "model.safetensors").read_bytes())
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (target.stat().st_ino, target.stat().st_size, target.stat().st_mtime_ns) == \
        (old.st_ino, old.st_size, old.st_mtime_ns)
    second, e2 = outcome(srv, file_merge(srv.info, b="rewritten.safetensors", prefix="rewrite/m"))
    assert not e2, e2
    assert file_name(first) != file_name(second) and len(merged_files(srv, "rewrite")) == 2


def test_server_two_identical_file_merges_at_once_both_succeed_with_one_file(servers):
    """Two servers, one models folder, the same merge posted to both at once; the hook holds each write
    open for a moment so they overlap: the second waits, then loads the first's file."""
    results: list = [None, None]

    def run(i):
        results[i] = outcome(servers[i], file_merge(servers[0].info, prefix="twice/m"))
    pause = servers[0].base / PAUSE_FILE
    pause.write_text("1.5")
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        pause.unlink()
    assert all(r is not None and not r[1] for r in results), results
    names = [file_name(r[0]) for r in results]
    assert names[0] == names[1], names
    assert merged_files(servers[0], "twice") == [os.path.basename(names[0])]
    assert no_parts(servers[0])
    logs = [srv.log_path.read_text() for srv in servers]
    assert sum("merge_suite: merged into" in log and "twice" in log for log in logs) >= 1


def test_server_file_merge_warns_of_nonfinite_inputs(servers):
    srv = servers[0]
    outputs, err = outcome(srv, file_merge(srv.info, b="b_nan.safetensors", prefix="nan/m"))
    assert not err, err
    log = srv.log_path.read_text()
    assert "non-finite values (NaN/inf) in the input files" in log and "(B: 2)" in log, srv.log_tail()


def test_server_damaged_hash_cache_is_ignored_and_rebuilt(servers):
    srv = servers[0]
    cache = srv.base / "user" / "merge_suite" / "sha256_cache.json"
    outputs, err = outcome(srv, save(srv.info, "hashed/x", hash_inputs=True))
    assert not err, err
    assert "RecursionError" not in srv.log_path.read_text()
    assert "nested more than" in srv.log_path.read_text()
    data = json.loads(cache.read_text())
    assert isinstance(data, dict) and len(data) == 2 and all(len(v) == 64 for v in data.values())
    assert len(merged_files(srv, "hashed")) == 1
