"""The merge nodes on the transformer families, with tiny models built from ComfyUI's own classes
(demo/tiny_families.py) and loaded the way users load them: UNETLoader for diffusion-model files,
CheckpointLoaderSimple for a Forge-style Flux.1 checkpoint.

Expected weights come from the formula, with block ratios from the independent transcription of the
family block rules (tests/unit/spec_families.py); the CLI merges the same files and must agree at every key.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402
import spec_families as spec  # noqa: E402
import tiny_families  # noqa: E402
from test_merge_nodes import base_weights, effective  # noqa: E402

from merge_suite.merge_core import cli  # noqa: E402
from merge_suite.merge_core.io.released_names import released_namer  # noqa: E402
from merge_suite.merge_core.io.safetensors_file import SafetensorsReader  # noqa: E402
from merge_suite.nodes.errors import MergeNodeError  # noqa: E402
from merge_suite.nodes.merge import CheckpointMerge, ModelMerge  # noqa: E402
from merge_suite.nodes.adjust import AdjustModel  # noqa: E402
from merge_suite.nodes.analysis import ElementsBrowser, ModelSimilarity  # noqa: E402
from merge_suite.nodes.routes import block_elements  # noqa: E402
from merge_suite.nodes.save import SaveCheckpoint  # noqa: E402

UNET = "diffusion_model."
# family: (block of a diffusion-relative key, named block weights, {block: ratio} they set, elemental rule)
FAMILIES = {
    "flux1-dev": (spec.flux1_block, "D00-D01=0.2, S02=0.7, OUT=0.1", {"D00": .2, "D01": .2, "S02": .7, "OUT": .1},
                  "S00:linear1:0.9"),
    "flux1-schnell": (spec.flux1_block, "IN=0.9, S00-S01=0.4", {"IN": .9, "S00": .4, "S01": .4}, "D01:txt_mlp:0.6"),
    "flux2": (spec.flux2_block, "IN=0.8, D01=0.1", {"IN": .8, "D01": .1}, "S00:linear2:0"),
    "chroma": (spec.chroma_block, "ALL=0.6, D00=0.1", {"IN": .6, "D00": .1, "D01": .6, "S00": .6, "S01": .6,
                                                       "OUT": .6}, "IN:distilled:0.95"),
    "sd3": (spec.sd3_block, "J00=0.9, OUT=0.2", {"J00": .9, "OUT": .2}, "J01:context_block:0.1"),
    "hidream": (spec.hidream_block, "D00-D01=0.2, S01=0.7, OUT=0.1", {"D00": .2, "D01": .2, "S01": .7, "OUT": .1},
                "D01:ff_i.experts:0.5"),
    "z-image": (spec.lumina2_block, "NR00-CR01=0.7, L01=0.2", {"NR00": .7, "NR01": .7, "CR00": .7, "CR01": .7,
                                                              "L01": .2}, "L00:attention:0.9"),
    "qwen-image": (spec.qwen_block, "IN=1, T01=0.15", {"IN": 1.0, "T01": .15}, "T00:img_mlp:0.5"),
    "wan21": (spec.wan_block, "B00=0.35, OUT=0.85", {"B00": .35, "OUT": .85}, "B01:cross_attn:0.05"),
}
ALPHA = 0.3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Diffusion-model files (seeds 1, 2, 3) of every tiny family and two Forge-style Flux checkpoints,
    in ComfyUI's model folders."""
    tiny_families.register()
    root = tmp_path_factory.mktemp("families")
    unets, ckpts = root / "diffusion_models", root / "checkpoints"
    for family in FAMILIES:
        for seed in (1, 2, 3):
            tiny_families.save_diffusion_model(unets / f"{family}_{seed}.safetensors", family, seed)
    for seed in (1, 2):
        tiny_families.save_flux_checkpoint(ckpts / f"flux1-dev_{seed}.safetensors", "flux1-dev", seed)
    saved = {k: folder_paths.folder_names_and_paths[k] for k in ("diffusion_models", "checkpoints")}
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(unets)], folder_paths.supported_pt_extensions)
    folder_paths.folder_names_and_paths["checkpoints"] = ([str(ckpts)], folder_paths.supported_pt_extensions)
    yield root
    folder_paths.folder_names_and_paths.update(saved)


LOADED = {}


def unet(family, seed):
    """A family's model as UNETLoader loads it (cached: merges never modify their inputs)."""
    if (family, seed) not in LOADED:
        LOADED[family, seed] = comfy_nodes.UNETLoader().load_unet(f"{family}_{seed}.safetensors", "default")[0]
    return LOADED[family, seed]


