"""LoRA files: reading modules, the three file-producing operations, metadata (§10.6) and atomic saving.

Operations return ``LoraResult`` (tensors in kohya naming, a report, dims) so the
ComfyUI nodes and the CLI share them; only saving touches the disk.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from .architectures import ARCHITECTURES, Architecture
from .errors import MergeInputError, require_finite, require_ratio
from .lora_blocks import LoraItem, blocks26_text, block_values, parse_presets
from .lora_keys import lora_architecture, module_block, te_modules, unet_module
from .lora_math import LoraModule, decompose, exact_merge, extract_two, naive_merge, scaled_factors
from .output_file import check_target, disk_error
from .safetensors_io import SafetensorsReader, SafetensorsWriter
from .threads import MERGE_THREADS, torch_threads

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
METADATA_MODES = ("create new", "create new without output_name", "merge", "save all", "use first lora")
_UP = (".lora_up.weight", ".lora_B.weight", ".lora.up.weight")
_DOWN = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight")
_OTHER_TYPES = (("hada_", "LoHa"), ("lokr_", "LoKr"), ("oft_", "OFT"), ("glora", "GLoRA"), ("dora_scale", "DoRA"),
                ("lora_mid", "LoCon (Tucker)"), ("w_norm", "Norm"), ("b_norm", "Norm"), (".diff", "full diff"),
                ("set_weight", "set"))
Progress = Optional[Callable[[int, int], None]]


@dataclass
class LoraFile:
    name: str
    modules: dict[str, LoraModule]
    unsupported: dict[str, str]  # module -> LyCORIS type name
    metadata: dict[str, str]
    arch: Optional[Architecture]


def _split(key: str) -> tuple[str, str]:
    for kind, suffixes in (("up", _UP), ("down", _DOWN), ("alpha", (".alpha",))):
        for suffix in suffixes:
            if key.endswith(suffix):
                return key[:-len(suffix)], kind
    return (key.split(".")[0] if key.startswith("lora_") else key.rsplit(".", 1)[0]), "other"


def read_lora(path: str | os.PathLike, name: Optional[str] = None, input_name: str = "lora_list") -> LoraFile:
    """Modules of a LoRA file; LyCORIS and other module types are listed, not loaded."""
    name = name or Path(path).stem
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unsupported: dict[str, str] = {}
    with SafetensorsReader(path, input_name) as reader:
        for key in reader.keys():
            module, kind = _split(key)
            if kind == "other":
                unsupported[module] = next((t for marker, t in _OTHER_TYPES if marker in key), "unknown")
                continue
            parts.setdefault(module, {})[kind] = reader.get(key)
        metadata = dict(reader.metadata)
    modules = {}
    for module, p in parts.items():
        if module in unsupported:
            continue
        if "up" not in p or "down" not in p:
            unsupported[module] = "incomplete (no up/down pair)"
            continue
        modules[module] = LoraModule(p["up"], p["down"], float(p["alpha"]) if "alpha" in p else None)
    arch_name = lora_architecture(list(modules) + list(unsupported))
    return LoraFile(name, modules, unsupported, metadata, ARCHITECTURES.get(arch_name) if arch_name else None)


def require_plain(lora: LoraFile, what: str, input_name: str = "lora_list") -> None:
    if lora.unsupported:
        module, kind = next(iter(lora.unsupported.items()))
        raise MergeInputError(
            input_name, f"LoRA '{lora.name}' has {len(lora.unsupported)} {kind} module(s) (e.g. '{module}'); "
            f"{what} handles plain LoRA/LoCon (up/down/alpha) only.",
            "apply that LoRA with 'Apply LoRA with Block Weights' (it supports LoHa, LoKr, DoRA via ComfyUI), "
            "bake it and extract a new LoRA from the result, or leave it out.")


def common_architecture(loras: list[LoraFile], input_name: str = "lora_list") -> Architecture:
    archs = {l.arch.name for l in loras if l.arch is not None}
    if len(archs) > 1:
        names = ", ".join(f"'{l.name}' ({l.arch.label})" for l in loras if l.arch is not None)
        raise MergeInputError(input_name, f"the LoRAs are for different architectures: {names}.",
                              "merge LoRAs trained for the same base model family (all SD1 or all SDXL).")
    if not archs:
        raise MergeInputError(input_name, f"LoRA '{loras[0].name}' is not a recognised SD1/SD2 or SDXL LoRA "
                              "(no lora_unet_/lora_te_ modules).", "use kohya-style SD1/SDXL LoRAs.")
    return ARCHITECTURES[archs.pop()]


@dataclass
class LoraResult:
    tensors: dict[str, torch.Tensor]
    report: list[str] = field(default_factory=list)
    dims: set = field(default_factory=set)
    sq_err: float = 0.0
    sq_norm: float = 0.0

    @property
    def rel_error(self) -> float:
        return math.sqrt(self.sq_err / self.sq_norm) if self.sq_norm > 0 else 0.0

    def add(self, name: str, up: torch.Tensor, down: torch.Tensor, alpha: float) -> None:
        self.tensors[f"{name}.lora_up.weight"] = up
        self.tensors[f"{name}.lora_down.weight"] = down
        self.tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
        self.dims.add(down.shape[0])

    def add_decomposition(self, name: str, dec) -> None:
        self.add(name, dec.up, dec.down, dec.rank)
        self.sq_err += (dec.rel_error * dec.norm) ** 2
        self.sq_norm += dec.norm ** 2


def check_svd_settings(rank: int, clamp_quantile: Optional[float], conv_rank: int = 0, min_rank: int = 0) -> None:
    """Ranks and the clamp quantile, before any SVD: a negative rank silently became 1, and a quantile
    outside (0, 1] (or NaN) failed deep inside torch.quantile."""
    rank_fix = "use 0 (the largest input rank) or a rank such as 32." if min_rank == 0 else \
        "use a rank of at least 1 (e.g. 32 or 64)."
    for value, name, low, fix in ((rank, "rank", min_rank, rank_fix),
                                  (conv_rank, "conv_rank", 0, "use 0 (no 3x3 convolutions) or a rank such as 16.")):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MergeInputError(name, f"is {value!r}.", fix)
    if clamp_quantile is not None and clamp_quantile != 0:
        q = require_finite("clamp_quantile", clamp_quantile, "give a quantile such as 0.99 (0 = off).")
        if not 0 < q <= 1:
            raise MergeInputError("clamp_quantile", f"is {q:g}, outside (0, 1].",
                                  "give a quantile such as 0.99 (0 = off).")


def _ratios(items: list[tuple[LoraItem, LoraFile]], arch: Architecture, presets) -> list[dict[str, float]]:
    return [block_values(item.blocks, item.ratio, arch, presets, "lora_list", item.name) for item, _ in items]


def _block_ratio(ratios: dict[str, float], module: str, arch: Architecture, report: list[str], lora: str) -> float:
    block = module_block(module, arch)
    if block is None:
        report.append(f"warning: LoRA '{lora}': module '{module}' has no known block; it gets the BASE ratio.")
        block = "BASE"
    return ratios[block]


def merge_loras(items: list[tuple[LoraItem, LoraFile]], method: str = "exact", rank: int = 0, svd: str = "full",
                clamp_quantile: Optional[float] = None, same_to_strength: bool = True, lbw_presets: str = "",
                progress: Progress = None) -> LoraResult:
    """Spec §10.4. exact: sum_i r_i delta_i per module, SVD to ``rank`` (0 = the largest input rank);
    naive: kohya's factor-wise sum (equal ranks; r^2 unless same_to_strength)."""
    if not items:
        raise MergeInputError("lora_list", "is empty.", "list at least one LoRA as name:ratio.")
    check_svd_settings(rank, clamp_quantile)
    loras = [f for _, f in items]
    for lora in loras:
        require_plain(lora, "Merge LoRAs")
    arch = common_architecture(loras)
    ratios = _ratios(items, arch, parse_presets(lbw_presets))
    names = list(dict.fromkeys(m for lora in loras for m in lora.modules))
    target = rank or max(m.rank for lora in loras for m in lora.modules.values())
    result = LoraResult({})
    clamped = []
    for i, name in enumerate(names):
        parts = [(lora.modules[name], _block_ratio(r, name, arch, result.report, lora.name))
                 for lora, r in zip(loras, ratios) if name in lora.modules]
        if all(ratio == 0 for _, ratio in parts):
            continue
        if method == "naive":
            merged = naive_merge(parts, same_to_strength)
            result.add(name, merged.up, merged.down, merged.alpha)
        else:
            dec = exact_merge(parts, target, svd, clamp_quantile)
            if dec.clamped_rank:
                clamped.append(name)
            result.add_decomposition(name, dec)
        if progress:
            progress(i + 1, len(names))
    if clamped:
        result.report.append(f"warning: rank {target} exceeds what {len(clamped)} module(s) allow (e.g. "
                             f"'{clamped[0]}'); they use their largest possible rank.")
    result.report.insert(0, f"{arch.label}: {len(result.tensors) // 3} modules, method {method}"
                         + (f", rank {target}, {svd} SVD, relative error {result.rel_error:.3g}"
                            if method != "naive" else ""))
    return result


