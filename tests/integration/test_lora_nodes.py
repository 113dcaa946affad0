"""LoRA nodes on real ComfyUI objects: parity with LoraLoader and LoraSave, block weights, merge, extract, bake.

Expected weights come from the LoRA formula W + s * (alpha/r) * up @ down on the
files' own tensors, with blocks from an independent transcription (spec_blocks).
"""
import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import comfy.lora  # noqa: E402
import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from spec_blocks import sd1_block, sdxl_block  # noqa: E402

from merge_suite.merge_core.architectures import SD1, SDXL  # noqa: E402
from merge_suite.merge_core.lora.keys import te_modules, unet_module  # noqa: E402
from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.lora import (LoraApply, LoraBake, LoraExtract, LoraExtractFromLoras,  # noqa: E402
                                    LoraMerge)

ARCH = {"sd1": SD1, "sdxl": SDXL}
SD1_NAMES = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
SDXL_NAMES = ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    return folder


def effective(obj, prefix=None):
    lists = obj.get_key_patches(prefix) if prefix else obj.get_key_patches()
    with torch.no_grad():
        return {k: comfy.lora.calculate_weight(v[1:], v[0][0].float().clone(), k) for k, v in lists.items()}


def targets(model, clip, layout, conv=True):
    """(kohya name, model key, row slice, shape) of every module a kohya LoRA can hold."""
    arch = ARCH[layout]
    out = []
    for key, w in model.model_state_dict("diffusion_model.").items():
        name = unet_module(key, arch, tuple(w.shape), conv)
        if name:
            out.append((name, key, None, tuple(w.shape)))
    for key, w in clip.patcher.model_state_dict().items():
        out += [(n, key, rows, tuple(w.shape)) for n, rows in te_modules(key, arch, tuple(w.shape))]
    return out


def write_lora(folder, name, model, clip, layout, seed, rank=4, alpha=2.0):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for kname, _, _, shape in targets(model, clip, layout):
        out_dim, in_shape = shape[0], shape[1:]
        if len(shape) == 4:
            sd[f"{kname}.lora_up.weight"] = torch.randn(out_dim, rank, 1, 1, generator=gen) * 0.1
            sd[f"{kname}.lora_down.weight"] = torch.randn(rank, *in_shape, generator=gen) * 0.1
        else:
            sd[f"{kname}.lora_up.weight"] = torch.randn(out_dim, rank, generator=gen) * 0.1
            sd[f"{kname}.lora_down.weight"] = torch.randn(rank, in_shape[0], generator=gen) * 0.1
        sd[f"{kname}.alpha"] = torch.tensor(alpha)
    save_file(sd, str(folder / f"{name}.safetensors"))
    return f"{name}.safetensors"


def file_delta(sd, kname, shape):
    up, down = sd[f"{kname}.lora_up.weight"].float(), sd[f"{kname}.lora_down.weight"].float()
    scale = float(sd[f"{kname}.alpha"]) / down.shape[0] if f"{kname}.alpha" in sd else 1.0
    return (up.flatten(1) @ down.flatten(1) * scale).reshape(shape)


