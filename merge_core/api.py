"""Library entry points: merge state dicts or safetensors files with SuperMerger's modes."""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional, Sequence, Union, cast

import torch

from .analysis.similarity import Analysis, asimilarity, asimilarity_sites, compare_keys
from .architectures import Architecture, detect, detect_or_auto, require_compatible
from .blocks.elemental import parse_elemental
from .blocks.selection import parse_selection
from .blocks.weights import parse_block_weights
from .engine import DictSink, FileSink, ProgressFn, StopFn, run_merge
from .errors import MergeInputError, require_ratio, require_seed
from .io.bare_unet import StrippingSink, prefix_bare
from .io.output_file import check_target
from .io.precision import ALL_PRECISIONS, output_format
from .io.released_names import with_released_names
from .io.sources import KeySource, open_source
from .methods.adjust import parse_adjust, require_adjustable
from .methods.calcmodes import get_calc_mode, resolve_modes
from .methods.modes import get_mode
from .plan import MergePlan, MergeSettings, build_plan

OUTPUT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}  # plain casts
OUTPUT_PRECISIONS = ALL_PRECISIONS  # every precision a written file can take (io/precision.py); None: as in A


def make_settings(arch: Architecture, mode: str, alpha: float = 0.5, beta: float = 0.25,
                  blocks_alpha: Optional[str] = None, blocks_beta: Optional[str] = None,
                  calcmode: str = "normal", gamma: float = 0.3, seed: int = 0,
                  tensor2_corrected: bool = False, elemental: str = "",
                  elemental_full_key: bool = False, adjust: str = "", include_exclude: str = "") -> MergeSettings:
    """Parse user-facing settings (mode label, calc mode, block-weight and elemental text) for one architecture."""
    merge_mode, calc = resolve_modes(get_mode(mode), get_calc_mode(calcmode))
    return MergeSettings(
        mode=merge_mode, alpha=require_ratio("alpha", alpha), beta=require_ratio("beta", beta),
        blocks_alpha=parse_block_weights(blocks_alpha, arch, "blocks_alpha", alpha),
        blocks_beta=parse_block_weights(blocks_beta, arch, "blocks_beta", beta),
        calc=calc, gamma=require_ratio("gamma", gamma), seed=require_seed(seed),
        tensor2_corrected=bool(tensor2_corrected),
        elemental=parse_elemental(elemental, arch), elemental_full_key=bool(elemental_full_key),
        adjust=require_adjustable(parse_adjust(adjust), arch), selection=parse_selection(include_exclude, arch),
    )


def detect_architecture(sources: Mapping[str, KeySource]) -> Architecture:
    """The architecture of A, checked against B and C."""
    archs = {name: detect_or_auto(src.shapes()) for name, src in sources.items()}
    arch = archs["a"] or archs.get("b")
    if arch is None:
        raise MergeInputError("model_a", "has no diffusion-model or text-encoder keys this tool recognises.",
                              "pass a checkpoint or diffusion-model file (python -m merge_core blocks FILE "
                              "shows how a file is read).")
    for name in ("b", "c"):
        if name in archs:
            require_not_cut_short(arch, archs[name], sources, name)
            require_compatible(arch, archs[name], f"model_{name}")
    return arch


def require_not_cut_short(arch: Architecture, other: Optional[Architecture], sources: Mapping[str, KeySource],
                          name: str) -> None:
    """A declared A and a B (or C) that no family matches because tensors are missing (a file cut short by
    its conversion) is said as such, not as a merge with an unknown family. Keys compare without their
    diffusion-model prefix (a bare file that lost its signature is no longer prefixed to pair with A)."""
    if arch.name == "auto" or other is None or other.name != "auto":
        return
    shapes_a = sources["a"].shapes()
    present = {k.split("diffusion_model.", 1)[-1] for k in sources[name].shapes()}
    missing = [k for k in (k.split("diffusion_model.", 1)[-1] for k in shapes_a) if k not in present]
    if missing and len(shapes_a) - len(missing) > len(missing):  # mostly A's keys: the same family, cut short
        raise MergeInputError(f"model_{name}", f"is not a complete {arch.label} model: {len(missing)} of model A's "
                              f"{len(shapes_a)} tensors are missing from it (first: '{missing[0]}').",
                              "use a complete file (convert or download it again).")


