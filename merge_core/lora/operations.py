"""The three LoRA-producing operations: merge LoRAs, extract from two LoRAs, extract from two models.

They return ``LoraResult`` (tensors in kohya naming, a report, dims) so the ComfyUI nodes and
the CLI share them; only saving (files.save_lora) touches the disk.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import torch

from ..architectures import Architecture
from ..errors import MergeInputError, require_finite, require_ratio
from ..threads import MERGE_THREADS, torch_threads
from .blocks import LoraItem, block_values, parse_presets
from .files import LoraFile, Progress, common_architecture, require_plain
from .keys import module_block, te_modules, unet_module
from .linalg import decompose, exact_merge, extract_two, naive_merge, scaled_factors
from .result import LoraResult


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
        block = arch.blocks[0]
        report.append(f"warning: LoRA '{lora}': module '{module}' has no known block; it gets the {block} ratio.")
    return ratios[block]


def merge_loras(items: list[tuple[LoraItem, LoraFile]], method: str = "exact", rank: int = 0, svd: str = "full",
                clamp_quantile: Optional[float] = None, same_to_strength: bool = True, lbw_presets: str = "",
                progress: Progress = None) -> LoraResult:
    """docs/lora.md#merging-loras. exact: sum_i r_i delta_i per module, SVD to ``rank`` (0 = the largest input rank);
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
            assert merged.alpha is not None  # the naive merge takes the first LoRA's alpha (or its rank)
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
    """docs/lora.md#extracting-from-two-loras: each LoRA scaled alone by its block ratios (and
    sqrt(alpha_i/alpha_1)), then the extract
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
    """docs/lora.md#extracting-a-lora-from-two-models: delta = alpha*A - beta*B per targeted module, SVD to ``rank``
    (3x3 convs to ``conv_rank``,
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
    unet: list[tuple] = []  # (key, module name, rows, shape)
    te: list[tuple] = []
    for key, shape in shapes.items():
        name = unet_module(key, arch, shape, conv=conv_rank > 0)
        if name is not None:
            unet.append((key, name, None, shape))
            continue
        te.extend((key, n, rows, shape) for n, rows in te_modules(key, arch, shape))
    if not unet and not te:
        raise MergeInputError("model_a", f"has no {arch.label} diffusion-model or text-encoder weights a LoRA can "
                              "target.", "connect two models of one family (or checkpoint files).")

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
