"""Save Checkpoint, streamed: one key's effective weight at a time, straight to disk.

ComfyUI's CheckpointSave patches the whole model, then builds the complete
state dict before writing; merging and saving two SDXL checkpoints that way
needs a second full copy in RAM. Here each key's weight is computed from its
patch list (the merge is still lazy), cast to the chosen precision, written and
freed. Key names come from ComfyUI's own model-config functions
(process_*_state_dict_for_saving), run first on shape-only "meta" tensors to
lay out the header: most keys map one to one, and the few that are built from
several (SD2/SDXL text-encoder q/k/v -> in_proj) are produced one layer group
at a time. The file goes through merge_core.io.output_file (temporary name, fsync,
no-clobber rename, removed on failure or SIGTERM/SIGHUP).
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from comfy_api.latest import io

from ..merge_core import recipe as core_recipe
from ..merge_core.errors import MergeInputError
from ..merge_core.io.filehash import file_sha256
from ..merge_core.io.output_file import check_prefix, install_signal_cleanup, next_numbered, remove_stale_parts
from ..merge_core.io.released_names import released_namer
from ..merge_core.io.safetensors_file import SafetensorsWriter
from .comfy_models import UNET_PREFIX, effective_weight, key_patches, serialised_layers
from .errors import named_errors
from .history_log import record_save
from .recipe_tags import get_recipe
from .shared import CATEGORY, progress_bar

PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
              "fp8_e4m3fn": torch.float8_e4m3fn, "as loaded": None}
PRUNE_KEEP = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
AUTO, CHECKPOINT, DIFFUSION_ONLY = "auto", "checkpoint", "diffusion model only"
CONTENTS = (AUTO, CHECKPOINT, DIFFUSION_ONLY)
CONTENTS_TIP = ("checkpoint: MODEL + CLIP + VAE in one file in the checkpoints folder (a Forge-style file for Flux). "
                "diffusion model only: the MODEL alone, as ComfyUI's ModelSave writes it, in the diffusion_models "
                "folder (load it with Load Diffusion Model); CLIP and VAE are not saved. auto: a checkpoint when a "
                "CLIP or VAE is connected, else the diffusion model only.")
SAMPLING_MARKERS = ("v_pred", "ztsnr", "edm_vpred.")

Getter = Callable[[], torch.Tensor]


def _group_of(key: str) -> str:
    """Keys up to their last numeric component share a group (one layer)."""
    parts = key.split(".")
    last = max((i for i, p in enumerate(parts) if p.isdigit()), default=None)
    return key if last is None else ".".join(parts[:last + 1])


class Part:
    """One component (U-Net, text encoder, VAE): its input keys and ComfyUI's renaming function."""

    def __init__(self, name: str, items: "OrderedDict[str, tuple[tuple, torch.dtype, Getter]]",
                 process: Callable[[dict], dict], dtype: Optional[torch.dtype]):
        self.name, self.items, self.process, self.dtype = name, items, process, dtype
        self.groups = self._layout()

    def _meta(self, keys) -> dict:
        return {k: torch.empty(self.items[k][0], dtype=self.items[k][1], device="meta") for k in keys}

    def _layout(self) -> list[tuple[list[str], list[tuple[str, Optional[str], torch.Tensor]]]]:
        """[(input keys, [(output key, input key or None if derived, meta tensor)])], in write order."""
        full = self.process(self._meta(self.items))
        grouped: "OrderedDict[str, list[str]]" = OrderedDict()
        for key in self.items:
            grouped.setdefault(_group_of(key), []).append(key)
        groups, seen = [], set()
        for keys in grouped.values():
            metas = self._meta(keys)
            origin = {id(v): k for k, v in metas.items()}
            entries = []
            for out_key, value in self.process(dict(metas)).items():
                if out_key not in seen:
                    seen.add(out_key)
                    entries.append((out_key, origin.get(id(value)), value))
            groups.append((keys, entries))
        same = seen == set(full) and all(tuple(full[k].shape) == tuple(v.shape)
                                         for _, entries in groups for k, _, v in entries)
        if not same:  # renaming is not local to a layer: build this component whole (not seen for SD/SDXL)
            logging.warning("merge_suite save: %s keys are converted as a whole (more memory)", self.name)
            metas = self._meta(self.items)
            origin = {id(v): k for k, v in metas.items()}
            groups = [(list(self.items), [(k, origin.get(id(v)), v) for k, v in self.process(metas).items()])]
        return groups

    def out_dtype(self, value: torch.Tensor) -> torch.dtype:
        return self.dtype if (self.dtype is not None and value.dtype.is_floating_point) else value.dtype

    def layout(self):
        for _, entries in self.groups:
            for out_key, _, value in entries:
                yield out_key, self.out_dtype(value), tuple(value.shape)

    def tensors(self):
        """(output key, tensor at the output dtype), one at a time (one layer at a time for derived keys)."""
        for keys, entries in self.groups:
            if all(src is not None for _, src, _ in entries):
                for out_key, src, value in entries:
                    yield out_key, self.items[src][2]().to(self.out_dtype(value))
                continue
            built = self.process({k: self.items[k][2]() for k in keys})
            for out_key, _, value in entries:
                yield out_key, built[out_key].to(self.out_dtype(value))
            del built


