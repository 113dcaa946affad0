"""File-streamed merge nodes on real tiny checkpoints: the result loads through ComfyUI's own loaders in
every output precision and equals the MODEL-merge node key by key; a second run reuses the file;
an interrupt leaves no file."""
import os
import threading
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import comfy.model_management  # (ComfyUI imported through conftest)
import folder_paths
from effective_weights import effective

from merge_suite.merge_core.io.precision import PRECISIONS
from merge_suite.nodes import file_merge
from merge_suite.nodes.file_merge import CheckpointFileMerge, DiffusionModelFileMerge
from merge_suite.nodes.merge import CheckpointMerge, ModelMerge

# the layout a scaled_fp8 output takes here: 0.33's comfy_quant where the loader reads it (nodes/file_merge.py)
READS_COMFY_QUANT = file_merge.host_scaled_layout() == "comfy_quant"
SETTINGS = dict(mode="Weight sum", alpha=0.3, beta=0.25, blocks_alpha_preset="custom",
                blocks_alpha="", blocks_beta_preset="custom", blocks_beta="")
UNET = "diffusion_model."


@pytest.fixture()
def folders(tmp_path, monkeypatch):
    import tiny_models
    tiny_models.register()
    made = {}
    for kind in ("checkpoints", "diffusion_models"):
        folder = tmp_path / kind
        folder.mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, kind,
                            ([str(folder)], folder_paths.supported_pt_extensions))
        made[kind] = folder
    for name, seed in (("a", 1), ("b", 2)):
        ckpt = tiny_models.save_checkpoint(made["checkpoints"] / f"tiny_{name}.safetensors", "sd1", seed,
                                           all_random=True)
        sd = load_file(ckpt)
        save_file({k[len("model.diffusion_model."):]: v for k, v in sd.items()
                   if k.startswith("model.diffusion_model.")}, made["diffusion_models"] / f"unet_{name}.safetensors")
    return made


def node_merge_reference():
    import nodes as comfy_nodes
    (ma, ca, _), (mb, cb, _) = (comfy_nodes.CheckpointLoaderSimple().load_checkpoint(f"tiny_{n}.safetensors")[:3]
                                for n in "ab")
    model = CheckpointMerge.execute(ma, ca, mb, cb, **SETTINGS).result[0]
    return effective(model, UNET)


def files_in(folder):
    return sorted(p for p in os.listdir(folder) if not p.startswith("tiny_") and not p.startswith("unet_"))


# Unit roundoff of each stored format (round to nearest: error <= u * |value|) and half its smallest
# (subnormal) step, the absolute error floor near zero; float32 and bf16 share float32's exponent range.
ROUNDING = {torch.float32: (2 ** -24, 0.0), torch.float16: (2 ** -11, 2 ** -25),
            torch.bfloat16: (2 ** -8, 0.0), torch.float8_e4m3fn: (2 ** -4, 2 ** -10)}


def weights_as_loaded(model):
    """({key: float32 weight as the model computes with it}, {key: the dtype it is held in}): ComfyUI's own
    patch arithmetic, except for 0.33's quantized layers, whose encoding entries its get_key_patches cannot
    resolve: their QuantizedTensor weights are dequantized (a file-merged model has no patches)."""
    if getattr(model.model.model_config, "quant_config", None) is None:
        return effective(model, UNET), {k: v[0][0].dtype for k, v in model.get_key_patches(UNET).items()}
    got, dtypes = {}, {}
    for key in model.model.state_dict():
        path, _, name = key.rpartition(".")
        value = getattr(model.model.get_submodule(path), name, None) if key.startswith(UNET) else None
        if isinstance(value, torch.Tensor):
            dtypes[key] = value.dtype
            got[key] = (value.dequantize() if type(value).__name__ == "QuantizedTensor" else value).float().detach()
    return got, dtypes


def assert_within_rounding(model, want, stored, inputs, file_key):
    """Every element of the loaded merge within the roundings between the float32 merge and the model.

    The file holds round(m), m the engine's float32 merge (torch.lerp); the reference is ComfyUI's
    float32 patch arithmetic (A*keep + B*strength). The two float32 evaluations differ by a few float32
    roundings of the inputs (<= 2**-22 * (|A|+|B|)); that term dominates where the merge cancels to ~0
    (e.g. 1.2e-7 from A=-0.041, B=0.095 at time_embed.2.bias, 1.5 % of the value), so no purely relative
    bound can hold there. A scaled-fp8 key's step is its stored scale times fp8's. ComfyUI may round a
    second time on load: its scaled-fp8 layers hold their bias in fp8 too (unscaled), though the file
    (like ComfyUI's own scaled-fp8 files) keeps it bf16; each rounding adds its own bound.
    """
    got, loaded = weights_as_loaded(model)
    for key, want_key in want.items():
        fk = file_key(key)
        scale_keys = [fk[: -len("weight")] + n for n in ("scale_weight", "weight_scale") if fk.endswith("weight")]
        scale = next((stored[k].float() for k in scale_keys if k in stored), 1.0)
        chain = [(stored[fk].dtype, scale)] + ([(loaded[key], 1.0)] if loaded[key] != stored[fk].dtype else [])
        bound = 2 ** -22 * sum(t[fk].float().abs() for t in inputs)
        size = want_key.abs() + bound
        for dtype, step_scale in chain:
            u, half_step = ROUNDING[dtype]
            step = u * size + half_step * step_scale
            bound, size = bound + step, size + step
        err = (got[key] - want_key).abs()
        assert bool((err <= bound).all()), (key, [d for d, _ in chain], float((err - bound).max()))


