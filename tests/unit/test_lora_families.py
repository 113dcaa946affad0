"""LoRA on the transformer families: module names (kohya, diffusers/PEFT, OneTrainer, ComfyUI) -> block,
the family of a LoRA file, SuperMerger's 61-value Flux list and the named form, merge and extraction.

LoRAs are synthetic and tiny (a few rows and columns), named after the full-size key inventories
(merge_core/architectures/keysets); expected blocks come from the independent transcription in
spec_families, expected deltas from the LoRA formula (alpha / rank) * up @ down.
"""
import re

import pytest
import spec_families as spec
import torch
from safetensors.torch import load_file, save_file
from spec_families import load_keyset

from merge_core.architectures import CHROMA, FLUX1, FLUX2, HIDREAM, LUMINA2, QWEN_IMAGE, SD1, SD3, SDXL, WAN
from merge_core.cli import main
from merge_core.errors import MergeInputError
from merge_core.lora.api import extract_lora_files
from merge_core.lora.blocks import block_values, check_spec, parse_presets
from merge_core.lora.families import lora_family
from merge_core.lora.files import read_lora
from merge_core.lora.keys import lora_arch, module_block

FAMILIES = {  # keyset: (family, transcription of its rules)
    "flux1-dev": (FLUX1, spec.flux1_block), "chroma": (CHROMA, spec.chroma_block),
    "flux2-dev": (FLUX2, spec.flux2_block), "sd35-large": (SD3, spec.sd3_block),
    "hidream-full": (HIDREAM, spec.hidream_block), "z-image": (LUMINA2, spec.lumina2_block),
    "qwen-image": (QWEN_IMAGE, spec.qwen_block), "wan21-vace-14b": (WAN, spec.wan_block),
}
PREFIX = "model.diffusion_model."


def diffusion_linears(name):
    """{key relative to the diffusion model: shape} of every 2-D weight of a full-size inventory."""
    out = {}
    for key, shape in load_keyset(name).items():
        rel = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if not key.startswith(("vae.", "text_encoders.")) and rel.endswith(".weight") and len(shape) == 2:
            out[rel] = shape
    return out


def kohya(rel):
    return "lora_unet_" + rel[:-len(".weight")].replace(".", "_")


@pytest.mark.parametrize("name", FAMILIES)
def test_kohya_names_of_every_linear_layer_give_the_family_and_the_declared_block(name):
    family, transcription = FAMILIES[name]
    rels = diffusion_linears(name)
    names = [kohya(rel) for rel in rels]
    arch = lora_family(names)
    assert arch is not None and arch.name == family.name
    if family is FLUX1:
        assert arch.n_blocks == 61  # SuperMerger's Flux LoRA list, whatever the LoRA trains
    for rel, lora_name in zip(rels, names):
        want = transcription(PREFIX + rel) if family is FLUX1 else transcription(rel)
        assert module_block(lora_name, arch) == want, lora_name
        assert module_block("diffusion_model." + rel[:-len(".weight")], arch) == want  # ComfyUI's own naming


FLUX_DIFFUSERS = {  # diffusers / PEFT (ai-toolkit, SimpleTuner) and OneTrainer names -> Flux.1 block
    "transformer.transformer_blocks.3.attn.to_q": "D03",
    "transformer.transformer_blocks.18.ff_context.net.2": "D18",
    "transformer.single_transformer_blocks.0.proj_mlp": "S00",
    "transformer.single_transformer_blocks.37.attn.to_k": "S37",
    "transformer.x_embedder": "IN", "transformer.context_embedder": "IN",
    "transformer.time_text_embed.guidance_embedder.linear_1": "IN",
    "transformer.norm_out.linear": "OUT", "transformer.proj_out": "OUT",
    "base_model.model.transformer.single_transformer_blocks.5.norm.linear": "S05",
    "lora_transformer_single_transformer_blocks_7_attn_to_v": "S07",
    "lora_transformer_transformer_blocks_2_attn_add_q_proj": "D02",
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": "CLIP",
    "lora_te3_encoder_block_0_layer_0_SelfAttention_q": "T5",
    "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q": "T5",
    "text_encoder.text_model.encoder.layers.1.mlp.fc1": "CLIP",
}


