"""LoRA nodes: apply with block weights (ComfyUI's own loaders and adapters), bake, merge, extract.

Applying reuses ComfyUI's key maps and weight adapters (LoRA, LoCon, LoHa, LoKr,
DoRA...): each patch is added with strength = ratio x the block value of the
model key it patches, so the result equals LoraLoader at all-1 block weights.
The file-producing nodes call merge_core.lora (operations, then files.save_lora) and save into ComfyUI's
``loras`` folder under a new numbered name (never overwriting).
"""
from __future__ import annotations

import logging
from collections import defaultdict

from comfy_api.latest import io

from ..merge_core.errors import MergeInputError, require_ratio
from ..merge_core.io.output_file import check_prefix, next_numbered
from ..merge_core.io.safetensors_file import SafetensorsReader
from ..merge_core.lora.blocks import block_values, check_spec, parse_lora_list, parse_presets
from ..merge_core.lora.families import explained_by, fits_model
from ..merge_core.lora.files import SAVE_DTYPES, module_names, next_free_path, read_lora, save_lora
from ..merge_core.lora.keys import lora_arch
from ..merge_core.lora.linalg import SVD_METHODS
from ..merge_core.lora.metadata import METADATA_MODES, extraction_metadata, merged_metadata
from ..merge_core.lora.operations import LoraResult, extract_from_loras, extract_from_models, merge_loras
from .comfy_models import (architecture_of, base_layout, effective_weight, key_patches, patch_lists, shapes_of,
                           value_dtype)
from .errors import named_errors
from .history_log import record_lora
from .search import search_fields
from .shared import LORA_CATEGORY, progress_bar
from .validation import settings_problems

NONE = "None"
log = logging.getLogger("merge_suite")

BLOCKS_TIP = ("Block weights of this LoRA: empty = 1 everywhere; a preset name (ALL, NONE, INS, IND, INALL, MIDD, "
              "OUTD, OUTS, OUTALL, ALL0.5, or one from lbw_presets); or 17 (SD1 LoRA: BASE,IN01,IN02,IN04,IN05,"
              "IN07,IN08,MID,OUT03-OUT11), 26 (SD1 LoCon: BASE,IN00-IN11,MID,OUT00-OUT11), 12 (SDXL LoRA: BASE,"
              "IN04,IN05,IN07,IN08,MID,OUT00-OUT05) or 20 (SDXL LoCon: BASE,IN00-IN08,MID,OUT00-OUT08) values "
              "(unnamed blocks get 0). Flux and the other transformer families: one value per block of the model's "
              "layout (Flux.1: SuperMerger's 61, CLIP,T5,IN,D00-D18,S00-S37,OUT); presets are resampled over it. "
              "Any family: named values such as 'D00-D18=0.5, OUT=0' (blocks not named keep 1). "
              "BASE (Flux.1: CLIP, T5) is the text encoder. Values multiply the strength.")
LIST_TIP = ("LoRAs as 'name:ratio' or 'name:ratio:blocks' (blocks as in block_weights; inline values may "
            "contain commas), separated by commas or new lines, e.g. 'style.safetensors:0.8:INS, "
            "detail:0.5'. Names are files in the loras folder (.safetensors may be left out).")
PRESETS_TIP = "Extra block-weight presets, one 'NAME:values' per line (12, 17, 20 or 26 values)."
PREFIX_TIP = ("File name in the loras folder; a counter is added (_00001_) so no file is ever overwritten. "
              "Sub-folders are allowed, e.g. merged/my_lora.")
DTYPE_TIP = "Precision of the saved tensors (alpha is always fp32)."
CLAMP_TIP = ("Clip both factors to +-this quantile of their values (kohya and ComfyUI's LoraSave use 0.99). "
             "0 = off (default): clamping adds error.")
SVD_TIP = ("full: exact truncated SVD. randomized: torch.svd_lowrank (4 power iterations), many times faster "
           "on large layers; the report states the reconstruction error either way.")


