"""Hostile catalogue, readers and LoRA: damaged GGUF tensor tables (file size unchanged), a
safetensors header of 100,000 nested brackets, lora-extract on a pair whose shapes differ and on GGUF inputs.

Each bad case is one line naming the input file and the tensor, leaves every input byte-identical and writes
no output nor partial file; the good cases write a file. The CLI cases run in one subprocess (DRIVER, as in
test_faults_settings.py); the file-merge node case posts a /prompt to a real ComfyUI server.
"""
import hashlib
import re
import struct
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "demo"))
sys.path.insert(0, str(REPO / "tests" / "unit"))
gguf = pytest.importorskip("gguf")
from server import ComfyServer  # noqa: E402
from catalogue import digest, one_line_error, run_cli  # noqa: E402
from spec_families import load_keyset  # noqa: E402
from test_gguf_tables import entry_offsets, put  # noqa: E402

Q = gguf.GGMLQuantizationType
MLP = "double_blocks.0.img_mlp.2.weight"  # Q8_0 in the files below
QKV = "double_blocks.0.img_attn.qkv.weight"


def write_gguf(path: Path, sd: dict) -> None:
    """Q8_0 where rows are whole blocks, F32 elsewhere (as ComfyUI-GGUF's converter does)."""
    w = gguf.GGUFWriter(str(path), "flux")
    for k, v in sd.items():
        arr = v.float().numpy()
        if v.dim() >= 2 and v.shape[-1] % 32 == 0:
            w.add_tensor(k, gguf.quants.quantize(arr, Q.Q8_0), raw_dtype=Q.Q8_0)
        else:
            w.add_tensor(k, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def flux_model(seed: int) -> dict:
    """Every key of Flux.1-dev's diffusion model (bare, as a diffusion-model GGUF names them), each dimension
    at most 32 (one Q8_0 block per row)."""
    gen = torch.Generator().manual_seed(seed)
    prefix = "model.diffusion_model."
    return {k[len(prefix):]: torch.randn([min(d, 32) for d in shape], generator=gen) * 0.05
            for k, shape in load_keyset("flux1-dev").items() if k.startswith(prefix)}


def damaged_copy(good: Path, bad: Path, field: str, fmt: str, value: int, name: str = MLP) -> None:
    data = bytearray(good.read_bytes())
    put(data, entry_offsets(good, name)[field], fmt, value)
    assert len(data) == good.stat().st_size
    bad.write_bytes(bytes(data))


def make_inputs(folder: Path) -> None:
    """a/b.gguf: a good pair; type/offset/short.gguf: b with one table entry damaged; deep.safetensors: a
    header of nested brackets; a/b_wide.safetensors: a pair with one tensor of another shape."""
    a, b = (flux_model(seed) for seed in (1, 2))
    write_gguf(folder / "a.gguf", a)
    write_gguf(folder / "b.gguf", b)
    damaged_copy(folder / "b.gguf", folder / "type.gguf", "type", "<I", int(Q.F16))  # Q8_0 -> F16
    damaged_copy(folder / "b.gguf", folder / "offset.gguf", "offset", "<Q", 2**64 - 8)
    damaged_copy(folder / "b.gguf", folder / "short.gguf", "type", "<I", int(Q.Q4_0))  # fewer bytes: a gap
    deep = b"[" * 100_000
    (folder / "deep.safetensors").write_bytes(struct.pack("<Q", len(deep)) + deep)
    save_file(a, str(folder / "a.safetensors"))
    (folder / "old.ckpt").write_bytes(b"a pickle is never opened")
    wide = dict(b)
    wide[QKV] = torch.randn(wide[QKV].shape[0], wide[QKV].shape[1] + 8) * 0.05
    save_file(wide, str(folder / "b_wide.safetensors"))


ONE_LINE = None  # marker: success expected
# (id, argv with {name} for input files and {out} for the output, fragments of the one-line error or None)
CLI_CASES = [
    ("merge-gguf-type", ["merge", "{a.gguf}", "{type.gguf}", "-q", "-o", "{out}"],
     ["model B", "'type.gguf'", f"'{MLP}' (F16", "overlap"]),
    ("merge-gguf-offset", ["merge", "{a.gguf}", "{offset.gguf}", "-q", "-o", "{out}"],
     ["model B", "'offset.gguf'", f"'{MLP}'", "past the end of the file"]),
    ("merge-gguf-gap", ["merge", "{short.gguf}", "{a.gguf}", "-q", "-o", "{out}"],
     ["model A", "'short.gguf'", f"'{MLP}' (Q4_0", "unused bytes"]),
    ("combine-gguf-type", ["combine", "--base", "{a.gguf}", "{b.gguf}", "{type.gguf}", "--method", "task_arithmetic",
                           "-q", "-o", "{out}"], ["'type.gguf'", f"'{MLP}' (F16", "overlap"]),
    ("combine-gguf-offset", ["combine", "--base", "{offset.gguf}", "{a.gguf}", "{b.gguf}", "--method",
                             "task_arithmetic", "-q", "-o", "{out}"], ["'offset.gguf'", f"'{MLP}'", "past the end"]),
    ("extract-gguf-type", ["lora-extract", "{type.gguf}", "{a.gguf}", "--rank", "2", "-o", "{out}"],
     ["TUNED", "'type.gguf'", f"'{MLP}' (F16", "overlap"]),
    ("extract-gguf-offset", ["lora-extract", "{a.gguf}", "{offset.gguf}", "--rank", "2", "-o", "{out}"],
     ["ORIGINAL", "'offset.gguf'", f"'{MLP}'", "past the end"]),
    ("merge-deep-header", ["merge", "{a.safetensors}", "{deep.safetensors}", "-q", "-o", "{out}"],
     ["model B", "deep.safetensors", "nested more than"]),
    ("extract-deep-header", ["lora-extract", "{deep.safetensors}", "{a.safetensors}", "-o", "{out}"],
     ["TUNED", "deep.safetensors", "nested more than"]),
    ("extract-shapes-differ", ["lora-extract", "{a.safetensors}", "{b_wide.safetensors}", "--rank", "2", "-o",
                               "{out}"], ["ORIGINAL", f"tensor '{QKV}' has shape", "but model A has"]),
    ("extract-ckpt", ["lora-extract", "{old.ckpt}", "{a.safetensors}", "-o", "{out}"],
     ["TUNED", "old.ckpt", "convert it to safetensors"]),
    ("extract-gguf-ok", ["lora-extract", "{a.gguf}", "{b.gguf}", "--rank", "2", "-o", "{out}"], ONE_LINE),
    ("merge-gguf-ok", ["merge", "{a.gguf}", "{b.gguf}", "-q", "-o", "{out}"], ONE_LINE),
]





@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_readers")
    make_inputs(folder)
    return folder


def test_cli_catalogue(inputs, tmp_path):
    files = {p.name: str(p) for p in inputs.iterdir()}
    before = digest(inputs)
    runs, outputs = [], []
    for case_id, argv, _ in CLI_CASES:
        out = tmp_path / f"{case_id}.safetensors"
        outputs.append(out)
        names = {**files, "out": str(out)}
        runs.append([re.sub(r"\{([^}]+)\}", lambda m, names=names: names[m[1]], a) for a in argv])
    results = run_cli(runs)
    failures = []
    for (case_id, _, expected), (rc, stderr), out in zip(CLI_CASES, results, outputs):
        if expected is ONE_LINE:
            ok = rc == 0 and out.is_file()
        else:
            ok = one_line_error(rc, stderr, expected) and not out.exists()
        if not ok:
            failures.append(f"{case_id}: rc={rc} out={out.exists()} stderr={stderr!r}")
    assert not failures, "\n".join(failures)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith("-ok.safetensors")] == [], "partial files"
    assert digest(inputs) == before, "inputs changed"