def extract_from_loras(first: tuple[LoraItem, LoraFile], second: tuple[LoraItem, LoraFile], alpha: float,
                       beta: float, gamma: float, same_to_strength: bool = True, lbw_presets: str = "") -> LoraResult:
    """Spec §10.5: each LoRA scaled alone by its block ratios (and sqrt(alpha_i/alpha_1)), then the extract
    formula per tensor (up and down separately); alphas are LoRA 1's."""
    gamma = require_ratio("gamma", gamma)
    for value, name in ((alpha, "alpha"), (beta, "beta")):
        if not 0.0 <= require_finite(name, value) <= 1.0:
            raise MergeInputError(name, f"is {value}; extract needs 0 <= {name} <= 1.", f"set {name} in [0, 1].")
    if gamma < 0:
        raise MergeInputError("gamma", f"is {gamma}; it must be >= 0.", "set gamma >= 0 (1 is the default).")
    (_, lora1), (_, lora2) = first, second
    for lora in (lora1, lora2):
        require_plain(lora, "Extract from two LoRAs", "lora_2" if lora is lora2 else "lora_1")
    arch = common_architecture([lora1, lora2], "lora_2")
    r1, r2 = _ratios([first, second], arch, parse_presets(lbw_presets))
    result = LoraResult({})
    for name, m1 in lora1.modules.items():
        m2 = lora2.modules.get(name)
        if m2 is None or m2.up.shape != m1.up.shape or m2.down.shape != m1.down.shape:
            raise MergeInputError("lora_2", f"LoRA '{lora2.name}' has no module '{name}' of the shapes of "
                                  f"'{lora1.name}' (extract works tensor by tensor).",
                                  "use two LoRAs with the same modules and ranks (e.g. two trainings of one "
                                  "config), or merge them with the exact SVD merge instead.")
        a1 = m1.alpha if m1.alpha is not None else float(m1.rank)
        a2 = m2.alpha if m2.alpha is not None else float(m2.rank)
        s2 = math.sqrt(a2 / a1)
        u1, d1 = scaled_factors(m1, _block_ratio(r1, name, arch, result.report, lora1.name), 1.0, same_to_strength)
        u2, d2 = scaled_factors(m2, _block_ratio(r2, name, arch, result.report, lora2.name), s2, same_to_strength)
        result.add(name, extract_two(u1, u2, alpha, beta, gamma), extract_two(d1, d2, alpha, beta, gamma), a1)
    result.report.insert(0, f"{arch.label}: {len(lora1.modules)} modules extracted (alpha {alpha}, beta {beta}, "
                         f"gamma {gamma})")
    return result