def check_lora_list(text: str, lbw_presets: str, input_name: str = "lora_list") -> None:
    """Ratios and inline block values of a LoRA list, without reading any file (validate_inputs)."""
    presets = parse_presets(lbw_presets)
    for item in parse_lora_list(text, input_name):
        check_spec(item.blocks, item.ratio, presets, input_name, item.name)


def lora_path(name: str, input_name: str) -> str:
    import folder_paths
    for candidate in (name, name + ".safetensors"):
        path = folder_paths.get_full_path("loras", candidate)
        if path:
            return path
    raise MergeInputError(input_name, f"LoRA '{name}' is not in the loras folder.",
                          "check the name (see the LoRA loader's list), or put the file into models/loras.")


def lora_prefix(prefix: str, default: str) -> str:
    """The prefix, checked before any work and before any folder is made (NUL, backslash on POSIX, name
    lengths: output_file's check_prefix; inside the loras folder: next_free_path); empty means the node's
    default."""
    import folder_paths
    checked = check_prefix(prefix if (prefix or "").strip() else default, "loras")
    next_free_path(folder_paths.get_folder_paths("loras")[0], checked, create=False)
    return checked


def _save(result: LoraResult, prefix: str, metadata: dict, save_dtype: str) -> str:
    """Save into the loras folder; returns the name a LoRA loader lists (the file's real relative path, with
    '/' separators: on POSIX a backslash cannot reach here, see check_prefix). The sub-folder is made by the
    writer, which removes it again if the save fails."""
    import folder_paths
    folder = folder_paths.get_folder_paths("loras")[0]
    path = next_free_path(folder, lora_prefix(prefix, "merge_suite/lora"), create=False)
    metadata = dict(metadata)
    metadata.setdefault("ss_output_name", path.stem)
    path = save_lora(result, path, metadata, save_dtype, input_name="filename_prefix", renumber=next_numbered)
    return path.relative_to(folder).as_posix()


def _file_outputs(name: str, result: LoraResult) -> io.NodeOutput:
    report = "\n".join([f"saved loras/{name}"] + result.report)
    return io.NodeOutput(name, f"{name}:1", report, ui={"text": [report]})


FILE_OUTPUTS = [io.String.Output(display_name="lora_name"),
                io.String.Output(display_name="lora_list",
                                 tooltip="'<lora_name>:1', ready for the lora_list input of Apply LoRA."),
                io.String.Output(display_name="report")]