def no_missing_keys(caplog):
    return not [r for r in caplog.records if "lora key not loaded" in r.getMessage()
                or "NOT LOADED" in r.getMessage()]


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_all_ones_equals_comfy_lora_loader(layout, tiny, loras, caplog):
    model, clip = tiny("model", layout, 1), tiny("clip", layout, 1)
    name = write_lora(loras, f"parity_{layout}", model, clip, layout, seed=5)
    caplog.set_level(logging.WARNING)
    ours = LoraApply.execute(model, lora_name=name, strength_model=0.7, strength_clip=-0.4, clip=clip).result
    assert no_missing_keys(caplog)
    ref_model, ref_clip = comfy_nodes.LoraLoader().load_lora(model, clip, name, 0.7, -0.4)
    for got, ref in ((effective(ours[0], "diffusion_model."), effective(ref_model, "diffusion_model.")),
                     (effective(ours[1]), effective(ref_clip))):
        changed = 0
        for key, w in ref.items():
            torch.testing.assert_close(got[key], w, rtol=0, atol=0)
            changed += 1
        assert changed
    assert "weights patched" in ours[2]


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_block_weights_follow_the_formula_and_zero_exactly(layout, tiny, loras):
    model, clip = tiny("model", layout, 2), tiny("clip", layout, 2)
    name = write_lora(loras, f"blocks_{layout}", model, clip, layout, seed=6)
    sd = load_file(str(loras / name))
    names, block_of = (SD1_NAMES, sd1_block) if layout == "sd1" else (SDXL_NAMES, sdxl_block)
    values = [0.0 if i % 3 == 1 else round(0.2 + i / 40, 3) for i in range(len(names))]
    ours = LoraApply.execute(model, lora_name=name, strength_model=0.5, strength_clip=0.9,
                             block_weights=",".join(map(str, values)), clip=clip).result
    got = effective(ours[0], "diffusion_model.")
    got.update(effective(ours[1]))
    base = effective(model, "diffusion_model.")
    base.update(effective(clip))
    zeroed = 0
    for kname, key, rows, _shape in targets(model, clip, layout):
        if key.startswith("diffusion_model."):
            v = 0.5 * values[names.index(block_of(key))]
        else:
            v = 0.9 * values[0]
        expected = base[key].clone()
        part = expected if rows is None else expected[rows]
        part += v * file_delta(sd, kname, part.shape)
        torch.testing.assert_close(got[key], expected, rtol=1e-4, atol=1e-3 if not key.startswith("d") else 1e-5)
        if v == 0.0:
            assert torch.equal(got[key], base[key])
            zeroed += 1
    assert zeroed > 0


def test_presets_and_list_multiply_the_ratio(tiny, loras):
    model, clip = tiny("model", "sd1", 3), tiny("clip", "sd1", 3)
    name = write_lora(loras, "preset_sd1", model, clip, "sd1", seed=7)
    a = LoraApply.execute(model, lora_list=f"{name}:0.5:INS", clip=clip).result
    b = LoraApply.execute(model, lora_name=name, strength_model=0.5, strength_clip=0.5,
                          block_weights="1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0", clip=clip).result
    ea, eb = effective(a[0], "diffusion_model."), effective(b[0], "diffusion_model.")
    for key in ea:
        torch.testing.assert_close(ea[key], eb[key], rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_merge_then_apply_equals_applying_both(layout, tiny, loras):
    model, clip = tiny("model", layout, 4), tiny("clip", layout, 4)
    n1 = write_lora(loras, f"m1_{layout}", model, clip, layout, seed=8, rank=3, alpha=1.5)
    n2 = write_lora(loras, f"m2_{layout}", model, clip, layout, seed=9, rank=2, alpha=2.0)
    listing = f"{n1}:0.8, {n2}:-0.5"
    merged = LoraMerge.execute(listing, method="exact", rank=5, save_dtype="fp32",
                               filename_prefix=f"merged_{layout}").result
    both = LoraApply.execute(model, lora_list=listing, clip=clip).result
    one = LoraApply.execute(model, lora_list=merged[1], clip=clip).result
    for x, y in ((effective(both[0], "diffusion_model."), effective(one[0], "diffusion_model.")),
                 (effective(both[1]), effective(one[1]))):
        for key in x:
            torch.testing.assert_close(y[key], x[key], rtol=1e-4, atol=2e-5 if key.startswith("d") else 2e-3)
    assert "exact" in merged[2]


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_extract_full_rank_reproduces_the_difference_and_loads_cleanly(layout, tiny, loras, caplog):
    a, b = tiny("model", layout, 11), tiny("model", layout, 12)
    ca, cb = tiny("clip", layout, 11), tiny("clip", layout, 12)
    out = LoraExtract.execute(a, b, rank=4096, conv_rank=4096, te_min_diff=0.0, save_dtype="fp32",
                              filename_prefix=f"full_{layout}", clip_a=ca, clip_b=cb).result
    caplog.set_level(logging.WARNING)
    rebuilt, rebuilt_clip = comfy_nodes.LoraLoader().load_lora(b, cb, out[0], 1.0, 1.0)
    assert no_missing_keys(caplog)
    ea, eb = effective(a, "diffusion_model."), effective(rebuilt, "diffusion_model.")
    ea.update(effective(ca))
    eb.update(effective(rebuilt_clip))
    keys = {key for _, key, _, _ in targets(a, ca, layout)}
    assert len(keys) > 50
    for key in keys:
        tol = 1e-5 if key.startswith("diffusion_model.") else 2e-3  # text encoders are stored in fp16
        torch.testing.assert_close(eb[key], ea[key], rtol=1e-4, atol=tol)
    meta = load_metadata(loras / out[0])
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"].startswith(
        "sdxl" if layout == "sdxl" else "sd_v1")


