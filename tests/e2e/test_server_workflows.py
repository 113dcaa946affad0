"""End to end through the real ComfyUI server: every example workflow via /prompt."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "demo"))
from server import ComfyServer, comfy_path as server_comfy_path  # noqa: E402
from workflow_api import to_prompt  # noqa: E402

WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    srv = ComfyServer(base)
    subprocess.run([sys.executable, str(REPO / "demo" / "make_checkpoints.py"),
                    str(base / "models" / "checkpoints")], check=True, stdout=subprocess.DEVNULL)
    srv.start()
    yield srv
    srv.stop()


def test_pack_nodes_are_registered_with_tooltips(server):
    info = server.get("/object_info")
    for node_id in ("MergeSuite_ModelMerge", "MergeSuite_CLIPMerge", "MergeSuite_CheckpointMerge"):
        assert node_id in info, f"{node_id} not registered; server log:\n{server.log_tail()}"
        inputs = info[node_id]["input"]["required"]
        assert "alpha" in inputs and "weight of model b" in inputs["alpha"][1]["tooltip"].lower()
        assert info[node_id]["category"] == "merge_suite"
    for node_id in ("MergeSuite_ModelSimilarity", "MergeSuite_Elements"):
        assert info[node_id]["category"] == "merge_suite/analysis"
    docs = {p.stem for p in (REPO / "web" / "docs").glob("*.md")}
    assert {k for k in info if k.startswith("MergeSuite_")} <= docs, "every node has a help page"
    templates = server.get("/api/workflow_templates")
    assert sorted(templates.get("merge_suite", [])) == sorted(p.stem for p in WORKFLOWS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs(path, server):
    workflow = json.loads(path.read_text())
    if path.stem == "demo_style_blend":  # 21 samples: at the other examples' 4 steps, not the model card's
        next(n for n in workflow["nodes"] if n["type"] == "KSampler")["widgets_values"][2] = 4
    entry = server.run_prompt(to_prompt(workflow, server.get("/object_info")))
    images = server.output_images(entry)
    saves = [n for n in workflow["nodes"] if n["type"] == "SaveImage"]
    expected = workflow.get("extra", {}).get("merge_suite", {}).get("images", len(saves))  # list outputs
    assert len(images) == expected >= len(saves) >= 1
    latents = [n["widgets_values"][:2] for n in workflow["nodes"] if n["type"].startswith("Empty")]
    for image in images:
        with Image.open(image) as im:
            if "grid" not in image.name:  # sweep grids are checked in check_sweep_outputs
                assert im.size == (tuple(latents[0]) if latents else (1024, 512))  # samples, or analysis charts
            assert len(set(im.convert("L").tobytes())) > 1, "a blank image means NaNs or a dead model"
    texts = [t for out in entry["outputs"].values() for t in out.get("text", [])]
    if path.stem == "merge_add_difference":  # the applied-ratio report of the merge node
        assert any("by elemental" in t and "OUT04" in t for t in texts), texts
    if path.stem == "combine_ties_three_fine_tunes":  # Combine Models' report and recipe
        assert any("TIES of 3 models over the base (density 0.3)" in t for t in texts), texts
        assert any(t.startswith("ties(tiny_sd1_a, tiny_sd1_b, tiny_sd1_c, tiny_sd1_merged)") for t in texts), texts
    if any(n["type"] == "MergeSuite_ModelSimilarity" for n in workflow["nodes"]):
        last = "OUT" if path.stem.startswith("family_") else "OUT11"  # a transformer family's last block
        assert any("similarity %" in t and re.search(rf"^{last}\s", t, re.M) for t in texts), texts
    check_sweep_outputs(path.stem, workflow, entry, images, texts, server)
    check_family_outputs(path.stem, texts, server)
    check_file_merge_outputs(path.stem, texts, server)
    check_history_outputs(path.stem, images, texts)
    assert "invalid value encountered" not in server.log_tail(200)


def check_family_outputs(stem, texts, server):
    """The family examples: Flux's report names its blocks, the SD3 merge is saved as a diffusion-model file."""
    if stem == "family_flux_named_blocks":
        assert any(t.startswith("Flux.1") and "D01" in t and "S02" in t for t in texts), texts
        assert any("text encoder:\nFlux.1" in t for t in texts), "the Flux CLIP merges as Flux (CLIP and T5 slots)"
    if stem == "family_sd3_unet_merge_save":
        saved = [Path(t) for t in texts if t.endswith(".safetensors")]
        assert saved and saved[0].parent.parent.name in ("unet", "diffusion_models")  # the diffusion_models kind
    if stem == "family_zimage_qwen_wan_unet":
        assert len({t for t in texts if "similarity %" in t}) == 3  # shown by the node and by Preview Any