class LoraApply(io.ComfyNode):
    DISPLAY = "Apply LoRA with Block Weights"

    @classmethod
    def define_schema(cls):
        import folder_paths
        return io.Schema(
            node_id="MergeSuite_LoraApply", display_name=cls.DISPLAY, category=LORA_CATEGORY,
            description="Applies one or more LoRAs (LoRA, LoCon, LoHa, LoKr, DoRA: ComfyUI's own loaders) with "
                        "per-block weights (LoRA Block Weight presets and layouts). Strength is linear, as in "
                        "ComfyUI's LoRA loader; with all blocks at 1 the result is the same. Lazy: nothing is copied.",
            inputs=[
                io.Model.Input("model", tooltip="The model to apply the LoRAs to; it is not modified."),
                io.Combo.Input("lora_name", options=[NONE] + folder_paths.get_filename_list("loras"),
                               default=NONE, tooltip="A LoRA to apply ('None': only those in lora_list)."),
                io.Float.Input("strength_model", default=1.0, min=-20.0, max=20.0, step=0.01,
                               tooltip="Strength of lora_name on the model (U-Net); linear."),
                io.Float.Input("strength_clip", default=1.0, min=-20.0, max=20.0, step=0.01,
                               tooltip="Strength of lora_name on the text encoder (times the BASE block value)."),
                io.String.Input("block_weights", default="", tooltip=BLOCKS_TIP),
                io.String.Input("lora_list", default="", multiline=True,
                                tooltip=LIST_TIP + " Their ratio applies to model and text encoder."),
                io.String.Input("lbw_presets", default="", multiline=True, tooltip=PRESETS_TIP),
                io.Clip.Input("clip", optional=True, tooltip="Also patch the text encoder (BASE block)."),
            ],
            outputs=[io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP"),
                     io.String.Output(display_name="report")],
        )

    @classmethod
    def validate_inputs(cls, strength_model=1.0, strength_clip=1.0, block_weights="", lora_list="", lbw_presets=""):
        return settings_problems(
            cls, {"strength_model": strength_model, "strength_clip": strength_clip, "block_weights": block_weights,
                  "lora_list": lora_list, "lbw_presets": lbw_presets},
            lambda: check_spec(block_weights, 1.0, parse_presets(lbw_presets), "block_weights"),
            lambda: check_lora_list(lora_list, lbw_presets))

    @classmethod
    def execute(cls, model, lora_name=NONE, strength_model=1.0, strength_clip=1.0, block_weights="",
                lora_list="", lbw_presets="", clip=None) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            strength_model = require_ratio("strength_model", strength_model)
            strength_clip = require_ratio("strength_clip", strength_clip)
            presets = parse_presets(lbw_presets)
            jobs = []  # (name, path, model strength, clip strength, block spec, its input, the file's input)
            if lora_name and lora_name != NONE:
                jobs.append((lora_name, lora_path(lora_name, "lora_name"), strength_model, strength_clip,
                             block_weights, "block_weights", "lora_name"))
            for item in parse_lora_list(lora_list):
                jobs.append((item.name, lora_path(item.name, "lora_list"), item.ratio, item.ratio, item.blocks,
                             "lora_list", "lora_list"))
            shapes, _ = base_layout(model, "model")
            arch = architecture_of(shapes, "model")
            out_model, out_clip = model.clone(), clip.clone() if clip is not None else None
            report = []
            for name, path, s_model, s_clip, spec, blocks_input, file_input in jobs:
                blocks = block_values(spec, 1.0, arch, presets, blocks_input, name)
                report.append(apply_lora(out_model, out_clip, name, path, s_model, s_clip, blocks, arch, file_input))
            text = "\n".join(report) or "no LoRA given"
            return io.NodeOutput(out_model, out_clip, text, ui={"text": [text]})


def apply_lora(model, clip, name: str, path: str, s_model: float, s_clip: float, blocks: dict, arch,
               input_name: str = "lora_name") -> str:
    """Patch ``model``/``clip`` (clones, changed in place) with one LoRA file; returns a report line."""
    import comfy.lora
    import comfy.lora_convert
    import comfy.utils
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    metadata = None
    if path.endswith(".safetensors"):  # a damaged file: a one-line error naming it, not ComfyUI's traceback
        with SafetensorsReader(path, input_name) as reader:
            metadata = reader.metadata  # the family the LoRA names (a Qwen-Image LoRA of few blocks fits Flux.1 too)
    sd = comfy.lora_convert.convert_lora(comfy.utils.load_torch_file(path, safe_load=True))
    names = module_names(sd)
    kind = lora_arch(names, metadata)
    if not fits_model(kind, arch) and explained_by(names, arch):
        kind = arch  # the model's own family explains the names as well as the one they were read as
    if not fits_model(kind, arch):
        label = "SD1/SD2" if kind.name in ("sd1", "sd2") else kind.label
        raise MergeInputError(input_name, f"LoRA '{name}' is {'an' if label.startswith('SD') else 'a'} {label} LoRA "
                              f"but the model is {arch.label}.", "use a LoRA trained for this model family.")
    loaded = comfy.lora.load_lora(sd, key_map)
    unet_keys = {k for k in loaded if _target(k).startswith("diffusion_model.")}
    if not unet_keys and (clip is None or not loaded):
        raise MergeInputError(input_name,
                              f"LoRA '{name}' has no module that matches this {arch.label} model.",
                              "use a LoRA trained for this model family (kohya, diffusers or ComfyUI naming).")
    groups: dict[tuple[str, float], dict] = defaultdict(dict)
    skipped, unblocked = 0, []
    for key, patch in loaded.items():
        target = _target(key)
        if target.startswith("diffusion_model."):
            block = arch.block_of(target)
            if block not in blocks:  # a weight no block rule names: block weights cannot reach it
                unblocked.append(target)
            strength, which = s_model * blocks.get(block, 1.0), "model"
        else:  # text encoders: their slot (Flux.1: CLIP-L to CLIP, T5 to T5), else the base slot
            strength, which = s_clip * blocks.get(arch.block_of(target), blocks[arch.blocks[0]]), "clip"
        if strength == 0.0:  # a zero block is left exactly unpatched
            skipped += 1
            continue
        groups[(which, strength)][key] = patch
    applied = set()
    for (which, strength), patches in groups.items():
        obj = model if which == "model" else clip
        if obj is not None:
            applied.update(obj.add_patches(patches, strength))
    missing = [k for g in groups.values() for k in g if k not in applied]
    if missing and clip is not None:
        log.warning("%s: %d LoRA patches of '%s' matched no weight, e.g. %s", LoraApply.DISPLAY, len(missing),
                    name, missing[0])
    return (f"{name}: {len(applied)} weights patched ({len(unet_keys)} diffusion-model modules in the file), {skipped} "
            "left out by zero block weights"
            + ("" if clip is not None else "; no CLIP connected, text encoder skipped")
            + (f"; {len(unblocked)} outside every block at full strength (e.g. {unblocked[0]})" if unblocked else ""))


