"""A catalogue of bad input files and file-system faults, through the CLI (subprocesses) and the real server.

Every case asserts: a clear one-line error (or the correct result), inputs byte-identical, no file
outside the case's folder, no partial file left. Faults that need timing (a signal while the output
is being written, a file appearing at the target) use tests/e2e/fault_hooks/sitecustomize.py, which
slows or intercepts os.fsync of our .part file: the signal is sent once the .part file exists.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1].parent
HOOKS = Path(__file__).resolve().parent / "fault_hooks"
sys.path.insert(0, str(REPO / "demo"))
from server import ComfyServer  # noqa: E402
from fault_inputs import tiny_lora as tiny_lora_of  # noqa: E402

PART = ".merge-suite-"  # our temporary-file pattern (merge_core.io.output_file)
LORA_MODULES = ["lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_up_blocks_3_attentions_2_proj_out",
                "lora_te_text_model_encoder_layers_0_mlp_fc1"]


# --- input files and their damaged variants --------------------------------------------------

def tiny_model(keys, seed):
    gen = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn((2, 3) if len(s) > 1 else (3,), generator=gen).half() for k, s in keys.items()}
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return sd


def tiny_lora(seed):
    return tiny_lora_of(LORA_MODULES, seed)


def _split(data: bytes):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + body


def _edit_first(data: bytes, **changes) -> bytes:
    header, body = _split(data)
    first = next(k for k in header if k != "__metadata__")
    header[first].update(changes)
    return _join(header, body)


DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {  # name: (make it, words of the expected error)
    "truncated": (lambda d: d[:len(d) * 2 // 3], "past the end of the file"),
    "header_not_json": (lambda d: struct.pack("<Q", 12) + b"{not json!!}" + d[8:], "not valid JSON"),
    "header_is_a_list": (lambda d: _join([1, 2], b""), "not an object"),  # type: ignore[arg-type]
    "unknown_dtype": (lambda d: _edit_first(d, dtype="F17"), "unknown dtype 'F17'"),
    "offsets_past_eof": (lambda d: _edit_first(d, data_offsets=[0, 10 ** 9]), "past the end of the file"),
    "absurd_header_length": (lambda d: struct.pack("<Q", 1 << 40) + d[8:], "absurd"),
    "header_length_past_eof": (lambda d: struct.pack("<Q", len(d)) + d[8:], "past the end of the file"),
    "shorter_than_8_bytes": (lambda d: d[:5], "shorter than"),
}


# --- the CLI catalogue ------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    argv: list[str]  # "{ws}" is the case's folder; inputs are A, B, C (checkpoints), L1, L2 (LoRAs)
    rc: int
    err: tuple[str, ...] = ()  # words the one-line error must contain
    output: Optional[str] = None  # the file that must exist afterwards (relative to ws), complete
    prepare: Optional[Callable[[Path], None]] = None
    fault: str = ""  # fault_hooks mode
    send: Optional[int] = None  # signal to send once the .part file exists
    limit_bytes: Optional[int] = None  # RLIMIT_FSIZE: writes past it fail (a full disk, EFBIG)
    readonly: bool = False  # the output folder is not writable
    result: dict = field(default_factory=dict)


def _link(ws: Path, name: str, target: str) -> None:
    (ws / name).symlink_to(ws / target)


def _stale_parts(ws: Path) -> None:
    """A part of a dead process (old), one of a live process (ours, fresh), and a user's file of a similar name."""
    out = ws / "out"
    out.mkdir()
    dead = out / f".m.safetensors{PART}999999999-0123abcd.part"
    dead.write_bytes(b"left by a killed merge")
    os.utime(dead, (time.time() - 3600, time.time() - 3600))
    (out / f".m.safetensors{PART}{os.getpid()}-0123abcd.part").write_bytes(b"being written by a live process")
    (out / "my.notes.part").write_bytes(b"the user's")