def plan_merge(sources: Mapping[str, KeySource], mode: str, alpha: float = 0.5, beta: float = 0.25,
               blocks_alpha: Optional[str] = None, blocks_beta: Optional[str] = None,
               copy_b_only_keys: bool = True, **calc: Any) -> MergePlan:
    """calc: calcmode, gamma, seed, tensor2_corrected (see make_settings)."""
    arch = detect_architecture(sources)
    settings = make_settings(arch, mode, alpha, beta, blocks_alpha, blocks_beta, **calc)
    if settings.needs_c and "c" not in sources:
        what = settings.calc.name if settings.calc is not None else settings.mode.label
        raise MergeInputError("model_c", f"is required by '{what}' but was not given.",
                              "pass a third model C, or use Weight sum.")
    used = [n for n in ("a", "b", "c") if n in sources and (n != "c" or settings.needs_c)]
    dtypes = {n: {k: sources[n].dtype(k) for k in sources[n].shapes()} for n in used}
    return build_plan(arch, settings, sources["a"].shapes(), sources["b"].shapes(),
                      sources["c"].shapes() if "c" in sources else None, copy_b_only_keys, dtypes)


def recipe_metadata(plan: MergePlan, names: Mapping[str, str],
                    hashes: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """merge_suite_recipe (flat JSON) plus SuperMerger's sd_merge_recipe / sd_merge_models
    (docs/files.md#metadata-written-with-a-merge);
    names and hashes are keyed by "A", "B", "C"."""
    s = cast(MergeSettings, plan.settings)  # a two-model merge's plan
    recipe = {
        "type": "merge-suite", "mode": s.mode.label, "calcmode": s.calc.name if s.calc else "normal",
        "gamma": s.gamma if (s.calc and s.calc.uses_gamma) else None,
        "seed": s.seed if (s.calc and s.calc.name == "plus random") else None,
        "alpha": s.alpha, "beta": s.beta if (s.mode.uses_beta or (s.calc and s.calc.uses_beta)) else None,
        "blocks_alpha": s.blocks_alpha.as_text() if s.blocks_alpha else None,
        "blocks_beta": s.blocks_beta.as_text() if (s.blocks_beta and s.beta_from_blocks) else None,
        "elemental": ",".join(r.text for r in s.elemental) or None,
        "adjust": s.adjust.text if s.adjust else None,
        "include_exclude": s.selection.text if s.selection else None,
        "architecture": plan.arch.name,
        "models": dict(names),
    }
    from . import recipe as recipes
    params = {k: recipe[k] for k in recipes.SETTING_DEFAULTS if recipe.get(k) is not None}
    params.update(tensor2_corrected=s.tensor2_corrected, elemental_full_key=s.elemental_full_key)
    leaves = {k.lower(): recipes.leaf(name, (hashes or {}).get(k, "")) for k, name in names.items()}
    tree = recipes.merge_step("checkpoint", params, s, leaves)
    return {"merge_suite_recipe": json.dumps(recipe, sort_keys=True), **recipes.file_metadata(tree, tree)}


def merge_state_dicts(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                      c: Optional[Mapping[str, torch.Tensor]] = None, *, mode: str = "Weight sum",
                      alpha: float = 0.5, beta: float = 0.25, blocks_alpha: Optional[str] = None,
                      blocks_beta: Optional[str] = None, dtype: Optional[torch.dtype] = None,
                      **calc: Any) -> dict[str, torch.Tensor]:
    """Merge in-memory state dicts; returns a new dict (inputs are not modified).

    calc: calcmode ("normal", "cosineA", ...), gamma, seed, tensor2_corrected.
    """
    sources = {"a": open_source(a, "A"), "b": open_source(b, "B")}
    if c is not None:
        sources["c"] = open_source(c, "C")
    plan = plan_merge(sources, mode, alpha, beta, blocks_alpha, blocks_beta, **calc)
    return run_merge(plan, sources, DictSink(), dtype)


def open_files(paths: Mapping[str, str]) -> dict[str, KeySource]:
    """{"a": source, ...} for {"a": path, ...}; a damaged file names its input (model_a, ...). Each file is
    read under its family's released parameter names (io/released_names.py): a Flux file saved by
    ComfyUI 0.33 pairs with an original download, and a merged file keeps the released names."""
    sources: dict[str, KeySource] = {}
    try:
        for name, path in paths.items():
            sources[name] = open_source(path, input_name=f"model_{name}")
            sources[name] = with_released_names(sources[name])
    except BaseException:
        for src in sources.values():
            src.close()
        raise
    return sources


def kept_metadata(source: KeySource) -> dict[str, str]:
    """A's modelspec entries (architecture, prediction type, title...), kept in the merged file."""
    meta = getattr(getattr(source, "reader", None), "metadata", None) or {}
    return {k: v for k, v in meta.items() if k.startswith("modelspec.")}


def merge_files(a: str, b: str, c: Optional[str], output: str, *, mode: str = "Weight sum",
                alpha: float = 0.5, beta: float = 0.25, blocks_alpha: Optional[str] = None,
                blocks_beta: Optional[str] = None, dtype: Optional[str] = None, overwrite: bool = False,
                progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None,
                hash_inputs: bool = False, device: Optional[str] = "cpu",
                extra_metadata: Optional[Mapping[str, str]] = None, scaled_layout: str = "scaled_fp8",
                **calc: Any) -> MergePlan:
    """Merge safetensors or GGUF files key by key into ``output`` (written atomically, never onto an input).

    dtype: an output precision (OUTPUT_PRECISIONS) or None: as in A (io/precision.py says what that
    means for quantised inputs). scaled_layout: how dtype "scaled_fp8" is written, "scaled_fp8" (loads
    in ComfyUI 0.3.75 and 0.33) or "comfy_quant" (0.33's own; io/precision.py).
    device: auto, cpu or cuda (merge_core/device.py).
    calc: calcmode, gamma, seed, tensor2_corrected (see make_settings).
    """
    from .device import resolve_device
    if dtype is not None and dtype not in OUTPUT_PRECISIONS:
        raise MergeInputError("dtype", f"unknown output dtype '{dtype}'.", "use " + ", ".join(OUTPUT_PRECISIONS) + ".")
    math_on = resolve_device(device)
    paths = {"a": a, "b": b} | ({"c": c} if c else {})
    check_target(output, paths.values(), overwrite)  # before any work: an input, a directory, an existing file
    # all-bare inputs keep their keys (Architecture.bare reads them); a mix of a diffusion-model file and a
    # checkpoint pairs up through the checkpoint prefix, and the output takes A's naming
    sources, bare = prefix_bare(open_files(paths))
    try:
        plan = plan_merge(sources, mode, alpha, beta, blocks_alpha, blocks_beta, **calc)
        hashes = {}
        if hash_inputs:  # SuperMerger's sd_merge_models: lets Load Recipe find the inputs after a rename
            from .io.filehash import file_sha256
            hashes = {k.upper(): file_sha256(p) for k, p in paths.items()}
        fmt = output_format(dtype, plan, sources, scaled_layout=scaled_layout)
        meta = kept_metadata(sources["a"]) | fmt.metadata | recipe_metadata(
            plan, {k.upper(): s.name for k, s in sources.items()}, hashes) | dict(extra_metadata or {})
        sink = FileSink(output, meta, overwrite, list(paths.values()))
        run_merge(plan, sources, fmt.wrap(StrippingSink(sink) if bare else sink),
                  fmt.engine_dtype, progress, should_stop, math_on)
        return plan
    finally:
        for src in sources.values():
            src.close()


def analysis_architecture(shapes_a: Mapping[str, Sequence[int]], shapes_b: Mapping[str, Sequence[int]],
                          mismatch: str = "error") -> Architecture:
    """A's architecture; B of another one is an error unless mismatch == "common" (compare shared keys)."""
    arch_a, arch_b = detect(shapes_a), detect(shapes_b)
    arch = arch_a or arch_b
    if arch is None:
        raise MergeInputError("model_a", "is not a recognised SD1, SD2 or SDXL model.",
                              "pass a Stable Diffusion checkpoint or U-Net file.")
    if mismatch != "common":
        require_compatible(arch, arch_b, "model_b")
    return arch


def analyze_files(a: str, b: str, *, method: str = "cosine", include: Iterable[str] = ("te", "unet"),
                  mismatch: str = "error", progress: Optional[ProgressFn] = None
                  ) -> tuple[Architecture, Union[Analysis, list[tuple[str, float]]]]:
    """Similarity of two safetensors files: (architecture, an Analysis) for "cosine", or (architecture,
    ASimilarity rows (site, %)) for "asim". mismatch="common" compares two architectures on shared keys."""
    sources = open_files({"a": a, "b": b})
    try:
        shapes_a, shapes_b = sources["a"].shapes(), sources["b"].shapes()
        arch = analysis_architecture(shapes_a, shapes_b, mismatch)

        def fetch(key):
            return sources["a"].get(key), sources["b"].get(key)
        if method == "asim":
            return arch, asimilarity(asimilarity_sites(shapes_a, shapes_b, arch), fetch)
        if method != "cosine":
            raise MergeInputError("method", f"unknown method '{method}'.", "use cosine or asim.")
        return arch, compare_keys(shapes_a, shapes_b, arch, fetch, include, progress)
    finally:
        for src in sources.values():
            src.close()