def _target(key) -> str:
    return key[0] if isinstance(key, tuple) else key


def bake(obj, progress=None):
    """A clone whose every patched weight is replaced by its effective weight (a 'set' patch)."""
    out = obj.clone()
    patcher = getattr(out, "patcher", out)  # a CLIP wraps its ModelPatcher
    lists = patch_lists(patcher, input_name="model" if patcher is out else "clip")
    todo = [k for k, v in lists.items() if len(v) > 1]
    baked = {}
    for i, key in enumerate(todo):
        base = lists[key][0][0]
        baked[key] = ("set", (effective_weight(lists[key]).to(value_dtype(base.dtype)),))
        if progress:
            progress(i + 1, len(todo))
    patcher.patches = {}
    if baked:
        patcher.add_patches(baked, 1.0, 1.0)
    return out, len(todo)


class LoraBake(io.ComfyNode):
    DISPLAY = "Bake LoRA into Model"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_LoraBake", display_name=cls.DISPLAY, category=LORA_CATEGORY,
            description="Computes the weights of a LoRA'd (or merged) model now and keeps them as plain weights, "
                        "so later merges, extractions and saves see fixed weights and no longer depend on the "
                        "LoRA files. Costs one copy of every patched weight in memory.",
            inputs=[io.Model.Input("model", optional=True, tooltip="A model with LoRA (or merge) patches to bake."),
                    io.Clip.Input("clip", optional=True, tooltip="A CLIP with patches to bake.")],
            outputs=[io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP"),
                     io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model=None, clip=None) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            if model is None and clip is None:
                raise MergeInputError("model", "and clip are both unconnected.", "connect a MODEL and/or a CLIP.")
            lines, outs = [], []
            for obj, label in ((model, "model"), (clip, "clip")):
                if obj is None:
                    outs.append(None)
                    continue
                baked, n = bake(obj, progress_bar(1))
                outs.append(baked)
                lines.append(f"{label}: {n} patched weights baked")
            text = "\n".join(lines)
            return io.NodeOutput(outs[0], outs[1], text, ui={"text": [text]})


