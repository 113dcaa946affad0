"""Bad quantised inputs to the file merges, through the CLI and through the file-merge node: a GGUF, fp8
or scaled-fp8 file whose shapes or tensor count differ from A, a file of another family, a GGUF
quantisation type the gguf package cannot dequantise, too little disk space. Each is one line naming the
input (the CLI's "model B", the node's "file_b") and the fix; nothing is written, the inputs are unchanged."""
import hashlib
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

import folder_paths
import tiny_families

from merge_suite.merge_core.cli.app import main as cli_main
from merge_suite.merge_core.io.precision import quantize_scaled
from merge_suite.nodes.errors import MergeNodeError
from merge_suite.nodes.file_merge import DiffusionModelFileMerge

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
E4M3 = torch.float8_e4m3fn
SETTINGS = dict(mode="Weight sum", alpha=0.3, beta=0.25, blocks_alpha_preset="custom", blocks_alpha="",
                blocks_beta_preset="custom", blocks_beta="")
WIDE = "double_blocks.0.img_attn.qkv.weight"  # [192, 64]
MLP = "double_blocks.0.img_mlp.2.weight"  # [64, 256]: one Q8_K block per row


def fp8(sd):
    return {k: v.to(E4M3) if v.dim() >= 2 else v.bfloat16() for k, v in sd.items()}


def scaled_fp8(sd):
    """ComfyUI's scaled-fp8 layout: the marker, fp8 linear weights with scale_weight, the rest bf16."""
    out = {"scaled_fp8": torch.zeros(2, dtype=E4M3)}
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() == 2:
            out[k], out[k[:-6] + "scale_weight"] = quantize_scaled(v)
        else:
            out[k] = v.bfloat16()
    return out