def load_metadata(path):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_low_rank_error_no_worse_than_comfy_lora_save(tiny, loras):
    from comfy_extras.nodes_lora_extract import extract_lora
    a, b = tiny("model", "sd1", 21), tiny("model", "sd1", 22)
    sd_a, sd_b = effective(a, "diffusion_model."), effective(b, "diffusion_model.")
    rank = 4
    for svd in ("full", "randomized"):
        out = LoraExtract.execute(a, b, rank=rank, svd=svd, save_dtype="fp32",
                                  filename_prefix=f"low_{svd}").result
        lora = load_file(str(loras / out[0]))
        ours_err = theirs_err = total = 0.0
        for kname, key, _, shape in targets(a, tiny("clip", "sd1", 21), "sd1", conv=False):
            if not key.startswith("diffusion_model."):
                continue
            diff = sd_a[key] - sd_b[key]
            up, down = extract_lora(diff, rank)
            theirs = (up.flatten(1) @ down.flatten(1)).reshape(shape)
            ours_err += float(((file_delta(lora, kname, shape) - diff) ** 2).sum())
            theirs_err += float(((theirs - diff) ** 2).sum())
            total += float((diff ** 2).sum())
        ours_rel, theirs_rel = (ours_err / total) ** 0.5, (theirs_err / total) ** 0.5
        assert ours_rel <= theirs_rel * (1.0 if svd == "full" else 1.01), (svd, ours_rel, theirs_rel)


def test_bake_keeps_weights_and_drops_the_adapters(tiny, loras):
    model, clip = tiny("model", "sdxl", 5), tiny("clip", "sdxl", 5)
    name = write_lora(loras, "bake_sdxl", model, clip, "sdxl", seed=10)
    applied = LoraApply.execute(model, lora_name=name, block_weights="OUTALL", clip=clip).result
    baked = LoraBake.execute(applied[0], applied[1]).result
    for x, y in ((applied[0], baked[0]), (applied[1], baked[1])):
        ex, ey = effective(x), effective(y)
        patcher = getattr(y, "patcher", y)
        assert patcher.patches and all(p[0][1][0] == "set" for p in patcher.patches.values())
        for key in ex:
            torch.testing.assert_close(ey[key], ex[key].to(getattr(x, "patcher", x).model_state_dict()[key].dtype)
                                       .float(), rtol=0, atol=0)


def test_extract_from_two_loras_saves_a_loadable_file(tiny, loras, caplog):
    model, clip = tiny("model", "sd1", 6), tiny("clip", "sd1", 6)
    n1 = write_lora(loras, "x1", model, clip, "sd1", seed=13)
    n2 = write_lora(loras, "x2", model, clip, "sd1", seed=14)
    out = LoraExtractFromLoras.execute(f"{n1}:1", f"{n2}:0.5", alpha=1.0, beta=1.0, gamma=1.0,
                                       metadata="merge").result
    caplog.set_level(logging.WARNING)
    m, _ = comfy_nodes.LoraLoader().load_lora(model, clip, out[0], 1.0, 1.0)
    assert no_missing_keys(caplog)
    meta = load_metadata(loras / out[0])
    assert "sshs_cp1" in meta and meta["ss_output_name"] == Path(out[0]).stem


def test_saved_files_are_never_overwritten(tiny, loras):
    model, clip = tiny("model", "sd1", 7), tiny("clip", "sd1", 7)
    n1 = write_lora(loras, "keep", model, clip, "sd1", seed=15)
    first = LoraMerge.execute(f"{n1}:1", filename_prefix="same").result[0]
    second = LoraMerge.execute(f"{n1}:1", filename_prefix="same").result[0]
    assert first != second and (loras / first).is_file() and (loras / second).is_file()