def test_diffusers_peft_and_onetrainer_flux_names():
    arch = lora_family(FLUX_DIFFUSERS)
    assert arch.name == "flux1" and arch.n_blocks == 61
    assert {n: module_block(n, arch) for n in FLUX_DIFFUSERS} == FLUX_DIFFUSERS


def test_family_of_ambiguous_and_sd_loras():
    # diffusers double blocks alone fit Flux.1, SD3 and Qwen-Image: Flux.1 first; an index past 18 is SD3's
    assert lora_family(["transformer.transformer_blocks.4.attn.to_q"]).name == "flux1"
    assert lora_family(["transformer.transformer_blocks.30.attn.to_q"]).name == "sd3"
    assert lora_family(["transformer.transformer_blocks.4.img_mlp.net.2"]).name == "flux1"  # names alone
    assert lora_family(["lora_unet_transformer_blocks_4_img_mlp_net_2", "lora_unet_txt_norm"]).name == "qwen_image"
    # SD LoRAs are not taken for a family, and keep their old detection
    assert lora_family(["lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te_text_model_x"]) is None
    assert lora_arch(["lora_unet_input_blocks_4_1_proj_in", "lora_te1_text_model_x"]) is SDXL
    assert lora_arch(["lora_unet_down_blocks_0_attentions_0_proj_in"]).name == "sd1"
    assert lora_arch(["lora_unet_double_blocks_0_img_attn_qkv", "lora_te1_text_model_x"]).name == "flux1"


# --- block weights ------------------------------------------------------------------------------------

def test_supermerger_61_value_flux_list_and_the_named_form():
    values = [i / 100 for i in range(61)]
    got = block_values(",".join(map(str, values)), 0.5, FLUX1, parse_presets())
    assert list(got) == list(FLUX1.blocks) and got["D00"] == pytest.approx(0.5 * 0.03)
    assert got["OUT"] == pytest.approx(0.5 * 0.60) and got["T5"] == pytest.approx(0.5 * 0.01)
    named = block_values("D00-D18=0.3, S37=0, OUT=2", 0.5, FLUX1, {})
    assert named["D07"] == 0.15 and named["S37"] == 0.0 and named["OUT"] == 1.0
    assert named["S00"] == named["CLIP"] == 0.5  # blocks not named keep the ratio
    flat = block_values("ALL", 0.8, FLUX1, parse_presets())
    assert set(flat.values()) == {0.8}
    ins = block_values("INS", 0.5, SD3, parse_presets())  # the 16-point curve resampled over IN, J00-J37, OUT
    assert ins["BASE"] == ins["IN"] == ins["J03"] == 0.5 and ins["J10"] == ins["J37"] == ins["OUT"] == 0.0
    assert 0.0 < ins["J06"] < ins["J05"] < 0.5
    with pytest.raises(MergeInputError, match=r"has 26 values.*Flux.1 block weights need 61 \(CLIP, T5, IN, "
                                              r"D00-D18, S00-S37, OUT\)"):
        block_values(",".join(["1"] * 26), 1.0, FLUX1, {})
    with pytest.raises(MergeInputError, match=r"unknown block id 'D19' for Flux.1.*D00-D18"):
        block_values("D19=1", 1.0, FLUX1, {})
    with pytest.raises(MergeInputError, match="has 61 block values.*give 17"):
        block_values(",".join(["1"] * 61), 1.0, SD1, {})
    presets = parse_presets("FLUXHALF:" + ",".join(["0.5"] * 61))  # 61-value presets are accepted
    assert set(block_values("FLUXHALF", 1.0, FLUX1, presets).values()) == {0.5}


def test_checks_before_the_model_is_known():
    check_spec(",".join(["1"] * 61), 1.0, {})
    check_spec("D00-D18=0.3, OUT=1", 1.0, {})
    with pytest.raises(MergeInputError, match="pair #2 'OUT' is not ID=value"):
        check_spec("D00=1, OUT", 1.0, {})
    with pytest.raises(MergeInputError, match="not a number"):
        check_spec("D00=x", 1.0, {})
    with pytest.raises(MergeInputError, match="not a known preset"):
        check_spec("NOPE", 1.0, parse_presets())