def read(path):
    with SafetensorsReader(str(path)) as r:
        return {k: r.get(k).clone() for k in r.keys()}


def as_released(weights):
    """A MODEL's weights under the released files' names (ComfyUI 0.33 loads RMSNorm .scale as .weight)."""
    namer = released_namer(weights) or (lambda k: k)
    return {namer(k): v for k, v in weights.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_loader_loads_each_tiny_family(family, folders):
    model = unet(family, 1)
    stored = read(folders / "diffusion_models" / f"{family}_1.safetensors")
    loaded = as_released(base_weights(model, UNET))
    assert set(loaded) == {UNET + k for k in stored}
    assert all(torch.equal(loaded[UNET + k].float(), t.float()) for k, t in stored.items())
    assert type(model.model.model_config).__name__.startswith(("Tiny", "SD3"))


def test_tiny_hidream_runs_its_moe_feed_forward(folders):
    """The tiny HiDream is a working model, not only a key set: one forward pass through every block, the
    mixture-of-experts feed-forward included (it is not sampled: its text encoders, Llama 3.1 8B among them,
    have no tiny build here)."""
    model = unet("hidream", 1).model.diffusion_model
    assert len(model.double_stream_blocks[0].block.ff_i.experts) == 4
    gen = torch.Generator().manual_seed(0)
    width = tiny_families.TEXT_WIDTH
    with torch.no_grad():
        out = model(torch.randn(1, 16, 8, 8, generator=gen), torch.tensor([0.5]), torch.randn(1, width, generator=gen),
                    torch.randn(1, 4, width, generator=gen), torch.randn(1, 2, 4, width, generator=gen))
    assert out.shape == (1, 16, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_models_gives_the_formula_with_named_block_weights(family, folders):
    block_of, named, ratios, _ = FAMILIES[family]
    a, b = unet(family, 1), unet(family, 2)
    before = base_weights(a, UNET)
    merged, report, recipe = ModelMerge.execute(model_a=a, model_b=b, mode="Weight sum", alpha=ALPHA, beta=0.0,
                                                blocks_alpha=named).result
    got, wb = effective(merged, UNET), base_weights(b, UNET)
    assert set(got) == set(before)
    for key, w in got.items():
        block = block_of(key[len(UNET):])
        assert block != spec.KEEP, f"{key}: every key of the tiny {family} belongs to a block"
        r = ratios.get(block, ALPHA)
        torch.testing.assert_close(w, before[key].float() * (1 - r) + wb[key].float() * r, rtol=1e-5, atol=1e-6,
                                   msg=key)
    assert "not used" not in report and f"alpha={ALPHA}" in recipe  # the scalar fills the unnamed blocks
    after = base_weights(a, UNET)
    assert all(torch.equal(after[k], before[k]) for k in before), "model A untouched"


def cli_merge(folders, family, case, out):
    files = [str(folders / "diffusion_models" / f"{family}_{s}.safetensors") for s in (1, 2, 3)]
    _, named, _, elemental = FAMILIES[family]
    if case == "add difference":
        argv = ["merge", *files, "--mode", "add_difference", "--alpha", "0.6"]
    else:
        argv = ["merge", *files[:2], "--alpha", str(ALPHA), "--blocks", named, "--elemental", elemental]
    assert cli.main(argv + ["--dtype", "fp32", "-o", str(out), "-q"]) == 0
    return read(out)


@pytest.mark.parametrize("case", ["blocks+elemental", "add difference"])
@pytest.mark.parametrize("family", FAMILIES)
def test_node_and_cli_agree_on_every_key(family, case, folders):
    _, named, _, elemental = FAMILIES[family]
    by_cli = cli_merge(folders, family, case, folders / f"cli_{family}_{case.replace(' ', '_')}.safetensors")
    a, b, c = (unet(family, s) for s in (1, 2, 3))
    if case == "add difference":
        params = dict(mode="Add difference", alpha=0.6, model_c=c)
    else:
        params = dict(mode="Weight sum", alpha=ALPHA, blocks_alpha=named, options={"elemental": elemental})
    merged = ModelMerge.execute(model_a=a, model_b=b, beta=0.0, **params).result[0]
    by_node = {k[len(UNET):]: v for k, v in as_released(effective(merged, UNET)).items()}
    wa = {k[len(UNET):]: v for k, v in as_released(base_weights(a, UNET)).items()}
    assert set(by_node) == set(by_cli), "the CLI writes a diffusion-model file for diffusion-model inputs"
    problems = [k for k, x in by_cli.items() if torch.equal(x, wa[k]) != torch.equal(by_node[k], wa[k])
                or not torch.allclose(x.double(), by_node[k].double(), rtol=1e-5, atol=1e-6)]
    assert not problems, f"{len(problems)} keys differ, e.g. {problems[:5]}"


LABELS = {"flux1-dev": "Flux.1", "flux1-schnell": "Flux.1", "flux2": "Flux.2", "chroma": "Chroma", "sd3": "SD3/SD3.5",
          "hidream": "HiDream", "z-image": "Z-Image/Lumina 2", "qwen-image": "Qwen-Image", "wan21": "Wan 2.1/2.2"}


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_command_prints_each_family_layout(family, folders, capsys):
    """`python -m merge_core blocks FILE`: the family, and every block the transcription gives a key, with
    its key count, in the layout sized by the file (2 double and 2 single blocks on the tiny HiDream)."""
    path = folders / "diffusion_models" / f"{family}_1.safetensors"
    assert cli.main(["blocks", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{LABELS[family]} (") and "diffusion-model-only file" in out
    rows = [row.split() for row in out.split("-----  ----")[1].splitlines()[1:]]
    listed = {row[1]: int(row[2]) for row in rows if row and row[0].isdigit() and int(row[2])}
    block_of = FAMILIES[family][0]
    want = {}
    for key in read(path):
        want[block_of(key)] = want.get(block_of(key), 0) + 1
    assert listed == want
    if family == "hidream":
        assert "layout: BASE, IN, D00-D01, S00-S01, OUT" in out


def test_flux_dev_with_schnell_keeps_guidance_in_and_reports_it(folders):
    dev, schnell = unet("flux1-dev", 1), unet("flux1-schnell", 2)
    merged, report, _ = ModelMerge.execute(model_a=dev, model_b=schnell, mode="Weight sum", alpha=0.5,
                                           beta=0.0).result
    got, wa = effective(merged, UNET), base_weights(dev, UNET)
    guidance = [k for k in wa if ".guidance_in." in k]
    assert len(guidance) == 4 and all(torch.equal(got[k], wa[k].float()) for k in guidance)
    assert "4 kept from A" in report and "absent from B" in report
    assert all(k in report for k in guidance)


@pytest.mark.parametrize("other,label", [("sd3", "SD3/SD3.5"), ("chroma", "Chroma"), ("hidream", "HiDream")])
def test_two_families_error_names_both(other, label, folders):
    with pytest.raises(MergeNodeError, match=rf"Merge Models: input 'model_b': is an? {label} model but model A "
                                             r"is Flux\.1: two different families"):
        ModelMerge.execute(model_a=unet("flux1-dev", 1), model_b=unet(other, 1), mode="Weight sum", alpha=0.5,
                           beta=0.0)


def sample(model, clip, vae, seed=5):
    pos = comfy_nodes.CLIPTextEncode().encode(clip, "a photo of a cat")[0]
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    out = comfy_nodes.KSampler().sample(model, seed, 3, 1.0, "euler", "simple", pos, pos, latent)[0]
    return out["samples"], comfy_nodes.VAEDecode().decode(vae, out)[0]


def test_flux_checkpoint_merge_samples_through_ksampler_and_leaves_a_intact(folders):
    load = comfy_nodes.CheckpointLoaderSimple().load_checkpoint
    (ma, ca, vae), (mb, cb, _) = (load(f"flux1-dev_{s}.safetensors")[:3] for s in (1, 2))
    assert type(ma.model.model_config).__name__ == "TinyFlux"
    before = base_weights(ma, UNET)
    lat_a, _ = sample(ma, ca, vae)
    model, clip, report, _ = CheckpointMerge.execute(model_a=ma, clip_a=ca, model_b=mb, clip_b=cb, mode="Weight sum",
                                                     alpha=0.5, beta=0.0, blocks_alpha="D00-D01=0.9").result
    assert report.startswith("Flux.1")
    lat_m, image = sample(model, clip, vae)
    assert torch.isfinite(lat_m).all() and torch.isfinite(image).all() and image.shape == (1, 32, 32, 3)
    assert not torch.allclose(lat_m, lat_a), "the merge changed the sample"
    lat_a2, _ = sample(ma, ca, vae)
    torch.testing.assert_close(lat_a2, lat_a)
    after = base_weights(ma, UNET)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_flux_clip_merge_uses_the_clip_and_t5_slots(folders):
    """A Flux CLIP (CLIP-L + T5, no diffusion keys) is Flux.1, not SD1: CLIP-L takes the CLIP slot, T5 the T5
    slot; in Merge Checkpoints a positional list sized to the (tiny) model serves the text encoders too."""
    load = comfy_nodes.CheckpointLoaderSimple().load_checkpoint
    (ma, ca, _), (mb, cb, _) = (load(f"flux1-dev_{s}.safetensors")[:3] for s in (1, 2))
    values = [0.1, 0.8] + [0.5] * 6  # CLIP, T5, IN, D00, D01, S00, S01, S02, OUT
    values.append(0.5)
    _, clip, report, _ = CheckpointMerge.execute(model_a=ma, clip_a=ca, model_b=mb, clip_b=cb, mode="Weight sum",
                                                 alpha=0.5, beta=0.0, blocks_alpha=",".join(map(str, values))).result
    assert "text encoder:\nFlux.1" in report
    got, wa, wb = effective(clip.patcher), base_weights(ca.patcher), base_weights(cb.patcher)
    checked = {"clip_l.": 0, "t5xxl.": 0}
    for key, w in got.items():
        if not w.is_floating_point() or "position_ids" in key:
            continue
        prefix, r = ("clip_l.", 0.1) if key.startswith("clip_l.") else ("t5xxl.", 0.8)
        if torch.equal(wa[key], wb[key]):
            continue
        torch.testing.assert_close(w, wa[key].float() * (1 - r) + wb[key].float() * r, rtol=1e-5, atol=1e-6,
                                   msg=key)
        checked[prefix] += 1
    assert min(checked.values()) > 5, checked


def saved(path, folders):
    with SafetensorsReader(str(path)) as r:
        return {k: r.get(k).clone() for k in r.keys()}, dict(r.metadata or {})


@pytest.mark.parametrize("family", FAMILIES)
def test_save_diffusion_model_only_reloads_through_unet_loader(family, folders):
    """Without CLIP and VAE, Save Checkpoint writes what ComfyUI's ModelSave writes (model.diffusion_model.
    keys) into the diffusion_models folder, and Load Diffusion Model gives the merged weights back."""
    merged = ModelMerge.execute(model_a=unet(family, 1), model_b=unet(family, 2), mode="Weight sum", alpha=0.4,
                                beta=0.0, blocks_alpha=FAMILIES[family][1]).result[0]
    path = Path(SaveCheckpoint.execute(merged, filename_prefix=f"saved/{family}", precision="fp32",
                                       hash_inputs=False).result[0])
    assert path.parent.parent == folders / "diffusion_models"
    tensors, meta = saved(path, folders)
    assert all(k.startswith("model.diffusion_model.") for k in tensors)
    assert "sd_merge_recipe" in meta
    if family == "sd3":
        assert meta["modelspec.architecture"] == "stable-diffusion-v3-medium"
    reloaded = comfy_nodes.UNETLoader().load_unet(f"saved/{path.name}", "default")[0]
    want = effective(merged, UNET)
    got = base_weights(reloaded, UNET)
    assert set(got) == set(want) and all(torch.equal(got[k].float(), want[k]) for k in want)


def test_save_flux_checkpoint_is_forge_style_and_reloads(folders):
    load = comfy_nodes.CheckpointLoaderSimple().load_checkpoint
    (ma, ca, vae), (mb, cb, _) = (load(f"flux1-dev_{s}.safetensors")[:3] for s in (1, 2))
    model, clip, _, _ = CheckpointMerge.execute(model_a=ma, clip_a=ca, model_b=mb, clip_b=cb, mode="Weight sum",
                                                alpha=0.3, beta=0.0, blocks_alpha="D00=1").result
    path = Path(SaveCheckpoint.execute(model, clip, vae, filename_prefix="saved/flux", precision="fp32",
                                       hash_inputs=False).result[0])
    assert path.parent.parent == folders / "checkpoints"
    tensors, _ = saved(path, folders)
    assert {k.split(".")[0] if not k.startswith("text_encoders.") else ".".join(k.split(".")[:2])
            for k in tensors} == {"model", "text_encoders.clip_l", "text_encoders.t5xxl", "vae"}
    m2, c2, _ = load(f"saved/{path.name}")[:3]
    assert type(m2.model.model_config).__name__ == "TinyFlux"
    in_file = {k[len("text_encoders."):]: v for k, v in tensors.items() if k.startswith("text_encoders.")}
    for got, want in ((base_weights(m2, UNET), effective(model, UNET)), (in_file, effective(clip.patcher))):
        floats = [k for k in want if want[k].is_floating_point()]
        bad = [(k, got[k].dtype, (got[k].float() - want[k]).abs().max().item()) for k in floats
               if not torch.equal(got[k].float(), want[k])]
        assert floats and not bad, bad[:5]
    reloaded_clip, want = base_weights(c2.patcher), effective(clip.patcher)  # ComfyUI loads it in fp16 on a CPU
    assert all(torch.allclose(reloaded_clip[k].float(), want[k], atol=1e-3)
               for k in want if want[k].is_floating_point())


def test_save_contents_choice_and_sampling_markers(folders, tiny):
    """'diffusion model only' leaves a connected CLIP out; a v-prediction model keeps its v_pred marker and
    modelspec.predict_key as ComfyUI's ModelSave writes them."""
    import tiny_models
    tiny_models.register()
    model, clip = tiny("model", "sd2", 1), tiny("clip", "sd2", 1)
    path = SaveCheckpoint.execute(model, clip, None, filename_prefix="saved/sd2", precision="fp16",
                                  hash_inputs=False, contents="diffusion model only").result[0]
    tensors, meta = saved(path, folders)
    assert "v_pred" in tensors and meta["modelspec.predict_key"] == "v"
    assert not any(k.startswith("cond_stage_model.") for k in tensors)
    reloaded = comfy_nodes.UNETLoader().load_unet(f"saved/{Path(path).name}", "default")[0]
    assert reloaded.model.model_type.name == "V_PREDICTION"
    with pytest.raises(MergeNodeError, match="input 'contents': unknown choice"):
        SaveCheckpoint.execute(model, filename_prefix="saved/x", contents="everything")


def test_adjust_says_it_is_not_available_on_a_transformer_family(folders):
    model = unet("flux1-dev", 1)
    with pytest.raises(MergeNodeError, match=r"Adjust Model .*input 'model': Adjust is not available for Flux\.1"):
        AdjustModel.execute(model, CONT=2.0)
    assert AdjustModel.execute(model).result[0] is not model  # all zero: an unchanged clone, no error
    with pytest.raises(MergeNodeError, match=r"Merge Models: input 'adjust': Adjust is not available for Wan"):
        ModelMerge.execute(model_a=unet("wan21", 1), model_b=unet("wan21", 2), mode="Weight sum", alpha=0.5,
                           beta=0.0, options={"adjust": "0,0,0,1,0,0,0,0"})


@pytest.mark.parametrize("family,sites", [("flux1-dev", 4), ("sd3", 4), ("z-image", 6), ("qwen-image", 2),
                                          ("wan21", 2)])
def test_similarity_per_block_and_asimilarity_on_families(family, sites, folders):
    a, b = unet(family, 1), unet(family, 2)
    report = ModelSimilarity.execute(a, b).result[0]
    blocks = [line.split()[0] for line in report.splitlines()[2:] if line.strip()]
    assert blocks[0] == "IN" and blocks[-1] == "OUT" and len(blocks) >= 4
    same = ModelSimilarity.execute(a, a).result[0]
    assert all(float(line.split()[1]) == pytest.approx(100.0) for line in same.splitlines()[2:] if line.strip())
    table = ModelSimilarity.execute(a, b, method="asimilarity").result[0]
    rows = table.splitlines()[2:]
    assert len(rows) == sites and all(abs(float(r.split()[-1])) < 100 for r in rows)
    assert all(float(r.split()[-1]) == pytest.approx(100.0) for r in
               ModelSimilarity.execute(a, a, method="asimilarity").result[0].splitlines()[2:])


def test_elements_browser_and_route_list_family_elements(folders):
    table = ElementsBrowser.execute(block="D01", match="img_attn", model=unet("flux1-dev", 1)).result[0]
    rows = table.splitlines()[2:]
    assert rows and all(r.split()[0] == "D01" and "img_attn" in r for r in rows)
    for layout, block, element in (("flux1", "S37", "linear1"), ("sd3", "J00", "x_block.attn.qkv"),
                                   ("wan", "B39", "self_attn.q"), ("qwen_image", "OUT", "proj_out"),
                                   ("lumina2", "NR01", "attention.qkv")):
        answer = block_elements(layout, block)
        assert answer["ok"] and element in answer["elements"], (layout, answer)