@pytest.mark.parametrize("precision", ["as A", *PRECISIONS])
def test_checkpoint_file_merge_loads_and_equals_the_model_merge_node(folders, precision):
    ref = node_merge_reference()
    out = CheckpointFileMerge.execute("tiny_a.safetensors", "tiny_b.safetensors", precision=precision,
                                      filename_prefix="merged/x", **SETTINGS).result
    model, clip, vae, name = out
    assert name.startswith(os.path.join("merged", "x_")) and name.endswith("_.safetensors")
    assert clip is not None and vae is not None
    got = weights_as_loaded(model)[0]
    assert set(ref) <= set(got) and all(k.endswith(("scale_weight", "scale_input", "input_scale"))
                                        for k in set(got) - set(ref))
    folder = folders["checkpoints"]
    stored = load_file(folder / name)
    assert_within_rounding(model, ref, stored, [load_file(folder / f"tiny_{n}.safetensors") for n in "ab"],
                           lambda key: "model." + key)
    if precision == "scaled_fp8":
        assert_scaled_fp8_layout(model, stored, "model.diffusion_model.")


def assert_scaled_fp8_layout(model, stored, prefix):
    """The layout this host's loader reads natively, and the loaded model quantised by it."""
    if READS_COMFY_QUANT:
        configs = [k for k in stored if k.endswith(".comfy_quant")]
        assert prefix + "scaled_fp8" not in stored and configs and all(k.startswith(prefix) for k in configs)
        assert model.model.model_config.quant_config is not None
    else:
        assert stored[prefix + "scaled_fp8"].dtype == torch.float8_e4m3fn
        assert model.model.model_config.scaled_fp8 == torch.float8_e4m3fn