MERGE = ["merge", "A.safetensors", "B.safetensors", "-q"]
CASES = [
    Case("merge_ok", MERGE + ["-o", "out/m.safetensors"], 0, output="out/m.safetensors"),
    *[Case(f"merge_B_{name}", MERGE + ["-o", "m.safetensors"], 2, ("model B", "B.safetensors", words),
           prepare=lambda ws, f=fn: (ws / "B.safetensors").write_bytes(f((ws / "B.safetensors").read_bytes())))
      for name, (fn, words) in DAMAGE.items()],
    Case("lora_merge_L2_header_not_json", ["lora-merge", "L1.safetensors:1, L2.safetensors:1", "-o", "o.safetensors"],
         2, ("L2.safetensors", "not valid JSON"),
         prepare=lambda ws: (ws / "L2.safetensors").write_bytes(DAMAGE["header_not_json"][0](
             (ws / "L2.safetensors").read_bytes()))),
    Case("analyze_B_truncated", ["analyze", "A.safetensors", "B.safetensors"], 2, ("B.safetensors", "past the end"),
         prepare=lambda ws: (ws / "B.safetensors").write_bytes((ws / "B.safetensors").read_bytes()[:3000])),
    Case("merge_out_dotdot_onto_A", MERGE + ["-o", "sub/../A.safetensors"], 2, ("-o", "input file")),
    Case("merge_out_dotdot_onto_A_overwrite", MERGE + ["-o", "sub/../A.safetensors", "--overwrite"], 2,
         ("-o", "input file")),
    Case("merge_out_symlink_to_B_overwrite", MERGE + ["-o", "link.safetensors", "--overwrite"], 2,
         ("-o", "input file"), prepare=lambda ws: _link(ws, "link.safetensors", "B.safetensors")),
    Case("merge_input_via_symlink_out_is_real_A", ["merge", "alias.safetensors", "B.safetensors", "-q", "-o",
                                                   "A.safetensors", "--overwrite"], 2, ("-o", "input file"),
         prepare=lambda ws: _link(ws, "alias.safetensors", "A.safetensors")),
    Case("merge_out_hardlink_to_A_overwrite", MERGE + ["-o", "hard.safetensors", "--overwrite"], 2,
         ("-o", "input file"), prepare=lambda ws: os.link(ws / "A.safetensors", ws / "hard.safetensors")),
    Case("merge_out_existing_dir", MERGE + ["-o", "out"], 2, ("-o", "existing directory"),
         prepare=lambda ws: (ws / "out").mkdir()),
    Case("merge_out_exists_no_overwrite", MERGE + ["-o", "keep.safetensors"], 2, ("-o", "already exists"),
         prepare=lambda ws: (ws / "keep.safetensors").write_bytes(b"keep me")),
    Case("merge_out_exists_overwrite", MERGE + ["-o", "old.safetensors", "--overwrite"], 0, output="old.safetensors",
         prepare=lambda ws: (ws / "old.safetensors").write_bytes(b"old")),
    Case("merge_target_appears_mid_merge", MERGE + ["-o", "m.safetensors"], 2, ("-o", "appeared while"),
         fault="appear"),
    Case("merge_sigterm_mid_write", MERGE + ["-o", "out/m.safetensors"], 128 + signal.SIGTERM,
         ("stopped by SIGTERM",), fault="slow", send=signal.SIGTERM),
    Case("merge_sighup_mid_write", MERGE + ["-o", "out/m.safetensors"], 128 + signal.SIGHUP,
         ("stopped by SIGHUP",), fault="slow", send=signal.SIGHUP),
    Case("merge_disk_full", MERGE + ["-o", "m.safetensors"], 2, ("-o", "too large"), limit_bytes=4096),
    Case("merge_readonly_folder", MERGE + ["-o", "ro/m.safetensors"], 2, ("-o", "cannot write"), readonly=True),
    Case("merge_removes_stale_parts_only", MERGE + ["-o", "out/m.safetensors"], 0, output="out/m.safetensors",
         prepare=_stale_parts),
    Case("lora_merge_out_dotdot_onto_input", ["lora-merge", "L1.safetensors:1", "-o", "x/../L1.safetensors"], 2,
         ("-o", "input file")),
    Case("lora_merge_out_existing_dir", ["lora-merge", "L1.safetensors:1", "-o", "out"], 2,
         ("-o", "existing directory"), prepare=lambda ws: (ws / "out").mkdir()),
    Case("lora_merge_ok", ["lora-merge", "L1.safetensors:0.5, L2.safetensors:1", "-o", "lm.safetensors"], 0,
         output="lm.safetensors"),
    Case("lora_extract_out_onto_tuned", ["lora-extract", "A.safetensors", "B.safetensors", "-o",
                                         "./A.safetensors", "--overwrite"], 2, ("-o", "input file")),
    Case("analyze_csv_onto_B", ["analyze", "A.safetensors", "B.safetensors", "--csv", "B.safetensors"], 2,
         ("--csv", "input file")),
    Case("analyze_png_symlink_to_A", ["analyze", "A.safetensors", "B.safetensors", "--png", "chart.png",
                                      "--overwrite"], 2, ("--png", "input file"),
         prepare=lambda ws: _link(ws, "chart.png", "A.safetensors")),
    Case("analyze_csv_ok", ["analyze", "A.safetensors", "B.safetensors", "--csv", "t.csv", "--diff-png", "d.png"], 0,
         output="t.csv"),
]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(ws: Path) -> dict[str, str]:
    return {str(p.relative_to(ws)): (sha(p) if p.is_file() and not p.is_symlink() else "")
            for p in ws.rglob("*")}