def write_gguf(path, sd, qtype=Q.Q8_0):
    """Q8_0 where rows fit whole blocks, F32 elsewhere (ComfyUI-GGUF's converter does the same)."""
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    w = gguf.GGUFWriter(str(path), "flux")
    for k, v in sd.items():
        arr = v.float().numpy()
        if v.dim() >= 2 and v.shape[-1] % block == 0:
            w.add_tensor(k, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(k, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def with_wrong_shape(sd):
    out = dict(sd)
    out[WIDE] = torch.randn(192, 96) * 0.05
    return out


def without_block(sd):
    return {k: v for k, v in sd.items() if not k.startswith("single_blocks.2.")}


def cut_short(sd):
    """The first ten tensors gone (img_in, time_in, ...): no family's signature matches what is left."""
    return {k: v for i, (k, v) in enumerate(sd.items()) if i >= 10}


def unknown_to_gguf(path):
    """A GGUF whose MLP tensor claims Q8_K: a type gguf knows but cannot dequantise."""
    reader = gguf.GGUFReader(str(path))
    field = next(t.field for t in reader.tensors if t.name == MLP)
    at = field.offset + sum(p.nbytes for p in field.parts[:4])  # name length, name, n_dims, dims -> the type
    del reader
    data = bytearray(path.read_bytes())
    data[at:at + 4] = int(Q.Q8_K).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def make_b(folder, case):
    """The bad model B of each case, as a file in folder; returns its name."""
    flux = tiny_families.diffusion_state_dict("flux1-dev", 2)
    sd3 = tiny_families.diffusion_state_dict("sd3", 2)
    kind, what = case.split("-", 1)
    sd = {"shape": with_wrong_shape(flux), "count": without_block(flux), "cut": cut_short(flux), "family": sd3,
          "qtype": flux}[what]
    if kind == "gguf":
        path = folder / f"b_{case}.gguf"
        write_gguf(path, sd)
        if what == "qtype":
            unknown_to_gguf(path)
    else:
        path = folder / f"b_{case}.safetensors"
        save_file(fp8(sd) if kind == "fp8" else scaled_fp8(sd), str(path))
    return path.name


# case: (what the message must say besides the input's name)
CASES = {
    "gguf-shape": f"'{WIDE}' has shape [192, 96] but model A has [192, 64]",
    "fp8-shape": f"'{WIDE}' has shape [192, 96] but model A has [192, 64]",
    "scaled-shape": f"'{WIDE}' has shape [192, 96] but model A has [192, 64]",
    "gguf-count": "S00-S01, OUT but model A has CLIP, T5, IN, D00-D01, S00-S02, OUT",
    "fp8-count": "S00-S01, OUT but model A has CLIP, T5, IN, D00-D01, S00-S02, OUT",
    "gguf-cut": "is not a complete Flux.1 model: 10 of model A's 92 tensors are missing from it (first: 'img_in.",
    "scaled-cut": "is not a complete Flux.1 model: 10 of model A's 92 tensors are missing from it",
    "gguf-family": "is an SD3/SD3.5 model but model A is Flux.1",
    "fp8-family": "is an SD3/SD3.5 model but model A is Flux.1",
    "scaled-family": "is an SD3/SD3.5 model but model A is Flux.1",
    "gguf-qtype": "GGUF quantisation type Q8_K, which the gguf package cannot dequantise",
}


@pytest.fixture()
def unet_folder(tmp_path, monkeypatch):
    folder = tmp_path / "diffusion_models"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models",
                        ([str(folder)], folder_paths.supported_pt_extensions | {".gguf"}))
    tiny_families.register()
    save_file(fp8(tiny_families.diffusion_state_dict("flux1-dev", 1)), str(folder / "a.safetensors"))
    return folder


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def run_node(folder, b):
    with pytest.raises(MergeNodeError) as info:
        DiffusionModelFileMerge.execute("a.safetensors", b, precision="bf16", **SETTINGS)
    return str(info.value)


def run_cli(folder, b, capsys):
    code = cli_main(["merge", str(folder / "a.safetensors"), str(folder / b), "-q",
                     "-o", str(folder / "out.safetensors")])
    err = capsys.readouterr().err
    assert code == 2, err
    return err.strip()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("via", ["node", "cli"])
def test_bad_quantised_input_is_one_line_naming_it_and_writes_nothing(unet_folder, case, via, capsys):
    b = make_b(unet_folder, case)
    before = snapshot(unet_folder)
    message = run_node(unet_folder, b) if via == "node" else run_cli(unet_folder, b, capsys)
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    named = ("Merge Diffusion Model Files (streamed): input 'file_b'" if via == "node"
             else "error: merge: input 'model B (2nd file)'")
    assert message.startswith(named), message
    assert CASES[case] in message and "Fix:" in message, message
    assert snapshot(unet_folder) == before, "no output, no temporary file, the inputs unchanged"


@pytest.mark.parametrize("via", ["node", "cli"])
def test_too_little_disk_space_is_refused_before_writing(unet_folder, via, monkeypatch, capsys):
    b = "b.gguf"
    write_gguf(unet_folder / b, tiny_families.diffusion_state_dict("flux1-dev", 2))
    before = snapshot(unet_folder)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: real(folder)._replace(free=100_000))
    message = run_node(unet_folder, b) if via == "node" else run_cli(unet_folder, b, capsys)
    named = "input 'filename_prefix'" if via == "node" else "input '-o'"
    assert len(message.splitlines()) == 1 and named in message, message
    assert "needs 0.00 GB but only 0.00 GB is free" in message and "nothing was written" in message, message
    assert snapshot(unet_folder) == before
    monkeypatch.setattr(shutil, "disk_usage", real)
    model, name = DiffusionModelFileMerge.execute("a.safetensors", b, precision="bf16", **SETTINGS).result
    assert os.path.isfile(unet_folder / name) and model is not None  # the same inputs merge with room to write


def test_tensors_missing_inside_blocks_keep_a_and_the_log_says_so(unet_folder, caplog):
    """Fewer tensors, every block still there (as Flux schnell lacks dev's guidance_in): A's tensors are kept
    for the missing keys, as SuperMerger does, and the log names the input and the count."""
    flux = tiny_families.diffusion_state_dict("flux1-dev", 2)
    gone = [k for k in flux if k.startswith("guidance_in.")]
    write_gguf(unet_folder / "b.gguf", {k: v for k, v in flux.items() if k not in gone})
    with caplog.at_level("WARNING"):
        model, name = DiffusionModelFileMerge.execute("a.safetensors", "b.gguf", precision="bf16", **SETTINGS).result
    assert f"{len(gone)} tensors of file_a are absent from file_b and were kept from A" in caplog.text
    assert os.path.isfile(unet_folder / name)
