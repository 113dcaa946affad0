"""merge_core's LoRA library: list syntax, block layouts, kohya names, SVD, merge rules, metadata, files, CLI.

Expected values are written from the documented behaviour (docs/lora.md) independently of
the implementation: the name conversion of docs/lora.md#lora-to-block-mapping is transcribed here in its forward
direction and used to check the names we generate in the reverse direction.
"""
import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from merge_core.architectures import SD1, SDXL
from merge_core.cli import main
from merge_core.errors import MergeInputError
from merge_core.lora.blocks import block_values, parse_lora_list, parse_presets
from merge_core.lora.files import next_free_path, read_lora, save_lora
from merge_core.lora.metadata import merged_metadata
from merge_core.lora.operations import LoraResult
from merge_core.lora.keys import lora_architecture, module_block, te_modules, unet_module
from merge_core.lora.linalg import LoraModule, decompose, exact_merge, extract_two, naive_merge

from spec_blocks import sd1_block


# --- list syntax and block layouts -------------------------------------------------------

def test_list_syntax_keeps_commas_of_inline_blocks():
    items = parse_lora_list("a:0.5,\nb:1:INS, c:0.25:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,1")
    assert [(i.name, i.ratio, i.blocks) for i in items] == [
        ("a", 0.5, ""), ("b", 1.0, "INS"), ("c", 0.25, "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,1")]
    with pytest.raises(MergeInputError, match="ratio 'x' is not a number"):
        parse_lora_list("a:x")


def test_inline_values_are_multiplied_by_the_ratio_and_placed_by_name():
    values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    got = block_values(",".join(map(str, values)), 0.5, SD1, parse_presets())
    layout = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00"] + [f"OUT{i:02d}" for i in range(3, 12)]
    expected = {b: 0.0 for b in SD1.blocks}
    expected.update({b: 0.5 * v for b, v in zip(layout, values)})
    assert got == expected
    xl = block_values("1,2,3,4,5,6,7,8,9,10,11,12", 2.0, SDXL, parse_presets())
    assert xl["IN04"] == 4.0 and xl["M00"] == 12.0 and xl["OUT05"] == 24.0 and xl["IN00"] == 0.0


@pytest.mark.parametrize("spec", [",,,,", " , ", ",\n,"])
def test_block_weights_of_commas_alone_are_refused_on_both_paths(spec):
    """',,,,' is a list whose numbers were lost, not 'every block at the ratio' (empty text means that)."""
    from merge_core.lora.blocks import check_spec
    for call in (lambda: block_values(spec, 1.0, SD1, parse_presets(), lora="x"),
                 lambda: check_spec(spec, 1.0, parse_presets(), "lbw", lora="x")):
        with pytest.raises(MergeInputError, match=r"LoRA 'x' block weights: .* holds only commas") as err:
            call()
        assert err.value.input_name in ("block_weights", "lbw") and "\n" not in str(err.value)
    assert set(block_values("", 0.5, SD1, parse_presets()).values()) == {0.5}


def test_presets_builtin_user_and_errors():
    presets = parse_presets("MINE:0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1")
    assert block_values("INS", 1.0, SD1, presets)["IN02"] == 1.0
    assert block_values("INS", 1.0, SD1, presets)["IN04"] == 1.0  # INS = BASE, IN01, IN02, IN04
    assert block_values("INS", 1.0, SD1, presets)["IN05"] == 0.0
    assert block_values("MINE", 0.5, SDXL, presets)["OUT08"] == 0.5
    with pytest.raises(MergeInputError, match=r"'outs' is not a known preset\. Did you mean 'OUTS'"):
        block_values("outs", 1.0, SD1, presets)
    with pytest.raises(MergeInputError, match=r"LoRA 'x' block weights has 3 block values.*give 17"):
        block_values("1,1,1", 1.0, SD1, presets, lora="x")
    with pytest.raises(MergeInputError, match="lbw_presets"):
        parse_presets("BAD:1,2")


# --- names ----------------------------------------------------------------------------------