def extract_from_models(shapes: Mapping[str, tuple[int, ...]], get_a: Callable[[str], torch.Tensor],
                        get_b: Callable[[str], torch.Tensor], arch: Architecture, alpha: float = 1.0,
                        beta: float = 1.0, rank: int = 64, conv_rank: int = 0, svd: str = "full",
                        clamp_quantile: Optional[float] = None, te_min_diff: float = 0.1,
                        progress: Progress = None) -> LoraResult:
    """Spec §10.7: delta = alpha*A - beta*B per targeted module, SVD to ``rank`` (3x3 convs to ``conv_rank``,
    0 = skip them), alpha = rank. The text encoder is kept only if some module differs by more than
    ``te_min_diff`` (max |delta|), as kohya does. Deltas on one torch thread, SVDs on the idle cores (threads.py)."""
    check_svd_settings(rank, clamp_quantile, conv_rank, min_rank=1)
    alpha, beta = require_ratio("alpha", alpha), require_ratio("beta", beta)
    te_min_diff = require_finite("te_min_diff", te_min_diff)
    with torch_threads(MERGE_THREADS):
        return _extract_from_models(shapes, get_a, get_b, arch, alpha, beta, rank, conv_rank, svd, clamp_quantile,
                                    te_min_diff, progress)


def _extract_from_models(shapes, get_a, get_b, arch, alpha, beta, rank, conv_rank, svd, clamp_quantile, te_min_diff,
                         progress) -> LoraResult:
    unet, te = [], []
    for key, shape in shapes.items():
        name = unet_module(key, arch, shape, conv=conv_rank > 0)
        if name is not None:
            unet.append((key, name, None, shape))
            continue
        te.extend((key, n, rows, shape) for n, rows in te_modules(key, arch, shape))
    if not unet and not te:
        raise MergeInputError("model_a", f"has no {arch.label} U-Net or text-encoder weights a LoRA can target.",
                              "connect SD1/SD2/SDXL models (or checkpoint files).")

    def delta(key, rows):
        d = alpha * get_a(key).float() - beta * get_b(key).float()
        return d if rows is None else d[rows]

    result = LoraResult({})
    te_max = max((float(delta(k, r).abs().max()) for k, _, r, _ in te), default=0.0)
    if te and te_max <= te_min_diff:
        result.report.append(f"text encoder: same (max |delta| {te_max:.3g} <= {te_min_diff}); U-Net only")
        te = []
    todo = unet + te
    clamped = 0
    for i, (key, name, rows, shape) in enumerate(todo):
        d = delta(key, rows)
        r = conv_rank if (len(shape) == 4 and shape[2:] != (1, 1)) else rank
        dec = decompose(d, r, svd, clamp_quantile)
        clamped += dec.clamped_rank
        result.add_decomposition(name, dec)
        if progress:
            progress(i + 1, len(todo))
    result.report.insert(0, f"{arch.label}: {len(unet)} U-Net + {len(te)} text-encoder modules, rank {rank}"
                         + (f", conv rank {conv_rank}" if conv_rank else "")
                         + f", {svd} SVD, relative error {result.rel_error:.4g}")
    if clamped:
        result.report.append(f"note: {clamped} module(s) are smaller than the rank and use their full rank")
    return result