def host_reads_comfy_quant(server) -> bool:
    """Whether the server's ComfyUI converts old scaled-fp8 files to per-layer comfy_quant entries (0.33 on),
    read from its source: this test process does not import ComfyUI."""
    return "def convert_old_quants" in (server_comfy_path() / "comfy" / "utils.py").read_text()


def check_file_merge_outputs(stem, texts, server):
    """The file-merge example wrote a scaled-fp8 diffusion-model file into diffusion_models, with the recipe
    (the three inputs, Add difference) and the content key in its metadata, and no temporary file."""
    if stem != "file_merge_flux_add_difference_scaled_fp8":
        return
    names = [t for t in texts if t.endswith(".safetensors")]
    assert len(names) == 1 and names[0].startswith("merge_suite/flux_file_merge_"), texts
    folder = next(f for f in (server.base / "models" / d for d in ("unet", "diffusion_models"))  # ComfyUI's two
                  if (f / names[0]).is_file())  # names of the diffusion_models folder
    data = (folder / names[0]).read_bytes()
    head = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    meta = head.pop("__metadata__")
    qkv = "double_blocks.0.img_attn.qkv."
    if host_reads_comfy_quant(server):  # scaled fp8 in the layout the server's ComfyUI loads (0.33: per layer)
        assert "scaled_fp8" not in head and not any(k.endswith("scale_weight") for k in head), head
        assert [head[k]["dtype"] for k in (qkv + "weight", qkv + "weight_scale", qkv + "comfy_quant", qkv + "bias")
                ] == ["F8_E4M3", "F32", "U8", "BF16"], head
    else:  # ComfyUI 0.3.75: the scaled_fp8 marker and a scale_weight per layer
        assert [head[k]["dtype"] for k in ("scaled_fp8", qkv + "weight", qkv + "scale_weight", qkv + "bias")] == \
            ["F8_E4M3", "F8_E4M3", "F32", "BF16"], head
    recipe = json.loads(meta["merge_suite_recipe"])
    assert recipe["mode"] == "Add difference" and recipe["architecture"] == "flux1", recipe
    assert recipe["models"] == {t.upper(): f"tiny_flux1-dev_{t}.safetensors" for t in "abc"}, recipe
    assert "merge_suite_content_key" in meta and "sd_merge_recipe" in meta
    assert [p.name for p in folder.rglob("*") if p.name.endswith(".part") or p.name.startswith(".")] == []


def check_history_outputs(stem, images, texts):
    """Merge from History re-created the merge its graph had just made and recorded: the sample of the merge
    and the sample of its re-creation (same seed and prompt) are the same pixels."""
    if stem != "merge_from_history":
        return
    assert len(images) == 2
    pixels = []
    for image in images:
        with Image.open(image) as im:
            pixels.append(im.tobytes())
    assert pixels[0] == pixels[1], "the re-created merge samples differently"
    assert any("Weight sum(tiny_sd1_a, tiny_sd1_b) blocks_alpha=GRAD_A" in t for t in texts), texts


def check_sweep_outputs(stem, workflow, entry, images, texts, server):
    """Sweeps: one grid with the right labels; a seed sweep merges once; a save writes the recipe."""
    cells = sorted(p for p in images if "grid" not in p.name)
    if stem == "sweep_alpha_x_beta_blocks":
        assert len(cells) == 6 and len({p.read_bytes() for p in cells}) == 6, "six different merges"
        layout = next(t for t in texts if t.startswith("grid"))
        assert layout.splitlines() == ["grid: 2 rows x 3 cols", "X: alpha=0.2 | alpha=0.5 | alpha=0.8",
                                       "Y: blocks_beta=GRAD_V | blocks_beta=GRAD_A"]
    if stem == "sweep_seeds_one_merge":
        merge_id = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "MergeSuite_ModelMerge")
        assert len(entry["outputs"][merge_id]["text"]) == 2, "one merge (report + recipe), not one per seed"
        assert len(cells) == 3 and len({p.read_bytes() for p in cells}) == 3
    if stem == "save_merged_checkpoint_fp16":
        check_saved_checkpoint(texts, server)
    if stem in ("merge_paired_lists", "merge_model_list_pinpoint_elements"):  # two different merges per run
        assert len(images) == 2 and len({p.read_bytes() for p in images}) == 2
    if stem == "merge_paired_lists":
        assert any("calcmode normal" in t for t in texts) and any("calcmode cosineA" in t for t in texts), texts
    if stem == "load_recipe":  # the inputs were found among the checkpoints and merged again
        assert any("Weight sum(tiny_sd1_a, tiny_sd1_b) blocks_alpha=" in t for t in texts), texts  # alpha overridden
    if stem == "demo_style_blend":
        check_demo_grid(workflow, images, texts)
    if stem.startswith("sweep"):
        grids = [p for p in images if "grid" in p.name]
        assert len(grids) == 1
        with Image.open(grids[0]) as im:
            assert im.width > 64 * 3 and im.height > 64


