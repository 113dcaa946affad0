"""Re-basin of model B onto model A: family checks, the matching over lazy key sources, B's keys permuted.

Any of the three namings is read (``model.diffusion_model.*`` checkpoints, ComfyUI's ``diffusion_model.*``,
bare U-Net keys); A and B may use different ones. Only SD1 and SDXL U-Nets are accepted: their permutation
groups are known (spec.py); anything else is a MergeInputError naming the input.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch

from ..architectures import UNET_PREFIXES, detect
from ..engine.progress import ProgressFn, StopFn
from ..errors import MergeInputError, require_seed
from ..io.sources import DictSource, FileSource, KeySource, open_source
from .matching import MatchStats, weight_matching
from .permutations import Permutations
from .spec import FAMILIES, PermGroup, heads_or_default, unet_groups

FIX = "choose an SD1 or SDXL checkpoint or diffusion-model file (re-basin is available for SD1 and SDXL U-Nets)."
MAX_ITERATIONS = 1000


def unet_prefix(keys) -> str:
    """The prefix of the U-Net's keys: a checkpoint's, ComfyUI's, or '' for bare U-Net keys."""
    keys = set(keys)
    return next((p for p in (*UNET_PREFIXES, "") if f"{p}input_blocks.0.0.weight" in keys), "")


def unet_shapes(shapes: Mapping[str, tuple], prefix: str) -> dict[str, tuple]:
    return {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}


def require_family(shapes: Mapping[str, tuple], input_name: str) -> str:
    """'sd1' or 'sdxl', or a MergeInputError naming the input: re-basin is available for these two only."""
    arch = detect(shapes)
    if arch is None or arch.name not in FAMILIES:
        what = f"an {arch.label}" if arch is not None and arch.label[0] in "AEIOUS" else (
            f"a {arch.label}" if arch is not None else "not a model family merge_suite recognises")
        raise MergeInputError(input_name, f"is {what} model; re-basin is available for SD1 and SDXL U-Nets.", FIX)
    if arch.name == "sd1" and any(k.endswith("proj_in.weight") and len(v) == 2 for k, v in shapes.items()):
        raise MergeInputError(input_name, "is an SD1-layout U-Net with linear transformer projections (SD2 or the "
                              "SDXL refiner); re-basin is available for SD1 and SDXL U-Nets.", FIX)
    return arch.name


def require_iterations(iterations) -> int:
    n = require_seed(iterations, "iterations")
    if not 1 <= n <= MAX_ITERATIONS:
        raise MergeInputError("iterations", f"is {n}.", f"give a number of rounds from 1 to {MAX_ITERATIONS}.")
    return n


@dataclass
class RebasinResult:
    """The permutations of B that match A, and how the matching went."""
    family: str
    perms: Permutations
    stats: MatchStats
    iterations: int
    seed: int

    @property
    def groups(self) -> list[PermGroup]:
        return self.perms.groups

    def permute(self, rel_key: str, tensor: torch.Tensor) -> torch.Tensor:
        """B's weight ``rel_key`` (U-Net-relative) permuted; the input tensor is never modified."""
        return self.perms.apply(rel_key, tensor)

    def summary(self) -> dict:
        s = self.stats
        permuted = sum(not self.perms.is_identity(g) for g in range(len(self.groups)))
        return {"family": self.family, "groups": len(self.groups), "rounds": s.rounds, "iterations": self.iterations,
                "seed": self.seed, "groups_permuted": permuted,
                "cosine_before": round(s.cosine(s.before), 6), "cosine_after": round(s.cosine(s.after), 6)}

    def report(self) -> str:
        d = self.summary()
        kinds: dict[str, int] = {}
        for g in self.groups:
            kinds[g.kind] = kinds.get(g.kind, 0) + 1
        converged = "converged" if self.stats.converged else "stopped at the limit"
        return "\n".join([
            f"Re-basin ({'SD1' if self.family == 'sd1' else 'SDXL'} U-Net): {d['groups']} permutation groups ("
            + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ").",
            f"Weight matching: {d['rounds']} round(s) of at most {self.iterations} ({converged}), seed {self.seed}; "
            f"{d['groups_permuted']} groups permuted.",
            f"Cosine similarity of A and B over the permuted weights: {d['cosine_before']:.6f} before, "
            f"{d['cosine_after']:.6f} after.",
        ])