def spec_diffusers_to_compvis(name: str) -> str:
    """docs/lora.md#lora-to-block-mapping, first step, transcribed: kohya/diffusers module name -> compvis name."""
    n = name.replace("lora_unet_", "")
    resnet = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
              "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}

    def suffix(rest):
        return resnet.get(rest, rest)
    m = re.match(r"down_blocks_(\d)_(attentions|resnets)_(\d)_(.*)", n)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks_{1 + 3 * i + j}_{1 if kind == 'attentions' else 0}_" + (
            rest if kind == "attentions" else suffix(rest))
    m = re.match(r"down_blocks_(\d)_downsamplers_0_conv", n)
    if m:
        return f"input_blocks_{3 + 3 * int(m[1])}_0_op"
    m = re.match(r"mid_block_attentions_0_(.*)", n)
    if m:
        return "middle_block_1_" + m[1]
    m = re.match(r"mid_block_resnets_(\d)_(.*)", n)
    if m:
        return f"middle_block_{2 * int(m[1])}_" + suffix(m[2])
    m = re.match(r"up_blocks_(\d)_(attentions|resnets)_(\d)_(.*)", n)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks_{3 * i + j}_{1 if kind == 'attentions' else 0}_" + (
            rest if kind == "attentions" else suffix(rest))
    m = re.match(r"up_blocks_(\d)_upsamplers_0_conv", n)
    if m:
        i = int(m[1])
        return f"output_blocks_{2 + 3 * i}_{2 if i > 0 else 1}_conv"
    raise AssertionError(name)


def test_sd1_names_are_kohya_diffusers_names_that_map_back_to_the_key(sd1_keys):
    count = 0
    for key, shape in sd1_keys.items():
        name = unet_module(key, SD1, shape, conv=True)
        if name is None:
            continue
        count += 1
        compvis = key[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
        assert spec_diffusers_to_compvis(name) == compvis, (key, name)
        assert module_block(name, SD1) == sd1_block(key[len("model."):])
    assert count > 250
    assert unet_module("model.diffusion_model.input_blocks.1.1.proj_in.weight", SD1, (320, 320, 1, 1), False) == \
        "lora_unet_down_blocks_0_attentions_0_proj_in"
    assert unet_module("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", SD1, (320, 320, 3, 3),
                       False) is None  # convolutions only with a conv rank


def test_sdxl_and_text_encoder_names(sdxl_keys):
    te = {n for key, shape in sdxl_keys.items() for n, _ in te_modules(key, SDXL, shape)}
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in te
    assert "lora_te2_text_model_encoder_layers_30_mlp_fc2" in te  # the stored CLIP-G has 31 layers
    assert "lora_te2_text_model_encoder_layers_5_self_attn_v_proj" in te
    layers = {m[0] for k in sdxl_keys if (m := re.search(r"embedders\.\d\..*(layers|resblocks)\.\d+\.", k))}
    assert len(te) == 6 * len(layers)
    unet = [unet_module(k, SDXL, s, False) for k, s in sdxl_keys.items()]
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_k" in unet
    assert lora_architecture(n for n in unet if n) == "sdxl"
    assert lora_architecture(["lora_unet_down_blocks_0_attentions_0_proj_in"]) == "sd1"
    assert module_block("lora_unet_output_blocks_5_1_proj_in", SDXL) == "OUT05"
    assert module_block("lora_te2_text_model_encoder_layers_5_mlp_fc1", SDXL) == "BASE"


# --- math -----------------------------------------------------------------------------------

def low_rank(out, inp, rank, seed, kernel=()):
    g = torch.Generator().manual_seed(seed)
    up = torch.randn(out, rank, *(1,) * len(kernel), generator=g)
    down = torch.randn(rank, inp, *kernel, generator=g)
    return LoraModule(up, down, alpha=rank / 2)


def test_decompose_full_rank_is_exact_and_rank_is_clamped():
    d = torch.randn(24, 6, 3, 3)
    dec = decompose(d, 1000)
    assert dec.rank == 24 and dec.clamped_rank
    rebuilt = (dec.up.flatten(1) @ dec.down.flatten(1)).reshape(d.shape)
    torch.testing.assert_close(rebuilt, d, rtol=1e-4, atol=1e-4)
    assert dec.up.shape == (24, 24, 1, 1) and dec.down.shape == (24, 6, 3, 3)


def test_randomized_error_is_close_to_full_on_decaying_spectra():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(300, 300, generator=g))
    v, _ = torch.linalg.qr(torch.randn(200, 200, generator=g))
    s = torch.exp(-torch.arange(200) / 20.0)
    m = (u[:, :200] * s) @ v.T
    full, rnd = decompose(m, 32, "full"), decompose(m, 32, "randomized")
    expected = float(torch.sqrt((s[32:] ** 2).sum() / (s ** 2).sum()))  # Eckart-Young
    assert abs(full.rel_error - expected) < 1e-4
    assert rnd.rel_error <= expected * 1.01
    assert decompose(m, 32, clamp_quantile=0.9).rel_error > full.rel_error