def test_bad_inputs_name_the_lora_and_the_fix(tiny, loras):
    sd1, sd1_clip = tiny("model", "sd1", 8), tiny("clip", "sd1", 8)
    xl, xl_clip = tiny("model", "sdxl", 8), tiny("clip", "sdxl", 8)
    xl_lora = write_lora(loras, "only_xl", xl, xl_clip, "sdxl", seed=16)
    sd1_lora = write_lora(loras, "only_sd1", sd1, sd1_clip, "sd1", seed=17)
    with pytest.raises(MergeNodeError, match=r"Apply LoRA with Block Weights: input .lora_name.: LoRA .only_xl"
                                             r".*SDXL LoRA but the model is SD1.*Fix:"):
        LoraApply.execute(sd1, lora_name=xl_lora)
    with pytest.raises(MergeNodeError, match=r"block_weights.*not a known preset.*Did you mean 'INS'"):
        LoraApply.execute(sd1, lora_name=sd1_lora, block_weights="ins")
    with pytest.raises(MergeNodeError, match=r"only_sd1.*has 5 block values.*Fix: give 17"):
        LoraApply.execute(sd1, lora_list=f"{sd1_lora}:1:1,1,1,1,1")
    with pytest.raises(MergeNodeError, match=r"Merge LoRAs: input 'lora_list'.*different architectures"):
        LoraMerge.execute(f"{sd1_lora}:1, {xl_lora}:1")
    with pytest.raises(MergeNodeError, match=r"'missing_lora' is not in the loras folder"):
        LoraMerge.execute("missing_lora:1")


def write_lycoris(folder, name, model, clip, layout, seed):
    """LoHa, LoKr and DoRA modules on the 2-D targets, in turn (ComfyUI's adapters read them)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (kname, _, _, shape) in enumerate(t for t in targets(model, clip, layout) if len(t[3]) == 2):
        out_dim, in_dim = shape
        kind = ("loha", "lokr", "dora")[i % 3]
        if kind == "loha":
            for part in ("1", "2"):
                sd[f"{kname}.hada_w{part}_a"] = torch.randn(out_dim, 2, generator=gen) * 0.2
                sd[f"{kname}.hada_w{part}_b"] = torch.randn(2, in_dim, generator=gen) * 0.2
            sd[f"{kname}.alpha"] = torch.tensor(1.0)
        elif kind == "lokr" and out_dim % 2 == 0 and in_dim % 2 == 0:
            sd[f"{kname}.lokr_w1"] = torch.randn(2, 2, generator=gen) * 0.2
            sd[f"{kname}.lokr_w2"] = torch.randn(out_dim // 2, in_dim // 2, generator=gen) * 0.2
        else:
            sd[f"{kname}.lora_up.weight"] = torch.randn(out_dim, 2, generator=gen) * 0.1
            sd[f"{kname}.lora_down.weight"] = torch.randn(2, in_dim, generator=gen) * 0.1
            sd[f"{kname}.dora_scale"] = 1.0 + torch.rand(out_dim, 1, generator=gen) * 0.1
    save_file(sd, str(folder / f"{name}.safetensors"))
    return f"{name}.safetensors"


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_lycoris_types_match_lora_loader_and_zero_blocks(layout, tiny, loras, caplog):
    model, clip = tiny("model", layout, 9), tiny("clip", layout, 9)
    name = write_lycoris(loras, f"lyco_{layout}", model, clip, layout, seed=18)
    caplog.set_level(logging.WARNING)
    ours = LoraApply.execute(model, lora_name=name, strength_model=0.8, strength_clip=0.8, clip=clip).result
    assert no_missing_keys(caplog)
    ref_model, ref_clip = comfy_nodes.LoraLoader().load_lora(model, clip, name, 0.8, 0.8)
    for got, ref in ((effective(ours[0], "diffusion_model."), effective(ref_model, "diffusion_model.")),
                     (effective(ours[1]), effective(ref_clip))):
        for key, w in ref.items():
            torch.testing.assert_close(got[key], w, rtol=0, atol=0)
    names, block_of = (SD1_NAMES, sd1_block) if layout == "sd1" else (SDXL_NAMES, sdxl_block)
    values = [0.0 if b.startswith("OUT") else 1.0 for b in names]
    zeroed = LoraApply.execute(model, lora_name=name, block_weights=",".join(map(str, values))).result[0]
    got, base, full = (effective(m, "diffusion_model.") for m in (zeroed, model, ours[0]))
    changed = 0
    for key in got:
        if block_of(key).startswith("OUT"):
            assert torch.equal(got[key], base[key])
        elif not torch.equal(full[key], base[key]):
            torch.testing.assert_close(got[key], base[key] + (full[key] - base[key]) / 0.8, rtol=1e-4, atol=1e-5)
            changed += 1
    assert changed > 0