class LoraExtract(io.ComfyNode):
    DISPLAY = "Extract LoRA from Models"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_LoraExtract", display_name=cls.DISPLAY, category=LORA_CATEGORY,
            description="Makes a LoRA of alpha*A - beta*B (A = tuned, B = original) by SVD of every attention "
                        "and feed-forward layer (and, with conv_rank, the convolutions), on the models' effective "
                        "weights (merges and LoRAs included). kohya names and alpha: ComfyUI, A1111 and kohya read it.",
            inputs=[
                io.Model.Input("model_a", tooltip="The tuned (or merged) model."),
                io.Model.Input("model_b", tooltip="The original model the LoRA will be applied to."),
                io.Float.Input("alpha", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip="Factor of A."),
                io.Float.Input("beta", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip="Factor of B."),
                io.Int.Input("rank", default=64, min=1, max=4096,
                             tooltip="Rank of linear and 1x1 layers; layers smaller than this use their full rank."),
                io.Int.Input("conv_rank", default=0, min=0, max=4096,
                             tooltip="Rank of 3x3 convolutions (LoCon); 0 = attention/feed-forward layers only."),
                io.Combo.Input("svd", options=list(SVD_METHODS), default="full", tooltip=SVD_TIP),
                io.Float.Input("clamp_quantile", default=0.0, min=0.0, max=1.0, step=0.001, tooltip=CLAMP_TIP),
                io.Float.Input("te_min_diff", default=0.1, min=0.0, max=10.0, step=0.001,
                               tooltip="The text encoder is included only if some weight differs by more than this "
                                       "(kohya's rule; 0 = whenever it differs at all)."),
                io.String.Input("filename_prefix", default="merge_suite/extracted", tooltip=PREFIX_TIP),
                io.Combo.Input("save_dtype", options=list(SAVE_DTYPES), default="fp16", tooltip=DTYPE_TIP),
                io.Clip.Input("clip_a", optional=True, tooltip="Text encoder of A (with clip_b: also extracted)."),
                io.Clip.Input("clip_b", optional=True, tooltip="Text encoder of B."),
            ],
            outputs=FILE_OUTPUTS, is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, alpha=1.0, beta=1.0, clamp_quantile=0.0, te_min_diff=0.1):
        return settings_problems(cls, {"alpha": alpha, "beta": beta, "clamp_quantile": clamp_quantile,
                                       "te_min_diff": te_min_diff})

    @classmethod
    def execute(cls, model_a, model_b, alpha=1.0, beta=1.0, rank=64, conv_rank=0, svd="full", clamp_quantile=0.0,
                te_min_diff=0.1, filename_prefix="merge_suite/extracted", save_dtype="fp16", clip_a=None,
                clip_b=None) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            filename_prefix = lora_prefix(filename_prefix, "merge_suite/extracted")
            if (clip_a is None) != (clip_b is None):
                raise MergeInputError("clip_b" if clip_b is None else "clip_a", "is missing.",
                                      "connect both CLIPs to extract the text encoder too, or neither.")
            la, lb = key_patches(model_a, "model", "model_a"), key_patches(model_b, "model", "model_b")
            if clip_a is not None:
                la.update(key_patches(clip_a, "clip", "clip_a"))
                lb.update(key_patches(clip_b, "clip", "clip_b"))
            shapes = {k: s for k, s in shapes_of(la).items() if k in lb and tuple(lb[k][0][0].shape) == s}
            arch = architecture_of(shapes_of(la), "model_a")
            if architecture_of(shapes_of(lb), "model_b").blocks != arch.blocks:
                raise MergeInputError("model_b", "is another architecture than model_a.",
                                      "extract from two models of the same family.")
            result = extract_from_models(
                shapes, lambda k: effective_weight(la[k]), lambda k: effective_weight(lb[k]), arch, alpha, beta,
                rank, conv_rank, svd, clamp_quantile or None, te_min_diff, progress=progress_bar(len(shapes)))
            meta = extraction_metadata(arch, rank, conv_rank, filename_prefix)
            name = _save(result, filename_prefix, meta, save_dtype)
            record_lora("lora extract", cls.DISPLAY, "extract", dict(
                alpha=alpha, beta=beta, rank=rank, conv_rank=conv_rank, svd=svd, clamp_quantile=clamp_quantile,
                te_min_diff=te_min_diff, filename_prefix=filename_prefix, save_dtype=save_dtype),
                models=[("model", model_a), ("model", model_b), ("clip", clip_a), ("clip", clip_b)], output=name)
            return _file_outputs(name, result)


def _read_items(text: str, input_name: str) -> list:
    items = parse_lora_list(text, input_name)
    return [(item, read_lora(lora_path(item.name, input_name), item.name, input_name)) for item in items]