def test_exact_merge_is_linear_in_the_ratios():
    a, b = low_rank(10, 12, 3, 1), low_rank(10, 12, 2, 2)
    dec = exact_merge([(a, 0.7), (b, -1.3)], 5)
    da = 0.5 * a.up @ a.down  # alpha/rank = 1/2
    db = 0.5 * b.up @ b.down
    torch.testing.assert_close(dec.up @ dec.down, 0.7 * da - 1.3 * db, rtol=1e-4, atol=1e-4)


def test_naive_merge_ratio_semantics():
    a = low_rank(8, 8, 2, 3)
    delta = a.delta()
    kohya = naive_merge([(a, -0.5)], same_to_strength=False)
    torch.testing.assert_close(kohya.delta(), 0.25 * delta)  # r^2, sign lost
    linear = naive_merge([(a, -0.5)], same_to_strength=True)
    torch.testing.assert_close(linear.delta(), -0.5 * delta)
    with pytest.raises(MergeInputError, match="equal ranks"):
        naive_merge([(a, 1.0), (low_rank(8, 8, 3, 4), 1.0)], True)


def test_extract_two_formula():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    alpha, beta, gamma = 0.3, 0.8, 2.0
    got = extract_two(a, b, alpha, beta, gamma)
    for i in range(6):
        cos = float(a[i] @ b[i] / (a[i].norm() * b[i].norm()))
        d = ((cos + 1) / 2) ** gamma
        row = (a[i] + alpha * (b[i] - a[i])) * (d + beta * (1 - 2 * d))
        torch.testing.assert_close(got[i], row, rtol=1e-5, atol=1e-6)


# --- files, metadata, CLI -------------------------------------------------------------------

def write(path, modules, metadata=None):
    sd = {}
    for name, m in modules.items():
        sd[f"{name}.lora_up.weight"], sd[f"{name}.lora_down.weight"] = m.up, m.down
        sd[f"{name}.alpha"] = torch.tensor(m.alpha)
    save_file(sd, str(path), metadata=metadata)
    return str(path)


SD1_MODULES = ["lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_up_blocks_3_attentions_2_proj_out",
               "lora_te_text_model_encoder_layers_0_mlp_fc1"]


def test_metadata_modes_do_not_touch_inputs(tmp_path):
    tags = json.dumps({"set": {"cat": 2}})
    p1 = write(tmp_path / "one.safetensors", {n: low_rank(4, 4, 2, 1) for n in SD1_MODULES},
               {"ss_network_module": "networks.lora", "ss_network_dim": "2", "ss_tag_frequency": tags, "x": "1"})
    p2 = write(tmp_path / "two.safetensors", {n: low_rank(4, 4, 2, 2) for n in SD1_MODULES},
               {"ss_tag_frequency": json.dumps({"set": {"cat": 3, "dog": 1}})})
    items = [(i, read_lora(p, i.name)) for i, p in zip(parse_lora_list("one:1, two:0.5"), (p1, p2))]
    before = dict(items[0][1].metadata)
    inputs = [(i, f, block_values("", i.ratio, SD1, parse_presets())) for i, f in items]
    new = merged_metadata(inputs, "create new", "out", "fp16", {4})
    assert new["ss_network_dim"] == "4" and "x" not in new and new["ss_output_name"] == "out"
    merged = merged_metadata(inputs, "merge", "out", "fp16", {4})
    assert json.loads(merged["ss_tag_frequency"]) == {"set": {"cat": 5, "dog": 1}}
    assert json.loads(merged["sshs_cp1"])["sshs_ratio"] == "0.5"
    assert "ss_output_name" not in merged_metadata(inputs, "create new without output_name", "o", "fp16", {4})
    assert items[0][1].metadata == before


def test_save_is_atomic_and_never_overwrites(tmp_path):
    result = LoraResult({})
    result.add("lora_unet_x", torch.ones(3, 1), torch.ones(1, 3), 1)
    path = save_lora(result, tmp_path / "a.safetensors", {"ss_network_module": "networks.lora"})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert len(meta["sshs_model_hash"]) == 64 and meta["ss_mixed_precision"] == "fp16"
    with pytest.raises(MergeInputError, match="already exists"):
        save_lora(result, path, {})
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temporary left behind
    assert next_free_path(tmp_path, "sub/x").name == "x_00001_.safetensors"