# --- merge and extraction on tiny synthetic LoRAs and models --------------------------------------------

def tiny_lora(path, names, seed, rank=2, width=6):
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for n in names:
        sd[f"{n}.lora_up.weight"] = torch.randn(width, rank, generator=gen)
        sd[f"{n}.lora_down.weight"] = torch.randn(rank, width + 1, generator=gen)
        sd[f"{n}.alpha"] = torch.tensor(float(rank))
    save_file(sd, str(path))
    return sd


def delta(sd, name):
    up, down = sd[f"{name}.lora_up.weight"].float(), sd[f"{name}.lora_down.weight"].float()
    return up @ down * (float(sd[f"{name}.alpha"]) / down.shape[0])


LORA_CASES = {  # family keyset: a block-weight spec for LoRA 1, and how it reads on that layout
    "flux1-dev": (",".join(["0"] * 3 + ["0.25"] * 19 + ["1"] * 38 + ["0"]), lambda b: 0.25 if b[0] == "D" else
                  (1.0 if b[0] == "S" else 0.0)),
    "sd35-large": ("J00-J09=0, OUT=0.5", lambda b: 0.0 if re.fullmatch(r"J0\d", b) else (0.5 if b == "OUT" else 1)),
    "qwen-image": ("T30-T59=2", lambda b: 2.0 if b.startswith("T") and int(b[1:]) >= 30 else 1.0),
}


@pytest.mark.parametrize("name", LORA_CASES)
def test_lora_merge_with_block_weights_on_families(tmp_path, name):
    """CLI lora-merge, exact at full rank: the merged delta of each module is r1 * w1(block) * d1 + r2 * d2."""
    spec_text, weight = LORA_CASES[name]
    family = FAMILIES.get(name, (SD3 if name.startswith("sd3") else None, None))[0]
    rels = list(diffusion_linears(name))[::7]
    names = [kohya(rel) for rel in rels]
    first = tiny_lora(tmp_path / "one.safetensors", names, 1)
    second = tiny_lora(tmp_path / "two.safetensors", names[::2], 2)
    out = tmp_path / "merged.safetensors"
    code = main(["lora-merge", f"{tmp_path / 'one.safetensors'}:0.8:{spec_text}, {tmp_path / 'two.safetensors'}:0.5",
                 "-o", str(out), "--rank", "4", "--dtype", "fp32"])
    assert code == 0
    merged = load_file(str(out))
    arch = read_lora(out).arch
    assert arch.name == family.name
    for n in names:
        want = 0.8 * weight(module_block(n, arch)) * delta(first, n)
        if n in names[::2]:
            want = want + 0.5 * delta(second, n)
        if f"{n}.lora_up.weight" not in merged:
            assert torch.count_nonzero(want) == 0, n
            continue
        assert torch.allclose(delta(merged, n), want, atol=1e-4), n


def tiny_checkpoint(path, name, seed, changed=()):
    """Every key of a full-size inventory at a tiny size (each dimension at most 5); keys in ``changed`` get
    a rank-2 change when seed differs."""
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn([min(d, 5) for d in s], generator=gen) for k, s in load_keyset(name).items()}
    gen = torch.Generator().manual_seed(seed)
    for k in changed:
        o, i = sd[k].shape
        sd[k] = sd[k] + torch.randn(o, 2, generator=gen) @ torch.randn(2, i, generator=gen)
    save_file(sd, str(path))
    return sd