def _make_readonly(folder: Path) -> Callable[[], None]:
    """chmod 0555, or for root (whom modes do not stop) the immutable flag; returns the undo."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)
    pytest.skip("running as root without chattr: no way to make a folder read-only")


HANG_UP_SIGNALS = (signal.SIGHUP, signal.SIGTERM)


def terminal_signals() -> dict:
    """SIGHUP and SIGTERM back to their default action (as in a process started from a terminal); returns the
    previous handlers. Under nohup SIGHUP is ignored and children inherit that, and the pack rightly leaves an
    ignored hang-up alone, so the hang-up cases would test nothing."""
    return {s: signal.signal(s, signal.SIG_DFL) for s in HANG_UP_SIGNALS}


def run_case(case: Case, ws: Path) -> dict:
    if case.prepare:
        case.prepare(ws)
    undo = _make_readonly(ws / "ro") if case.readonly else None
    inputs = {n: sha(ws / n) for n in ("A.safetensors", "B.safetensors", "L1.safetensors", "L2.safetensors")}
    before = snapshot(ws)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=os.pathsep.join([str(HOOKS), str(REPO)]),
               MERGE_SUITE_FAULT=case.fault)

    def limits():
        terminal_signals()
        if case.limit_bytes:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then the write fails with EFBIG, as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.limit_bytes, case.limit_bytes))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "merge_core", *case.argv], cwd=ws, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limits)
        part_seen = False
        if case.send is not None:
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None and not part_seen:
                part_seen = any(PART in p.name for p in ws.rglob("*.part"))
                time.sleep(0.05)
            proc.send_signal(case.send)
        out, err = proc.communicate(timeout=120)
    finally:
        if undo:
            undo()
    return {"rc": proc.returncode, "stderr": err, "inputs": inputs, "before": before, "after": snapshot(ws),
            "inputs_after": {n: sha(ws / n) for n in inputs}, "part_seen": part_seen}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, sd1_keys):
    root = tmp_path_factory.mktemp("faults_cli")
    seed_dir = root / "_inputs"
    seed_dir.mkdir()
    save_file(tiny_model(sd1_keys, 1), str(seed_dir / "A.safetensors"))
    save_file(tiny_model(sd1_keys, 2), str(seed_dir / "B.safetensors"))
    save_file(tiny_lora(1), str(seed_dir / "L1.safetensors"))
    save_file(tiny_lora(2), str(seed_dir / "L2.safetensors"))
    workspaces = {}
    for case in CASES:
        ws = root / case.name
        shutil.copytree(seed_dir, ws)
        workspaces[case.name] = ws
    with cf.ThreadPoolExecutor(4) as pool:
        futures = {c.name: pool.submit(run_case, c, workspaces[c.name]) for c in CASES}
        results = {}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except pytest.skip.Exception as exc:
                results[name] = {"skip": str(exc)}
    results["_root"] = sorted(p.name for p in root.iterdir())
    return results, workspaces


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_fault(case, cli_results):
    results, workspaces = cli_results
    res, ws = results[case.name], workspaces[case.name]
    if "skip" in res:
        pytest.skip(res["skip"])
    assert set(results["_root"]) == {c.name for c in CASES} | {"_inputs"}, "a file was written outside"
    err = res["stderr"]
    assert "Traceback" not in err, err
    assert res["rc"] == case.rc, err
    assert res["inputs_after"] == res["inputs"], "an input file changed"
    new = set(res["after"]) - set(res["before"])
    assert not [p for p in res["after"] if p.endswith(".part") and PART in p and
                not ("out/" in p and str(os.getpid()) in p)], f"partial file left: {sorted(res['after'])}"
    if case.send is not None:
        assert res["part_seen"], "the signal was sent before the output was being written"
    if case.rc:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        for words in case.err:
            assert words in lines[0], lines[0]
        if case.fault == "appear":  # the other program's file is kept as it wrote it
            assert new == {"m.safetensors"} and (ws / "m.safetensors").read_bytes() == b"written by another program"
        else:
            assert not new, f"files created by a failed run: {new}"
        for name, digest in res["before"].items():  # nothing that existed was changed (e.g. keep.safetensors)
            assert res["after"].get(name) == digest, name
    else:
        assert case.output in new or case.output in res["before"], sorted(new)
        assert new <= {case.output, "out", "d.png", "t.csv"}, sorted(new)
        out = ws / case.output
        assert out.stat().st_mode & 0o777 == 0o666 & ~_umask(), oct(out.stat().st_mode)
        if out.suffix == ".safetensors":
            from merge_core.io.safetensors_file import SafetensorsReader
            with SafetensorsReader(out) as reader:
                assert reader.keys() and all(reader.get(k) is not None for k in reader.keys()[:5])
    if case.name == "merge_removes_stale_parts_only":
        left = sorted(os.listdir(ws / "out"))
        assert left == sorted(["m.safetensors", "my.notes.part", f".m.safetensors{PART}{os.getpid()}-0123abcd.part"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- the server catalogue ---------------------------------------------------------------------

def _make_server_checkpoint(folder: Path) -> None:
    """Only tiny_sd1_a (make_checkpoints.py writes seven files: too slow for this module)."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from comfy.cli_args import args; args.cpu = True\n"
            "import tiny_models; tiny_models.save_checkpoint(sys.argv[3], 'sd1', 1)\n")
    from server import comfy_path
    subprocess.run([sys.executable, "-c", code, str(comfy_path()), str(REPO / "demo"),
                    str(folder / "tiny_sd1_a.safetensors")], check=True, cwd=comfy_path(), stdout=subprocess.DEVNULL)