class LoraMerge(io.ComfyNode):
    DISPLAY = "Merge LoRAs"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_LoraMerge", display_name=cls.DISPLAY, category=LORA_CATEGORY,
            description="Merges LoRA files into one. exact: sums each module's weight change r*dW over the LoRAs "
                        "and re-decomposes it by SVD (any ranks, conv 3x3 included). naive: kohya's sum of the "
                        "up and down matrices (equal ranks; cross terms between LoRAs).",
            inputs=[
                io.String.Input("lora_list", default="", multiline=True, tooltip=LIST_TIP),
                io.Combo.Input("method", options=["exact", "naive"], default="exact",
                               tooltip="exact: SVD of the summed weight changes (applying the result equals applying "
                                       "all LoRAs, up to the rank). naive: kohya-compatible factor-wise sum."),
                io.Int.Input("rank", default=0, min=0, max=4096,
                             tooltip="exact: rank of the result; 0 = the largest input rank. Sum the input ranks "
                                     "for a lossless merge."),
                io.Combo.Input("svd", options=list(SVD_METHODS), default="full", tooltip=SVD_TIP),
                io.Float.Input("clamp_quantile", default=0.0, min=0.0, max=1.0, step=0.001, tooltip=CLAMP_TIP),
                io.Boolean.Input("same_to_strength", default=True,
                                 tooltip="naive only: on = a ratio acts linearly, like a strength (sqrt on both "
                                         "factors, sign on down). off = kohya's rule: both factors times the ratio, "
                                         "so the effect is ratio squared and negative ratios turn positive."),
                io.Combo.Input("metadata", options=list(METADATA_MODES), default="create new",
                               tooltip="create new: a few ss_* fields of LoRA 1. merge: LoRA 1's metadata, each "
                                       "input's in sshs_cpN, tag frequencies merged. save all: the same without "
                                       "tag merging. use first lora: LoRA 1's as is."),
                io.String.Input("filename_prefix", default="merge_suite/merged", tooltip=PREFIX_TIP),
                io.Combo.Input("save_dtype", options=list(SAVE_DTYPES), default="fp16", tooltip=DTYPE_TIP),
                io.String.Input("lbw_presets", default="", multiline=True, tooltip=PRESETS_TIP),
            ],
            outputs=FILE_OUTPUTS, is_output_node=True, **search_fields("MergeSuite_LoraMerge"),
        )

    @classmethod
    def validate_inputs(cls, lora_list="", clamp_quantile=0.0, lbw_presets=""):
        return settings_problems(cls, {"lora_list": lora_list, "clamp_quantile": clamp_quantile,
                                       "lbw_presets": lbw_presets},
                                 lambda: check_lora_list(lora_list, lbw_presets))

    @classmethod
    def execute(cls, lora_list, method="exact", rank=0, svd="full", clamp_quantile=0.0, same_to_strength=True,
                metadata="create new", filename_prefix="merge_suite/merged", save_dtype="fp16",
                lbw_presets="") -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            filename_prefix = lora_prefix(filename_prefix, "merge_suite/merged")
            items = _read_items(lora_list, "lora_list")
            result = merge_loras(items, method, rank, svd, clamp_quantile or None, same_to_strength, lbw_presets,
                                 progress=progress_bar(1))
            name = _save_with_inputs(result, items, metadata, filename_prefix, save_dtype, lbw_presets)
            record_lora("lora merge", cls.DISPLAY, method, dict(
                lora_list=lora_list, method=method, rank=rank, svd=svd, clamp_quantile=clamp_quantile,
                same_to_strength=same_to_strength, metadata=metadata, filename_prefix=filename_prefix,
                save_dtype=save_dtype, lbw_presets=lbw_presets), loras=[item.name for item, _ in items], output=name)
            return _file_outputs(name, result)


def _save_with_inputs(result, items, mode, prefix, save_dtype, lbw_presets) -> str:
    import folder_paths
    from ..merge_core.lora.files import common_architecture
    arch = common_architecture([f for _, f in items])
    presets = parse_presets(lbw_presets)
    inputs = [(item, lora, block_values(item.blocks, item.ratio, arch, presets, "lora_list", item.name))
              for item, lora in items]
    folder = folder_paths.get_folder_paths("loras")[0]
    prefix = lora_prefix(prefix, "merge_suite/merged")
    name = next_free_path(folder, prefix, create=False).stem
    meta = merged_metadata(inputs, mode, name, save_dtype, result.dims)
    return _save(result, prefix, meta, save_dtype)