@pytest.mark.parametrize("name", ["flux1-dev", "sd3-medium", "wan21-1.3b"])
def test_extract_from_family_checkpoints(tmp_path, name):
    """Linear layers of the diffusion model become kohya-named modules with up @ down = A - B; a Forge-style
    Flux file also gives CLIP-L modules (lora_te1_); 1-D and 5-D tensors (Wan's Conv3d) are left out."""
    keys = load_keyset(name)
    linear = [k for k, s in keys.items() if len(s) == 2 and k.endswith(".weight") and not k.startswith("vae.")]
    changed = linear[::5]
    a = tiny_checkpoint(tmp_path / "a.safetensors", name, 1, changed)
    b = tiny_checkpoint(tmp_path / "b.safetensors", name, 0)
    out, result = extract_lora_files(tmp_path / "a.safetensors", tmp_path / "b.safetensors",
                                     tmp_path / "x.safetensors", rank=2, te_min_diff=0.0, save_dtype="fp32")
    lora = load_file(str(out))
    for key in changed:
        rel = key[len(PREFIX):] if key.startswith(PREFIX) else key
        targeted = re.search(r"encoder\.layers\.\d+\.(self_attn\.\w+_proj|mlp\.fc[12])\.weight$", key)
        if key.startswith("text_encoders.clip_l.") and targeted:
            lname = "lora_te1_" + key[len("text_encoders.clip_l.transformer."):-len(".weight")].replace(".", "_")
        elif key.startswith("text_encoders."):
            continue  # T5 and CLIP's embeddings are not targeted
        else:
            lname = kohya(rel)
        assert torch.allclose(delta(lora, lname), a[key] - b[key], atol=1e-4), lname
    assert not [k for k in lora if k.endswith(".lora_down.weight") and lora[k].dim() not in (2, 4)]
    assert read_lora(out).arch.name == {"flux1-dev": "flux1", "sd3-medium": "sd3", "wan21-1.3b": "wan"}[name]


def test_extract_refuses_two_families(tmp_path):
    tiny_checkpoint(tmp_path / "flux.safetensors", "flux1-dev", 0)
    tiny_checkpoint(tmp_path / "sd3.safetensors", "sd3-medium", 0)
    with pytest.raises(MergeInputError, match=r"model_b.*SD3/SD3.5 model but model A is Flux.1"):
        extract_lora_files(tmp_path / "flux.safetensors", tmp_path / "sd3.safetensors", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_qwen_image_lora_of_few_blocks_reads_its_family_from_its_own_metadata(tmp_path):
    """A Qwen-Image model of 10 blocks names only transformer_blocks.0-9, which Flux.1 explains
    as well (its diffusers double blocks); the pack's own extraction says qwen_image in its metadata, and
    that decides (names alone decide too now: Qwen-Image's full-size model has these kohya modules, Flux.1's
    not): Qwen-Image block ids are accepted, on merge and on read."""
    keys = {k: s for k, s in load_keyset("qwen-image").items()
            if not re.search(r"transformer_blocks\.(\d+)\.", k) or int(re.search(r"blocks\.(\d+)\.", k)[1]) < 10}
    gen = torch.Generator().manual_seed(0)
    base = {k: torch.randn([min(d, 5) for d in s], generator=gen) for k, s in keys.items()}
    tuned = dict(base)
    changed = [k for k, s in keys.items() if len(s) == 2 and k.endswith(".weight")][::3]
    for k in changed:
        o, i = base[k].shape
        tuned[k] = base[k] + torch.randn(o, 2, generator=gen) @ torch.randn(2, i, generator=gen)
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    out, _ = extract_lora_files(tmp_path / "tuned.safetensors", tmp_path / "base.safetensors",
                                tmp_path / "x.safetensors", rank=2, save_dtype="fp32")
    lora = read_lora(out)
    assert lora.metadata["ss_base_model_version"] == "qwen_image"
    assert lora.arch.name == "qwen_image" and lora.arch.n_blocks == QWEN_IMAGE.n_blocks
    assert lora_family(lora.modules).name == "qwen_image"  # kohya names alone: Qwen-Image's model has the modules
    code = main(["lora-merge", f"{out}:1:T00-T59=0.5", "-o", str(tmp_path / "half.safetensors"), "--dtype", "fp32"])
    assert code == 0
    half, full = load_file(str(tmp_path / "half.safetensors")), load_file(str(out))
    name = next(n for n in lora.modules if "transformer_blocks_3_" in n)
    assert torch.allclose(delta(half, name), 0.5 * delta(full, name), atol=1e-5)
    # metadata naming a family the modules do not fit (copied from another LoRA) is not believed
    assert lora_arch(lora.modules, {"ss_base_model_version": "sd3"}).name == "qwen_image"
    assert lora_arch(lora.modules, {"modelspec.architecture": "qwen_image/lora"}).name == "qwen_image"