def check_demo_grid(workflow, images, texts):
    """The demo: seven merges (columns) x the prompts (rows), every cell a different image, in one grid."""
    prompts = [n["widgets_values"][0] for n in workflow["nodes"] if n.get("title") == "Prompt"]
    cells = [p for p in images if "grid" not in p.name]
    assert len(prompts) >= 2 and len(cells) == 7 * len(prompts)
    assert len({p.read_bytes() for p in cells}) == len(cells), "every merge and prompt samples differently"
    layout = next(t for t in texts if t.startswith("grid"))
    assert layout.splitlines() == [f"grid: {len(prompts)} rows x 7 cols",
                                   "X: " + " | ".join([f"alpha={a}" for a in (0, 0.25, 0.5, 0.75, 1)]
                                                      + ["A + (B - base)", "IN A | OUT B"]),
                                   "Y: " + " | ".join(prompts)]
    grids = [p for p in images if "grid" in p.name]
    assert len(grids) == 1
    side = Image.open(cells[0]).width
    with Image.open(grids[0]) as im:  # row labels, then seven columns of at least a cell's width
        assert im.width == 180 + 7 * max(side, 120) and im.height > len(prompts) * side


def check_saved_checkpoint(texts, server):
    """The save example wrote an fp16 file into the checkpoints folder, with SuperMerger's recipe metadata."""
    import hashlib
    saved = [t for t in texts if t.endswith(".safetensors")]
    assert len(saved) == 1 and Path(saved[0]).parent.name == "merge_suite"
    header = Path(saved[0]).read_bytes()
    head = json.loads(header[8:8 + int.from_bytes(header[:8], "little")])
    meta = head.pop("__metadata__")
    assert {v["dtype"] for k, v in head.items() if k.startswith("model.diffusion_model.")} == {"F16"}
    recipe = json.loads(meta["sd_merge_recipe"])
    a = server.base / "models" / "checkpoints" / "tiny_sd1_a.safetensors"
    assert recipe["model_a"] == hashlib.sha256(a.read_bytes()).hexdigest() and recipe["mbw"] is True
    assert "Weight sum(tiny_sd1_a, tiny_sd1_b)" in recipe["merge_suite"]["text"] and "prompt" in meta


def test_bad_block_weights_fail_with_a_clear_message(server):
    workflow = json.loads((REPO / "example_workflows" / "merge_checkpoints_block_weights.json").read_text())
    prompt = to_prompt(workflow, server.get("/object_info"))
    merge_id = next(k for k, v in prompt.items() if v["class_type"] == "MergeSuite_CheckpointMerge")
    prompt[merge_id]["inputs"]["blocks_alpha_preset"] = "custom"
    prompt[merge_id]["inputs"]["blocks_alpha"] = "0.5,0.5,0.5"
    with pytest.raises(RuntimeError) as info:
        server.run_prompt(prompt)
    message = str(info.value)
    assert "Merge Checkpoints: input 'blocks_alpha': has 3 values" in message
    assert "Fix:" in message


@pytest.mark.parametrize("example,node_type,name,value", [
    ("merge_checkpoints_block_weights", "MergeSuite_CheckpointMerge", "alpha", float("nan")),
    ("merge_checkpoints_block_weights", "MergeSuite_CheckpointMerge", "beta", float("inf")),
    ("calc_extract_features", "MergeSuite_OptionCalcMode", "gamma", float("-inf")),
])
def test_non_finite_numbers_are_refused_before_the_run(example, node_type, name, value, server):
    """validate_inputs of the merge and option nodes runs on ComfyUI's locked copies of the node classes."""
    workflow = json.loads((REPO / "example_workflows" / f"{example}.json").read_text())
    prompt = to_prompt(workflow, server.get("/object_info"))
    node_id = next(k for k, v in prompt.items() if v["class_type"] == node_type)
    prompt[node_id]["inputs"][name] = value
    with pytest.raises(RuntimeError) as info:
        server.run_prompt(prompt)
    message = str(info.value)
    assert "refused" in message and f"input '{name}'" in message and "finite" in message, message