def _start(base: Path, marker: Path) -> ComfyServer:
    # the hooks go to this server's environment only: the two servers start on threads, and a change to
    # os.environ from one of them could outlive the fixture and slow every later server's saves
    server = ComfyServer(base, extra_env={"PYTHONPATH": str(HOOKS), "MERGE_SUITE_FAULT_FILE": str(marker)})
    return server.start(timeout=240)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers (one is killed by SIGTERM, one by SIGHUP), started in parallel on one set of models."""
    root = tmp_path_factory.mktemp("faults_server")
    shared = root / "models_src"
    shared.mkdir()
    _make_server_checkpoint(shared)
    made = {}
    for tag in ("term", "hup"):
        base = root / tag
        ckpt, loras = base / "models" / "checkpoints", base / "models" / "loras"
        (ckpt / "merge_suite").mkdir(parents=True)
        loras.mkdir(parents=True)
        os.link(shared / "tiny_sd1_a.safetensors", ckpt / "tiny_sd1_a.safetensors")
        (loras / "broken.safetensors").write_bytes(struct.pack("<Q", 12) + b"{not json!!}" + b"\0" * 64)
        stale = ckpt / "merge_suite" / f".old_00001_.safetensors{PART}999999999-0123abcd.part"
        stale.write_bytes(b"left by a killed save")
        os.utime(stale, (time.time() - 3600, time.time() - 3600))
        (ckpt / "merge_suite" / "keep.part").write_bytes(b"not ours")
        made[tag] = (base, root / f"{tag}.fault")
    digest = sha(shared / "tiny_sd1_a.safetensors")
    started: dict = {}

    def start(tag):
        started[tag] = _start(*made[tag])
    threads = [threading.Thread(target=start, args=(t,)) for t in made]
    previous = terminal_signals()  # the servers inherit these at start (signal.signal needs the main thread)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    try:
        if set(started) != set(made):
            raise RuntimeError("a server did not start")
        yield {tag: (started[tag], made[tag][1]) for tag in made}, root, digest
    finally:
        for srv in started.values():
            srv.stop()


def save_prompt(prefix: str) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1_a.safetensors"}},
            "2": {"class_type": "MergeSuite_SaveCheckpoint",
                  "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "filename_prefix": prefix,
                             "precision": "fp16", "prune": False, "save_workflow": False, "hash_inputs": False}}}


def lora_extract_prompt(prefix: str) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1_a.safetensors"}},
            "2": {"class_type": "MergeSuite_LoraExtract",
                  "inputs": {"model_a": ["1", 0], "model_b": ["1", 0], "clip_a": ["1", 1], "clip_b": ["1", 1],
                             "alpha": 1.0, "beta": 1.0, "rank": 4, "conv_rank": 0, "svd": "full",
                             "clamp_quantile": 0.0, "te_min_diff": 0.1, "filename_prefix": prefix,
                             "save_dtype": "fp16"}}}


def lora_apply_prompt(name: str) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1_a.safetensors"}},
            "2": {"class_type": "MergeSuite_LoraApply",
                  "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": name, "strength_model": 1.0,
                             "strength_clip": 1.0, "block_weights": "", "lora_list": "", "lbw_presets": ""}},
            "3": {"class_type": "MergeSuite_SaveCheckpoint",
                  "inputs": {"model": ["2", 0], "clip": ["2", 1], "vae": ["1", 2], "filename_prefix": "applied",
                             "precision": "fp16", "prune": False, "save_workflow": False, "hash_inputs": False}}}


SERVER_CASES = {  # name: (prompt, words of the node error, or None for success)
    "save_ok": (save_prompt("merge_suite/ok"), None),
    "save_prefix_dotdot": (save_prompt("../../escaped/x"), ("Save Checkpoint", "filename_prefix", "outside")),
    "save_prefix_absolute": (save_prompt("/tmp/escaped_abs/x"), ("Save Checkpoint", "filename_prefix", "outside")),
    "lora_extract_prefix_dotdot": (lora_extract_prompt("../../escaped_lora/x"), ("filename_prefix", "leaves")),
    "lora_apply_broken_file": (lora_apply_prompt("broken.safetensors"),
                               ("lora_name", "broken.safetensors", "not valid JSON")),
}


def node_error(srv: ComfyServer, prompt: dict) -> str:
    """The exception message of the node that failed (run_prompt shortens it)."""
    status, answer = srv.post("/prompt", {"prompt": prompt, "client_id": "faults"})
    assert status == 200, answer
    deadline = time.time() + 120
    while time.time() < deadline:
        entry = srv.get(f"/history/{answer['prompt_id']}").get(answer["prompt_id"])
        if entry and entry.get("status", {}).get("completed") is not None:
            errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
            assert errors, "the prompt succeeded"
            return errors[0]["exception_message"]
        time.sleep(0.1)
    raise TimeoutError("no answer")


def _files(base: Path) -> set[str]:
    """The models tree, and what sits next to it (where a '../' prefix would land)."""
    return {str(p.relative_to(base)) for p in (base / "models").rglob("*")} | {p.name for p in base.iterdir()}


@pytest.mark.parametrize("name", list(SERVER_CASES))
def test_server_fault(name, servers):
    srv, _ = servers[0]["hup"]
    base = srv.base
    before = _files(base)
    prompt, words = SERVER_CASES[name]
    if words is None:
        srv.run_prompt(prompt)
        assert _files(base) - before == {"models/checkpoints/merge_suite/ok_00001_.safetensors"}
        path = base / "models" / "checkpoints" / "merge_suite" / "ok_00001_.safetensors"
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    else:
        message = node_error(srv, prompt)
        assert len(message.strip().splitlines()) == 1, message
        for w in words:
            assert w in message, message
        assert _files(base) == before, "a failed save created files or folders"
    assert not [p for p in (base, base.parent) for q in ("escaped", "escaped_lora") if (p / q).exists()]
    assert not Path("/tmp/escaped_abs").exists()
    assert sha(base / "models" / "checkpoints" / "tiny_sd1_a.safetensors") == servers[2]
    assert not [p for p in base.rglob(f"*{PART}*") if p.name.endswith(".part")]


def test_server_removed_stale_parts_at_load(servers):
    for srv, _ in servers[0].values():
        folder = srv.base / "models" / "checkpoints" / "merge_suite"
        assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".part")) == ["keep.part"]


@pytest.mark.parametrize("tag,signum", [("term", signal.SIGTERM), ("hup", signal.SIGHUP)])
def test_server_signal_during_save_leaves_no_partial_file(tag, signum, servers):
    """Runs last for each server: the signal ends it (as it did before the pack was loaded)."""
    srv, marker = servers[0][tag]
    folder = srv.base / "models" / "checkpoints" / "merge_suite"
    marker.write_text("slow")
    status, answer = srv.post("/prompt", {"prompt": save_prompt("merge_suite/killed"), "client_id": "faults"})
    assert status == 200, answer
    deadline = time.time() + 120
    while time.time() < deadline and not list(folder.glob(f"*{PART}*.part")):
        assert srv.proc.poll() is None, srv.log_tail()
        time.sleep(0.05)
    assert list(folder.glob(f"*{PART}*.part")), "the save never started writing"
    os.killpg(srv.proc.pid, signum)
    assert srv.proc.wait(timeout=30) == -signum, "the signal's default action (death by it) was kept"
    assert not list(folder.glob("*.part*")) or sorted(p.name for p in folder.glob("*.part")) == ["keep.part"]
    assert not list(folder.glob("killed*"))
    assert sha(srv.base / "models" / "checkpoints" / "tiny_sd1_a.safetensors") == servers[2]