class LoraExtractFromLoras(io.ComfyNode):
    DISPLAY = "Extract from two LoRAs"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_LoraExtractFromLoras", display_name=cls.DISPLAY, category=LORA_CATEGORY,
            description="SuperMerger's extract on two LoRAs with the same modules: per tensor, "
                        "lerp(L1, L2, alpha) * lerp(d, 1-d, beta) with d = ((cos + 1)/2)^gamma. With alpha = beta = "
                        "gamma = 1 it keeps what LoRA 2 has that LoRA 1 does not.",
            inputs=[
                io.String.Input("lora_1", default="", tooltip="'name:ratio[:blocks]' of LoRA 1 (its alphas are kept)."),
                io.String.Input("lora_2", default="", tooltip="'name:ratio[:blocks]' of LoRA 2 (same modules and "
                                                              "ranks as LoRA 1)."),
                io.Float.Input("alpha", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="0 = LoRA 1's tensors, 1 = LoRA 2's."),
                io.Float.Input("beta", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="0 keeps similar features, 1 keeps dissimilar ones."),
                io.Float.Input("gamma", default=1.0, min=0.0, max=20.0, step=0.1,
                               tooltip="Similarity sharpness (>= 0)."),
                io.Boolean.Input("same_to_strength", default=True,
                                 tooltip="Ratios act linearly (sqrt on both factors); off: kohya's ratio squared."),
                io.String.Input("filename_prefix", default="merge_suite/extracted_from_loras", tooltip=PREFIX_TIP),
                io.Combo.Input("save_dtype", options=list(SAVE_DTYPES), default="fp16", tooltip=DTYPE_TIP),
                io.Combo.Input("metadata", options=list(METADATA_MODES), default="create new",
                               tooltip="As in Merge LoRAs."),
                io.String.Input("lbw_presets", default="", multiline=True, tooltip=PRESETS_TIP),
            ],
            outputs=FILE_OUTPUTS, is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, lora_1="", lora_2="", alpha=1.0, beta=1.0, gamma=1.0, lbw_presets=""):
        return settings_problems(cls, {"lora_1": lora_1, "lora_2": lora_2, "alpha": alpha, "beta": beta,
                                       "gamma": gamma, "lbw_presets": lbw_presets},
                                 lambda: check_lora_list(lora_1, lbw_presets, "lora_1"),
                                 lambda: check_lora_list(lora_2, lbw_presets, "lora_2"))

    @classmethod
    def execute(cls, lora_1, lora_2, alpha=1.0, beta=1.0, gamma=1.0, same_to_strength=True,
                filename_prefix="merge_suite/extracted_from_loras", save_dtype="fp16", metadata="create new",
                lbw_presets="") -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            filename_prefix = lora_prefix(filename_prefix, "merge_suite/extracted_from_loras")
            items = []
            for text, input_name in ((lora_1, "lora_1"), (lora_2, "lora_2")):
                found = _read_items(text, input_name)
                if len(found) != 1:
                    raise MergeInputError(input_name, f"names {len(found)} LoRAs.", "give exactly one 'name:ratio'.")
                items.extend(found)
            result = extract_from_loras(items[0], items[1], alpha, beta, gamma, same_to_strength, lbw_presets)
            name = _save_with_inputs(result, items, metadata, filename_prefix, save_dtype, lbw_presets)
            record_lora("lora extract", cls.DISPLAY, "extract from LoRAs", dict(
                lora_1=lora_1, lora_2=lora_2, alpha=alpha, beta=beta, gamma=gamma, same_to_strength=same_to_strength,
                filename_prefix=filename_prefix, save_dtype=save_dtype, metadata=metadata, lbw_presets=lbw_presets),
                loras=[item.name for item, _ in items], output=name)
            return _file_outputs(name, result)


NODES = [LoraApply, LoraBake, LoraExtract, LoraMerge, LoraExtractFromLoras]