# --- the file-merge node over /prompt ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, inputs):
    base = tmp_path_factory.mktemp("hostile_readers_server")
    srv = ComfyServer(base)
    folder = base / "models" / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.gguf", "type.gguf", "offset.gguf"):
        (folder / name).write_bytes((inputs / name).read_bytes())
    srv.start()
    srv.info = srv.get("/object_info")
    yield srv
    srv.stop()


def file_merge_prompt(info, file_a: str, file_b: str) -> dict:
    spec = info["MergeSuite_DiffusionModelFileMerge"]["input"]
    inputs = {}
    for name, entry in {**spec.get("required", {}), **spec.get("optional", {})}.items():
        kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
        if isinstance(kind, list):
            inputs[name] = opts.get("default", kind[0] if kind else "")
        elif kind == "COMBO":
            inputs[name] = opts.get("default", (opts.get("options") or [""])[0])
        elif "default" in opts:
            inputs[name] = opts["default"]
    inputs.update(file_a=file_a, file_b=file_b, filename_prefix="hostile/never")
    return {"1": {"class_type": "MergeSuite_DiffusionModelFileMerge", "inputs": inputs},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}


def node_error(srv: ComfyServer, prompt: dict) -> str:
    status, answer = srv.post("/prompt", {"prompt": prompt, "client_id": "hostile"})
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


SERVER_CASES = {  # file_b: words of the node's one-line error
    "type.gguf": ["Merge Diffusion Model Files (streamed)", "file_b", "'type.gguf'", f"'{MLP}' (F16", "overlap"],
    "offset.gguf": ["Merge Diffusion Model Files (streamed)", "file_b", "'offset.gguf'", f"'{MLP}'", "past the end"],
}


@pytest.mark.parametrize("bad", list(SERVER_CASES))
def test_file_merge_node_refuses_a_damaged_gguf_table(server, bad):
    models = server.base / "models"
    before = {str(p.relative_to(models)): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in models.rglob("*") if p.is_file()}
    message = node_error(server, file_merge_prompt(server.info, "a.gguf", bad))
    assert len(message.strip().splitlines()) == 1 and "Traceback" not in message, message
    for word in SERVER_CASES[bad]:
        assert word in message, message
    after = {str(p.relative_to(models)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in models.rglob("*") if p.is_file()}
    assert after == before, "no output, no partial file, inputs unchanged"