def _floating(dtype: torch.dtype, fallback: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else fallback


def released_saving(process: Callable[[dict], dict], keys) -> Callable[[dict], dict]:
    """ComfyUI's U-Net save names, with the released names of the parameters a host renamed on load
    (merge_core/io/released_names.py): ComfyUI 0.33 loads Flux's RMSNorm ``.scale`` as ``.weight`` and
    would save that; both hosts load ``.scale`` (0.3.75 needs it), so the file is written as released."""
    namer = released_namer(keys)
    return process if namer is None else (lambda sd: {namer(k): v for k, v in process(sd).items()})


def checkpoint_parts(model: Any, clip: Any, vae: Any, precision: str) -> list[Part]:
    """The U-Net, text encoder and VAE of a checkpoint as streamable parts, with ComfyUI's save names."""
    target = PRECISIONS[precision]
    config = model.model.model_config
    side = torch.float16 if target == torch.float8_e4m3fn else target  # fp8: U-Net only
    parts = []

    def from_patches(patches: dict, strip: str = "", encoded: Optional[dict] = None) -> "OrderedDict":
        items = OrderedDict()
        for key, plist in patches.items():
            if encoded and key in encoded:  # 'as loaded': a quantized layer re-encoded, in the host's own entries
                items.update((k[len(strip):], v) for k, v in encoded[key].items())
                continue
            base = plist[0][0]
            dtype = _floating(base.dtype, torch.float16) if base.dtype.is_floating_point else base.dtype
            items[key[len(strip):]] = (tuple(base.shape), dtype, (lambda p=plist: effective_weight(p)))
        return items

    lists = key_patches(model, "model")
    unet = from_patches(lists, UNET_PREFIX, serialised_layers(model, lists) if target is None else None)
    parts.append(Part("U-Net", unet, released_saving(config.process_unet_state_dict_for_saving, unet), target))
    if clip is not None:
        items = from_patches(key_patches(clip, "clip"))
        for key, tensor in clip.tokenizer.state_dict().items():
            items[key] = (tuple(tensor.shape), tensor.dtype, (lambda t=tensor: t))
        parts.append(Part("text encoder", items, config.process_clip_state_dict_for_saving, side))
    if vae is not None:
        items = OrderedDict((k, (tuple(t.shape), t.dtype, (lambda t=t: t))) for k, t in vae.get_sd().items())
        parts.append(Part("VAE", items, config.process_vae_state_dict_for_saving, side))
    return parts


def sampling_metadata(model: Any) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """modelspec entries and marker keys (v_pred, ztsnr, edm_vpred.*) as ComfyUI's CheckpointSave writes them."""
    import comfy.model_base
    import comfy.model_sampling
    meta, extra = {}, {}
    base = model.model
    arch = None
    if isinstance(base, comfy.model_base.SDXL):
        arch = ("stable-diffusion-xl-v1-edit" if isinstance(base, comfy.model_base.SDXL_instructpix2pix)
                else "stable-diffusion-xl-v1-base")
    elif isinstance(base, comfy.model_base.SDXLRefiner):
        arch = "stable-diffusion-xl-v1-refiner"
    elif isinstance(base, comfy.model_base.SVD_img2vid):
        arch = "stable-video-diffusion-img2vid-v1"
    elif isinstance(base, comfy.model_base.SD3):
        arch = "stable-diffusion-v3-medium"
    if arch:
        meta.update({"modelspec.architecture": arch, "modelspec.sai_model_spec": "1.0.0",
                     "modelspec.implementation": "sgm"})
    sampling = model.get_model_object("model_sampling")
    if isinstance(sampling, comfy.model_sampling.ModelSamplingContinuousEDM) and \
            isinstance(sampling, comfy.model_sampling.V_PREDICTION):
        extra["edm_vpred.sigma_max"] = torch.tensor(sampling.sigma_max).float()
        extra["edm_vpred.sigma_min"] = torch.tensor(sampling.sigma_min).float()
    if base.model_type == comfy.model_base.ModelType.EPS:
        meta["modelspec.predict_key"] = "epsilon"
    elif base.model_type == comfy.model_base.ModelType.V_PREDICTION:
        meta["modelspec.predict_key"] = "v"
        extra["v_pred"] = torch.tensor([])
        if getattr(sampling, "zsnr", False):
            extra["ztsnr"] = torch.tensor([])
    return meta, extra


def _with_hashes(tree: Optional[dict], hash_file: Callable[[str], str]) -> Optional[dict]:
    if not tree:
        return tree
    if "file" in tree:
        return dict(tree, sha256=tree.get("sha256") or hash_file(tree["file"]))
    return {k: (_with_hashes(v, hash_file) if k in ("a", "b", "c") else v) for k, v in tree.items()}


def checkpoint_hash(name: str) -> str:
    """sha256 of a file in ComfyUI's checkpoints folders ('' when it cannot be found)."""
    import folder_paths
    path = folder_paths.get_full_path("checkpoints", name)
    if not path:
        return ""
    return file_sha256(path, Path(folder_paths.get_user_directory()) / "merge_suite" / "sha256_cache.json")


def save_streaming(path: Path, parts: list[Part], extra: dict[str, torch.Tensor], metadata: dict[str, str],
                   prune: bool, progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Write every part key by key into ``path`` (atomic: a temporary file renamed at the end)."""
    def kept(key: str) -> bool:
        return not prune or key.startswith(PRUNE_KEEP) or key.startswith(SAMPLING_MARKERS)
    layout = [(k, d, s) for part in parts for k, d, s in part.layout() if kept(k)]
    layout += [(k, t.dtype, tuple(t.shape)) for k, t in extra.items()]
    total = len(layout)
    writer = SafetensorsWriter(path, layout, metadata, input_name="filename_prefix", renumber=next_numbered)
    try:
        done = 0
        for part in parts:
            for key, tensor in part.tensors():
                if kept(key):
                    writer.write(key, tensor)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                del tensor
        for key, tensor in extra.items():
            writer.write(key, tensor)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def _expand_dates(prefix: str) -> str:
    """ComfyUI's date placeholders in a save prefix (%year%, %month%, %day%, %hour%, %minute%, %second%)."""
    if "%" not in prefix:
        return prefix
    now = time.localtime()
    for name, value in (("year", now.tm_year), ("month", now.tm_mon), ("day", now.tm_mday), ("hour", now.tm_hour),
                        ("minute", now.tm_min), ("second", now.tm_sec)):
        prefix = prefix.replace(f"%{name}%", str(value).zfill(2))
    return prefix


def numbered_names(folder: Path, name: str) -> list[Path]:
    """Files '<name>_<digits>_.safetensors' in folder, by counter (a plain listing, no glob: a prefix such as
    'x[1]' is a name here, not a pattern)."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    pattern = re.compile(re.escape(name) + r"_(\d+)_\.safetensors")
    found = [(int(m.group(1)), entry) for entry in entries if (m := pattern.fullmatch(entry))]
    return [folder / entry for _, entry in sorted(found)]


def output_path(filename_prefix: str, kind: str = "checkpoints") -> Path:
    """Next free '<prefix>_00001_.safetensors' in the first folder of a model kind (never an existing file).
    Nothing is created here: the prefix is checked first (merge_core.io.output_file.check_prefix), and the
    writer (OutputFile) makes the sub-folder and removes it again if the save fails, so no empty folder stays."""
    import folder_paths
    root = folder_paths.get_folder_paths(kind)[0]
    prefix = check_prefix(filename_prefix, kind)
    target = os.path.abspath(os.path.join(root, os.path.normpath(prefix)))
    # checked before any folder is made; symlinks an admin put inside the folder are followed on purpose
    if os.path.isabs(prefix) or os.path.commonpath((os.path.abspath(root), target)) != os.path.abspath(root):
        raise MergeInputError("filename_prefix", f"'{prefix}' points outside the {kind} folder {root}.",
                              "use a relative name without '..', e.g. 'merge_suite/my_merge'.")
    relative = os.path.normpath(_expand_dates(prefix))
    folder, name = Path(root) / os.path.dirname(relative), os.path.basename(relative)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise MergeInputError("filename_prefix", f"cannot use folder '{folder}': a file of that name exists.",
                              "choose another sub-folder name.")
    taken = numbered_names(folder, name)
    counter = int(re.search(r"_(\d+)_\.safetensors$", taken[-1].name).group(1)) + 1 if taken else 1
    while True:
        candidate = folder / f"{name}_{counter:05}_.safetensors"
        if not os.path.lexists(candidate):
            return candidate
        counter += 1


def startup_cleanup() -> None:
    """At pack load: remove partial files that killed processes left in the folders we save to, and
    make SIGTERM/SIGHUP remove the ones being written (then the signal acts as before)."""
    import folder_paths
    install_signal_cleanup()
    for kind in ("checkpoints", "diffusion_models", "loras"):
        for folder in folder_paths.get_folder_paths(kind)[:1]:
            for path in remove_stale_parts(folder, depth=3):
                logging.info("merge_suite: removed a partial file left by a stopped save: %s", path)


class SaveCheckpoint(io.ComfyNode):
    DISPLAY = "Save Checkpoint (streamed, with recipe)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_SaveCheckpoint", display_name=cls.DISPLAY, category=CATEGORY,
            description="Save MODEL + CLIP + VAE as a .safetensors checkpoint in the checkpoints folder, "
                        "computing and writing one weight at a time (no second full copy in memory), at the "
                        "chosen precision, atomically, with the merge recipe in the metadata.",
            inputs=[
                io.Model.Input("model", tooltip="The (merged) model to save. Its recipe travels with it."),
                io.Clip.Input("clip", optional=True, tooltip="The text encoder to save (not needed for a diffusion "
                                                             "model only file)."),
                io.Vae.Input("vae", optional=True, tooltip="The VAE baked into the file: connect a Load VAE node to "
                                                           "bake another VAE than model A's."),
                io.String.Input("filename_prefix", default="merge_suite/merged",
                                tooltip="Name inside ComfyUI's checkpoints folder (diffusion_models for a diffusion "
                                        "model only file); '_00001_.safetensors' and up is appended, so no file is "
                                        "ever overwritten. Subfolders allowed."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="fp16",
                               tooltip="fp16 (half the size of fp32), bf16, fp32, or fp8_e4m3fn (U-Net in fp8, "
                                       "text encoder and VAE in fp16). 'as loaded' keeps each tensor's dtype "
                                       "(fp8 weights become fp16; layers ComfyUI 0.33 holds quantized stay "
                                       "quantized, re-encoded in its own per-layer format)."),
                io.Boolean.Input("prune", default=False,
                                 tooltip="Keep only U-Net, text-encoder and VAE keys (SuperMerger's prune); "
                                         "sampling markers such as v_pred are kept."),
                io.Boolean.Input("save_workflow", default=True,
                                 tooltip="Also store the prompt and workflow, as ComfyUI's CheckpointSave does "
                                         "(never when ComfyUI runs with --disable-metadata)."),
                io.Boolean.Input("hash_inputs", default=True,
                                 tooltip="Record the sha256 of each input checkpoint (SuperMerger's "
                                         "sd_merge_models), so Load Recipe can find them; hashing a large file "
                                         "takes a while the first time (cached)."),
                io.Combo.Input("contents", options=list(CONTENTS), default=AUTO, optional=True, tooltip=CONTENTS_TIP),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="The file written.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip=None, vae=None, filename_prefix="merge_suite/merged", precision="fp16", prune=False,
                save_workflow=True, hash_inputs=True, contents=AUTO) -> io.NodeOutput:
        from comfy.cli_args import args

        with named_errors(cls.DISPLAY):
            if precision not in PRECISIONS:
                raise MergeInputError("precision", f"unknown precision '{precision}'.",
                                      f"choose one of {', '.join(PRECISIONS)}.")
            if contents not in CONTENTS:
                raise MergeInputError("contents", f"unknown choice '{contents}'.",
                                      f"choose one of {', '.join(CONTENTS)}.")
            whole = contents == CHECKPOINT or (contents == AUTO and (clip is not None or vae is not None))
            clip, vae = (clip, vae) if whole else (None, None)
            path = output_path(filename_prefix, "checkpoints" if whole else "diffusion_models")
            meta, extra = sampling_metadata(model)
            meta = {"format": "pt", **meta, "modelspec.title": path.stem} if "modelspec.architecture" in meta \
                else {"format": "pt", **meta}
            hash_file = checkpoint_hash if hash_inputs else (lambda name: "")
            trees = {k: _with_hashes(get_recipe(o, k), hash_file) for k, o in (("model", model), ("clip", clip))}
            meta.update(core_recipe.file_metadata(trees["model"], trees["clip"]))
            hidden = getattr(cls, "hidden", None)
            if save_workflow and not args.disable_metadata and hidden is not None:
                if hidden.prompt is not None:
                    meta["prompt"] = json.dumps(hidden.prompt)
                for key, value in (hidden.extra_pnginfo or {}).items():
                    meta[key] = json.dumps(value)
            parts = checkpoint_parts(model, clip, vae, precision)
            total = sum(1 for p in parts for _ in p.layout())
            try:
                written = save_streaming(path, parts, extra, meta, prune, progress_bar(total))
            except OSError as exc:
                raise MergeInputError("filename_prefix", f"cannot write '{path}': {exc.strerror or exc}.",
                                      "choose a folder you can write to, or free disk space.") from None
            logging.info("merge_suite: saved %s", written)
            record_save(cls.DISPLAY, trees, written)
            return io.NodeOutput(str(written))


NODES = [SaveCheckpoint]