def test_second_identical_run_reuses_the_file_and_settings_change_the_name(folders, monkeypatch):
    calls = []
    real = file_merge.merge_files
    monkeypatch.setattr(file_merge, "merge_files", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = CheckpointFileMerge.execute("tiny_a.safetensors", "tiny_b.safetensors", **SETTINGS).result[-1]
    again = CheckpointFileMerge.execute("tiny_a.safetensors", "tiny_b.safetensors", **SETTINGS).result[-1]
    assert first == again and len(calls) == 1
    other = CheckpointFileMerge.execute("tiny_a.safetensors", "tiny_b.safetensors",
                                        **dict(SETTINGS, alpha=0.31)).result[-1]
    assert other != first and len(calls) == 2
    meta_key = file_merge.CONTENT_KEY
    from merge_suite.merge_core.io.safetensors_file import SafetensorsReader
    with SafetensorsReader(folders["checkpoints"] / first) as r:
        assert meta_key in r.metadata and "merge_suite_recipe" in r.metadata


def test_interrupt_leaves_no_file(folders):
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            CheckpointFileMerge.execute("tiny_a.safetensors", "tiny_b.safetensors", **SETTINGS)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    leftovers = [p for _, _, fs in os.walk(folders["checkpoints"]) for p in fs if not p.startswith("tiny_")]
    assert leftovers == []


def test_diffusion_model_file_merge_scaled_fp8_loads_with_unet_loader(folders):
    import nodes as comfy_nodes
    ma, mb = (comfy_nodes.UNETLoader().load_unet(f"unet_{n}.safetensors", "default")[0] for n in "ab")
    ref_model = ModelMerge.execute(model_a=ma, model_b=mb, **SETTINGS).result[0]
    ref = effective(ref_model, UNET)
    model, name = DiffusionModelFileMerge.execute("unet_a.safetensors", "unet_b.safetensors",
                                                  precision="scaled_fp8", **SETTINGS).result
    folder = folders["diffusion_models"]
    stored = load_file(folder / name)
    assert_scaled_fp8_layout(model, stored, "")
    assert_within_rounding(model, ref, stored,
                           [load_file(folder / f"unet_{n}.safetensors") for n in "ab"],
                           lambda key: key[len(UNET):])


def test_missing_file_is_a_one_line_error_naming_the_input(folders):
    from merge_suite.nodes.errors import MergeNodeError
    with pytest.raises(MergeNodeError, match="file_b.*not in the checkpoints folder"):
        CheckpointFileMerge.execute("tiny_a.safetensors", "nope.safetensors", **SETTINGS)
    assert files_in(folders["checkpoints"]) == []


def tiny_wan_file(path, seed):
    """A Wan 2.1 text-to-video diffusion model at width 128 (one head, two blocks), bare keys as in the
    diffusion_models folder; ComfyUI's own loader reads its size from the shapes."""
    from comfy.ldm.wan.model import WanModel
    import comfy.ops
    gen = torch.Generator().manual_seed(seed)
    net = WanModel(model_type="t2v", dim=128, ffn_dim=256, num_heads=1, num_layers=2,
                   operations=comfy.ops.disable_weight_init)
    save_file({k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in net.state_dict().items()}, path)


def test_bare_wan_diffusion_model_merges_keeping_its_naming_and_equals_the_model_merge_node(folders):
    import nodes as comfy_nodes
    folder = folders["diffusion_models"]
    for seed, n in enumerate("ab"):
        tiny_wan_file(folder / f"unet_wan_{n}.safetensors", seed)
    ma, mb = (comfy_nodes.UNETLoader().load_unet(f"unet_wan_{n}.safetensors", "default")[0] for n in "ab")
    ref = effective(ModelMerge.execute(model_a=ma, model_b=mb, **SETTINGS).result[0], UNET)
    model, name = DiffusionModelFileMerge.execute("unet_wan_a.safetensors", "unet_wan_b.safetensors",
                                                  precision="fp32", **SETTINGS).result
    stored, inputs = load_file(folder / name), [load_file(folder / f"unet_wan_{n}.safetensors") for n in "ab"]
    assert set(stored) == set(inputs[0])  # bare keys in, bare keys out
    assert type(model.model).__name__ == "WAN21"
    assert_within_rounding(model, ref, stored, inputs, lambda key: key[len(UNET):])


# --- hostile inputs: the reuse key, concurrent identical merges, prefixes, NaN/inf inputs -------------

def _counting(monkeypatch):
    calls = []
    real = file_merge.merge_files
    monkeypatch.setattr(file_merge, "merge_files", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    return calls


def _unet_merge(a, b, **extra):
    return DiffusionModelFileMerge.execute(a, b, **dict(SETTINGS, **extra)).result[-1]


def test_equal_names_sizes_and_times_in_two_folders_are_two_inputs(folders, monkeypatch):
    """v1/model.safetensors and v2/model.safetensors, same size and mtime: the key holds the path in the
    folder and the inode, so merging A with v2 does not load the earlier merge of A with v1."""
    folder = folders["diffusion_models"]
    b = load_file(folder / "unet_b.safetensors")
    for sub, scale in (("v1", 1.0), ("v2", -0.5)):
        (folder / sub).mkdir()
        save_file({k: v * scale for k, v in b.items()}, folder / sub / "model.safetensors")
    v1, v2 = folder / "v1" / "model.safetensors", folder / "v2" / "model.safetensors"
    assert v1.stat().st_size == v2.stat().st_size
    os.utime(v2, ns=(v1.stat().st_atime_ns, v1.stat().st_mtime_ns))
    calls = _counting(monkeypatch)
    first = _unet_merge("unet_a.safetensors", "v1/model.safetensors")
    second = _unet_merge("unet_a.safetensors", "v2/model.safetensors")
    assert len(calls) == 2 and first != second
    assert not torch.equal(*(next(iter(load_file(folder / n).values())) for n in (first, second)))


def test_input_rewritten_in_place_with_restored_mtime_is_merged_again(folders, monkeypatch):
    """Same inode, same size, mtime set back with os.utime: the ctime (which no tool sets back) differs."""
    folder = folders["diffusion_models"]
    b = folder / "unet_b.safetensors"
    calls = _counting(monkeypatch)
    first = _unet_merge("unet_a.safetensors", "unet_b.safetensors")
    before = b.stat()
    time.sleep(0.05)  # past the file system's timestamp granularity
    changed = {k: v * 2 for k, v in load_file(b).items()}
    from safetensors.torch import save as to_bytes
    data = to_bytes(changed)
    assert len(data) == before.st_size
    with open(b, "r+b") as f:  # in place: same inode
        f.write(data)
    os.utime(b, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = b.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    second = _unet_merge("unet_a.safetensors", "unet_b.safetensors")
    assert len(calls) == 2 and second != first
    key = next(k for k in changed if changed[k].is_floating_point())
    a = load_file(folder / "unet_a.safetensors")[key].float()
    got = load_file(folder / second)[key].float()
    torch.testing.assert_close(got, (a + (changed[key].float() - a) * SETTINGS["alpha"]).to(got.dtype).float(),
                               rtol=1e-2, atol=1e-3)


def _run_together(n, fn):
    results, errors = [None] * n, []

    def run(i):
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    return results


def test_two_identical_merges_at_once_take_turns_and_share_the_file(folders, monkeypatch):
    """As two servers on one models folder: the second waits for the lock, then loads the first's file."""
    calls = _counting(monkeypatch)
    names = _run_together(2, lambda: _unet_merge("unet_a.safetensors", "unet_b.safetensors"))
    assert names[0] == names[1] and len(calls) == 1
    folder = folders["diffusion_models"]
    assert files_in(folder) == ["merge_suite"]
    assert os.listdir(folder / "merge_suite") == [os.path.basename(names[0])]
    assert load_file(folder / names[0])
    assert not [p for p in os.listdir(folder) if p.endswith(".lock")]  # the lock file is removed


def test_unlocked_identical_merges_at_once_reuse_the_result_that_appeared(folders, monkeypatch):
    """Without the lock (a file system that has none): both merge; the one that finds the other's file at
    the target loads it instead of failing after its work."""
    import contextlib
    monkeypatch.setattr(file_merge, "same_merge_lock", lambda *a: contextlib.nullcontext())
    barrier = threading.Barrier(2)
    real = file_merge.existing_result
    seen = set()

    def both_look_first(*a):
        found = real(*a)
        if threading.get_ident() not in seen:  # both look before either writes
            seen.add(threading.get_ident())
            barrier.wait(60)
        return found
    monkeypatch.setattr(file_merge, "existing_result", both_look_first)
    calls = _counting(monkeypatch)
    names = _run_together(2, lambda: _unet_merge("unet_a.safetensors", "unet_b.safetensors"))
    assert len(calls) == 2 and calls[0] == calls[1]  # the same automatic name for both
    assert names[0] == names[1]
    folder = folders["diffusion_models"] / "merge_suite"
    assert os.listdir(folder) == [os.path.basename(names[0])]


@pytest.mark.parametrize("prefix,words", [
    ("new/a\0b", "NUL byte"),
    ("new/" + "x" * 200, "at most 180"),
    ("new/" + "d" * 256 + "/x", "folder name"),
    ("new\\x", "backslash"),
    ("../new/x", "points outside"),
])
def test_bad_prefix_is_refused_before_any_work_or_folder(folders, monkeypatch, prefix, words):
    from merge_suite.nodes.errors import MergeNodeError
    calls = _counting(monkeypatch)
    with pytest.raises(MergeNodeError) as info:
        DiffusionModelFileMerge.execute("unet_a.safetensors", "unet_b.safetensors", filename_prefix=prefix,
                                        **SETTINGS)
    text = str(info.value)
    assert words in text and "filename_prefix" in text and "Merge Diffusion Model Files" in text
    assert "\n" not in text and calls == []
    assert files_in(folders["diffusion_models"]) == []
    assert not os.path.exists(folders["diffusion_models"].parent / "new")


def test_glob_characters_in_the_prefix_do_not_defeat_reuse(folders, monkeypatch):
    calls = _counting(monkeypatch)
    first = _unet_merge("unet_a.safetensors", "unet_b.safetensors", filename_prefix="s[1]/m[ab]*?")
    again = _unet_merge("unet_a.safetensors", "unet_b.safetensors", filename_prefix="s[1]/m[ab]*?")
    assert first == again and len(calls) == 1 and first.startswith(os.path.join("s[1]", "m[ab]*?_"))


def test_a_failed_merge_leaves_no_folder(folders):
    from merge_suite.nodes.errors import MergeNodeError
    folder = folders["diffusion_models"]
    save_file({"other.weight": torch.zeros(3)}, folder / "unet_other.safetensors")
    with pytest.raises(MergeNodeError):
        DiffusionModelFileMerge.execute("unet_a.safetensors", "unet_other.safetensors",
                                        filename_prefix="fresh/sub/x", **SETTINGS)
    assert not (folder / "fresh").exists()


def test_nonfinite_input_values_are_logged(folders, caplog):
    folder = folders["diffusion_models"]
    b = load_file(folder / "unet_b.safetensors")
    key = next(k for k, v in b.items() if v.is_floating_point() and v.numel() > 4)
    b[key] = b[key].clone()
    b[key].view(-1)[:3] = float("nan")
    save_file(b, folder / "unet_nan.safetensors")
    with caplog.at_level("WARNING"):
        _unet_merge("unet_a.safetensors", "unet_nan.safetensors")
    lines = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(lines) == 1 and f"{key} (B: 3)" in lines[0] and "input files" in lines[0], lines