# --- metadata and saving ---------------------------------------------------------------------

BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
MODELSPEC_ARCH = {"sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2-512/lora",
                  "sdxl": "stable-diffusion-xl-v1-base/lora"}
_COPIED = ("ss_network_module", "ss_network_alpha", "ss_network_dim", "ss_v2", "ss_sd_model_name",
           "ss_base_model_version")


def extraction_metadata(arch: Architecture, rank: int, conv_rank: int, title: str) -> dict[str, str]:
    """kohya's fields for an extracted LoRA (the SD1 'sd_v1_v' quirk fixed) plus SAI model-spec fields."""
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank),
            "ss_v2": str(arch.name == "sd2"), "ss_base_model_version": BASE_MODEL_VERSION[arch.name],
            "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": MODELSPEC_ARCH[arch.name],
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
            "modelspec.title": title}
    if conv_rank:
        meta["ss_network_args"] = json.dumps({"conv_dim": str(conv_rank), "conv_alpha": str(conv_rank)})
    return meta


def _tags(value) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def merged_metadata(inputs: list[tuple[LoraItem, LoraFile, dict[str, float]]], mode: str, output_name: str,
                    save_dtype: str, dims: set) -> dict[str, str]:
    """§10.6 modes, on copies (the inputs' metadata is never changed). Quirks fixed: dim and alpha follow
    the output's ranks, and ss_tag_frequency is merged from its JSON text."""
    if mode not in METADATA_MODES:
        raise MergeInputError("metadata", f"'{mode}' is not a metadata mode.", "use one of " + ", ".join(METADATA_MODES))
    per_input = []
    for item, lora, ratios in inputs:
        m = dict(lora.metadata)
        m.update(sshs_ratio=item.ratio_text(), sshs_blocks=blocks26_text(ratios), ss_output_name=lora.name)
        per_input.append(m)
    first = per_input[0]
    if mode.startswith("create new"):
        meta = {k: first[k] for k in _COPIED if k in first}
    elif mode == "use first lora":
        meta = dict(first)
    else:
        meta = dict(first)
        for i, m in enumerate(per_input):
            meta[f"sshs_cp{i}"] = json.dumps(m)
        module = next((m["ss_network_module"] for m in per_input if "ss_network_module" in m), None)
        if module:
            meta["ss_network_module"] = module
        if mode == "merge":
            tags: dict = {}
            for m in per_input:
                for dataset, freq in _tags(m.get("ss_tag_frequency")).items():
                    bucket = tags.setdefault(dataset, {})
                    for tag, count in (freq or {}).items():
                        bucket[tag] = bucket.get(tag, 0) + count
            if tags:
                meta["ss_tag_frequency"] = tags
    meta.pop("ss_output_name", None)
    if mode != "create new without output_name":
        meta["ss_output_name"] = output_name
    if len(dims) == 1:
        meta["ss_network_dim"] = meta["ss_network_alpha"] = str(next(iter(dims)))
    meta["ss_mixed_precision"] = save_dtype
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _write(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], overwrite: bool,
           inputs=(), input_name: str = "filename") -> Path:
    writer = SafetensorsWriter(path, [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()], metadata,
                               overwrite, inputs, input_name)
    try:
        for k, t in tensors.items():
            writer.write(k, t)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def network_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """additional-networks' hashes of the file as it would be saved with ss_* metadata only: sha256 of
    the bytes after the header, and the legacy 8-hex hash of 64 KiB at offset 1 MiB."""
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "h.safetensors", tensors, ss_only, True)
        data = path.read_bytes()
    header_len = 8 + int.from_bytes(data[:8], "little")
    return {"sshs_model_hash": hashlib.sha256(data[header_len:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]}


def save_lora(result: LoraResult, path: str | os.PathLike, metadata: Mapping[str, str], save_dtype: str = "fp16",
              overwrite: bool = False, hashes: bool = True, inputs=(), input_name: str = "filename") -> Path:
    """Written through output_file.OutputFile: complete or absent, never onto one of ``inputs``, an existing
    file replaced only with ``overwrite``."""
    if save_dtype not in SAVE_DTYPES:
        raise MergeInputError("save_dtype", f"'{save_dtype}' is not a save precision.", "use fp16, bf16 or fp32.")
    path = Path(path)
    check_target(path, inputs, overwrite, input_name)
    dtype = SAVE_DTYPES[save_dtype]
    tensors = {k: (t.float() if k.endswith(".alpha") else t.to(dtype)).contiguous() for k, t in result.tensors.items()}
    meta = dict(metadata)
    meta["ss_mixed_precision"] = save_dtype
    if hashes:
        meta.update(network_hashes(tensors, meta))
    return _write(path, tensors, meta, overwrite, inputs, input_name)


def next_free_path(folder: str | os.PathLike, prefix: str, create: bool = True) -> Path:
    """``<folder>/<prefix>_00001_.safetensors``, the first counter not taken (ComfyUI's save naming).
    The prefix is checked before any folder is created (create=False: none is)."""
    folder = Path(folder)
    base = folder / prefix
    inside = os.path.abspath(folder)
    if os.path.isabs(prefix) or os.path.commonpath([os.path.abspath(base.parent), inside]) != inside:
        raise MergeInputError("filename_prefix", f"'{prefix}' leaves the LoRA folder.",
                              "use a plain name or a sub-folder such as merged/my_lora.")
    if create:
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, base.parent, "filename_prefix") from None
    counter = 1
    while (path := base.parent / f"{base.name}_{counter:05d}_.safetensors").exists():
        counter += 1
    return path