def test_cli_lora_merge_exact_and_errors(tmp_path, capsys):
    mods1 = {n: low_rank(6, 5, 2, i) for i, n in enumerate(SD1_MODULES)}
    mods2 = {n: low_rank(6, 5, 3, 10 + i) for i, n in enumerate(SD1_MODULES)}
    p1, p2 = write(tmp_path / "l1.safetensors", mods1), write(tmp_path / "l2.safetensors", mods2)
    out = tmp_path / "merged.safetensors"
    assert main(["lora-merge", f"{p1}:0.5:OUTALL, {p2}:1", "-o", str(out), "--rank", "5", "--dtype", "fp32"]) == 0
    merged = read_lora(out)
    outall = {SD1_MODULES[0]: 0.0, SD1_MODULES[1]: 0.5, SD1_MODULES[2]: 0.5}  # IN01 off, OUT11 and BASE on
    for name in SD1_MODULES:
        expected = outall[name] * mods1[name].delta() + mods2[name].delta()
        torch.testing.assert_close(merged.modules[name].delta(), expected, rtol=1e-4, atol=1e-4)
    assert main(["lora-merge", f"{p1}:1", "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    loha = tmp_path / "loha.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": torch.ones(2, 2)}, str(loha))
    assert main(["lora-merge", f"{p1}:1, {loha}:1", "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "LoRA 'loha' has 1 LoHa module(s)" in err and "Fix:" in err


def test_cli_lora_extract_from_checkpoint_files(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    keys = {"model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight": (16, 16),
            "model.diffusion_model.input_blocks.8.0.in_layers.2.weight": (8, 4, 3, 3),
            "model.diffusion_model.label_emb.0.0.weight": (8, 8),
            "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight": (12, 6),
            "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (24, 8)}
    a = {k: torch.randn(s, generator=g) for k, s in keys.items()}
    b = {k: torch.randn(s, generator=g) for k, s in keys.items()}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    out = tmp_path / "x.safetensors"
    assert main(["lora-extract", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "-o", str(out),
                 "--rank", "64", "--conv-rank", "64", "--dtype", "fp32", "--alpha", "1", "--beta", "0.5"]) == 0
    lora = read_lora(out)
    d = {k: a[k] - 0.5 * b[k] for k in keys}
    inproj = d["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]
    expected = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q":
            d["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"],
        "lora_unet_input_blocks_8_0_in_layers_2": d["model.diffusion_model.input_blocks.8.0.in_layers.2.weight"],
        "lora_te1_text_model_encoder_layers_0_mlp_fc1":
            d["conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"],
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": inproj[:8],
        "lora_te2_text_model_encoder_layers_0_self_attn_k_proj": inproj[8:16],
        "lora_te2_text_model_encoder_layers_0_self_attn_v_proj": inproj[16:],
    }
    assert set(lora.modules) == set(expected)  # label_emb is not a LoRA target
    for name, delta in expected.items():
        torch.testing.assert_close(lora.modules[name].delta(), delta, rtol=1e-4, atol=1e-4)
    assert lora.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert "relative error" in capsys.readouterr().err


def test_cli_extract_from_two_loras(tmp_path):
    mods1 = {n: low_rank(6, 5, 2, i) for i, n in enumerate(SD1_MODULES)}
    mods2 = {n: low_rank(6, 5, 2, 10 + i) for i, n in enumerate(SD1_MODULES)}
    p1, p2 = write(tmp_path / "l1.safetensors", mods1), write(tmp_path / "l2.safetensors", mods2)
    out = tmp_path / "e.safetensors"
    assert main(["lora-extract", "--loras", f"{p1}:1", f"{p2}:1", "-o", str(out), "--alpha", "0.5",
                 "--gamma", "2", "--dtype", "fp32"]) == 0
    got = load_file(str(out))
    name = SD1_MODULES[1]
    torch.testing.assert_close(got[f"{name}.lora_up.weight"],
                               extract_two(mods1[name].up, mods2[name].up, 0.5, 1.0, 2.0))
    assert float(got[f"{name}.alpha"]) == mods1[name].alpha
    bad = write(tmp_path / "l3.safetensors", {n: low_rank(6, 5, 3, i) for i, n in enumerate(SD1_MODULES)})
    assert main(["lora-extract", "--loras", f"{p1}:1", f"{bad}:1", "-o", str(tmp_path / "f.safetensors")]) == 2


def test_comfy_named_loras_are_recognised(sd1_keys, sdxl_keys):
    for keys, expected in ((sd1_keys, "sd1"), (sdxl_keys, "sdxl")):
        names = [k[len("model."):-len(".weight")] for k in keys if k.startswith("model.diffusion_model.")
                 and k.endswith(".weight")]
        assert lora_architecture(names) == expected