def _spec(shapes_a: Mapping[str, tuple], shapes_b: Mapping[str, tuple],
          heads: Optional[Mapping[str, int]]) -> tuple[str, str, str, list[PermGroup]]:
    family = require_family(shapes_a, "model_a")
    family_b = require_family(shapes_b, "model_b")
    if family_b != family:
        raise MergeInputError("model_b", f"is an {family_b.upper()} model but model A is {family.upper()}.",
                              "re-basin two models of the same family.")
    pa, pb = unet_prefix(shapes_a), unet_prefix(shapes_b)
    rel_a, rel_b = unet_shapes(shapes_a, pa), unet_shapes(shapes_b, pb)
    groups = unet_groups(rel_a, heads_or_default(family, heads))
    for key in sorted({k for g in groups for k in g.keys()}):
        if rel_b.get(key) != rel_a[key]:
            raise MergeInputError("model_b", f"has {key} with the shape {rel_b.get(key)} but model A has "
                                  f"{rel_a[key]}.", "re-basin two models of the same family and size.")
    return family, pa, pb, groups


def rebasin_loaders(shapes_a: Mapping[str, tuple], shapes_b: Mapping[str, tuple],
                    load_a: Callable[[str], torch.Tensor], load_b: Callable[[str], torch.Tensor], *,
                    iterations: int = 10, seed: int = 0, heads: Optional[Mapping[str, int]] = None,
                    progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None) -> RebasinResult:
    """Re-basin from key shapes (full key names) and loaders of one key (full key names).

    heads: {attention module's U-Net-relative name: heads} when the model says (ComfyUI); else the family's."""
    iterations, seed = require_iterations(iterations), require_seed(seed)
    family, pa, pb, groups = _spec(shapes_a, shapes_b, heads)
    perms, stats = weight_matching(groups, lambda k: load_a(pa + k), lambda k: load_b(pb + k), iterations, seed,
                                   progress, should_stop)
    return RebasinResult(family, perms, stats, iterations, seed)


def _source(model, input_name: str) -> KeySource:
    if isinstance(model, Mapping) or isinstance(model, str) or hasattr(model, "__fspath__"):
        return open_source(model, input_name, input_name)
    return model


def rebasin(model_a, model_b, *, iterations: int = 10, seed: int = 0, heads: Optional[Mapping[str, int]] = None,
            progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None) -> RebasinResult:
    """Re-basin B onto A: each is a state dict, a file path or a KeySource (read lazily, one key at a time)."""
    a, b = _source(model_a, "model_a"), _source(model_b, "model_b")
    return rebasin_loaders(a.shapes(), b.shapes(), a.get, b.get, iterations=iterations, seed=seed, heads=heads,
                           progress=progress, should_stop=should_stop)


def rebased_state_dict(model_b: Mapping[str, torch.Tensor], result: RebasinResult) -> dict[str, torch.Tensor]:
    """Every key of B, the permuted ones as new tensors (B is not modified)."""
    prefix = unet_prefix(model_b)
    return {k: result.permute(k[len(prefix):], v) if k.startswith(prefix) else v for k, v in model_b.items()}


def rebasin_files(a: str, b: str, output: str, *, iterations: int = 10, seed: int = 0, overwrite: bool = False,
                  progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None
                  ) -> tuple[str, RebasinResult]:
    """Write B permuted to match A into ``output`` (safetensors): every other key of B as stored, B's metadata
    plus a ``merge_suite_rebasin`` note. The file appears complete or not at all; inputs are never overwritten."""
    from ..io.output_file import check_target
    from ..io.safetensors_file import SafetensorsWriter
    check_target(output, [a, b], overwrite, "output")  # before the matching: a bad name fails at once
    src_a, src_b = open_source(a, "model_a", "model_a"), open_source(b, "model_b", "model_b")
    try:
        if type(src_b) is not FileSource:
            raise MergeInputError("model_b", "is stored quantized (fp8 or GGUF); re-basin writes B's tensors as "
                                  "they are stored.", "give B as an fp16, bf16 or fp32 safetensors file.")
        result = rebasin_loaders(src_a.shapes(), src_b.shapes(), src_a.get, src_b.get, iterations=iterations,
                                 seed=seed, progress=progress, should_stop=should_stop)
        shapes = src_b.shapes()
        prefix = unet_prefix(shapes)
        permuted = {prefix + k for k in result.perms.moved_keys()}
        meta = dict(getattr(src_b.reader, "metadata", None) or {})
        meta["merge_suite_rebasin"] = json.dumps({"reference": src_a.name, "permuted": src_b.name,
                                                  **result.summary()}, sort_keys=True)
        writer = SafetensorsWriter(output, [(k, src_b.dtype(k), s) for k, s in shapes.items()], meta, overwrite,
                                   [a, b], "output")
        try:
            for key in shapes:
                if key in permuted:
                    writer.write(key, result.permute(key[len(prefix):], src_b.get(key)))
                else:
                    writer.write_raw(key, src_b.raw(key))
            path = writer.commit()
        except BaseException:
            writer.abort()
            raise
    finally:
        src_a.close()
        src_b.close()
    return str(path), result


__all__ = ["DictSource", "RebasinResult", "rebased_state_dict", "rebasin", "rebasin_files", "rebasin_loaders"]
