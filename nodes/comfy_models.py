"""MODEL and CLIP objects as merge_core key sources, and patching of clones.

Only public ModelPatcher calls are used: clone, get_key_patches, add_patches.
``get_key_patches`` returns, per key, the unpatched base weight followed by the
object's own patches; passing that list as a patch value makes a nested patch,
so a merged or LoRA'd model contributes its effective weight, lazily, with no
copy of any tensor.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

from ..merge_core.architectures import Architecture, detect_or_auto, require_compatible
from ..merge_core.errors import MergeInputError
from ..merge_core.plan import MERGE, MergePlan

UNET_PREFIX = "diffusion_model."


def key_patches(obj: Any, kind: str) -> dict[str, list]:
    """Per-key patch lists of a MODEL (U-Net keys only) or a CLIP (all keys)."""
    if kind == "model":
        return obj.get_key_patches(UNET_PREFIX)
    return obj.get_key_patches()


def shapes_of(patches: dict[str, list]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v[0][0].shape) for k, v in patches.items()}


def base_weights(obj: Any, kind: str) -> dict[str, Any]:
    """The module state dict of the object merged into (A): its current weights, by key."""
    patcher = obj if kind == "model" else obj.patcher
    return patcher.model_state_dict(UNET_PREFIX if kind == "model" else None)


def base_layout(obj: Any, kind: str,
                weights: Optional[dict] = None) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """Key shapes and dtypes of the object merged into (A), without building its patch lists.

    A contributes through its own clone, so only its key set, shapes and dtypes are
    needed; the module state dict is several times cheaper than get_key_patches.
    weights: base_weights(obj, kind) when already taken.
    """
    sd = weights if weights is not None else base_weights(obj, kind)
    return {k: tuple(v.shape) for k, v in sd.items()}, {k: v.dtype for k, v in sd.items()}


def architecture_of(shapes: dict[str, tuple], input_name: str) -> Architecture:
    """The model's family (declared, else automatic blocks), read from ComfyUI's key names."""
    arch = detect_or_auto(shapes)
    if arch is None:
        raise MergeInputError(input_name, "has no diffusion-model or text-encoder keys this node can split into blocks.",
                              "connect a MODEL from a checkpoint or diffusion-model loader, or a CLIP.")
    return arch


def check_same_architecture(archs: dict[str, Optional[Architecture]], kind: str) -> Architecture:
    arch = archs["a"]
    for name in ("b", "c"):
        if archs.get(name) is not None:
            require_compatible(arch, archs[name], f"{kind}_{name}")
    return arch


def apply_plan(base: Any, plan: MergePlan, others: dict[str, dict[str, list]], prepared=None,
               first: Optional[dict] = None) -> Any:
    """A clone of ``base`` with the plan's linear steps added as nested patches.

    ``prepared`` (calc modes) maps each merged key to ready patches instead:
    {key: (strength, value)}, grouped the same way. ``first``: {key: value} added before every merge
    patch (the NaN/inf observers of A, nonfinite_watch.py).

    One add_patches call per (step, strength, keep) group: core's add_patches
    rebuilds the module state dict on every call, so per-key calls are O(n^2).
    Steps are added in order (all B steps before all C steps), which is the order
    ComfyUI applies them in for each key.
    """
    groups: dict[tuple[int, float, float], dict] = defaultdict(dict)
    for kp in plan.keys:
        if kp.action != MERGE:
            continue
        patch_key = kp.key if kp.input_channels is None else (kp.key, (1, 0, kp.input_channels))
        if prepared is not None:
            if kp.key in prepared:
                strength, value = prepared[kp.key]
                groups[(0, strength, 1.0)][patch_key] = value
            continue
        for index, step in enumerate(plan.settings.mode.linear_steps(kp.alpha, kp.beta)):
            groups[(index, step.strength, step.keep)][patch_key] = others[step.source][kp.key]
    merged = base.clone()
    if first:
        _add(merged, first, 1.0, 1.0)
    for (index, strength, keep), patches in sorted(groups.items(), key=lambda item: item[0][0]):
        _add(merged, patches, strength, keep)
    add_adjust_patches(merged, [(kp.key, kp.adjust) for kp in plan.keys if kp.action == MERGE and kp.adjust])
    return merged


def _add(obj: Any, patches: dict, strength: float, keep: float) -> None:
    accepted = obj.add_patches(patches, strength, keep)
    if len(accepted) != len(patches):
        missing = sorted(set(map(str, patches)) - set(map(str, accepted)))[:3]
        raise RuntimeError(f"ComfyUI refused {len(patches) - len(accepted)} patches, e.g. {missing}")


def add_adjust_patches(obj: Any, ops: list[tuple[str, tuple]]) -> None:
    """Adjust as patches applied after the merge: a scale is a patch that only sets the
    model strength (its zero diff is skipped at strength 0); a shift is a small diff."""
    import torch
    for key, op in ops:
        if op[0] == "scale":
            _add(obj, {key: (torch.zeros(()),)}, 0.0, op[1])
        else:  # the 4 latent channels of out.2.bias
            _add(obj, {key: (torch.tensor(op[1], dtype=torch.float32),)}, 1.0, 1.0)


# --- non-linear calc modes -------------------------------------------------------------

def effective_weight(patch_list: list, device=None) -> "torch.Tensor":
    """A key's weight as its object would load it: base weight + its own patches, float32."""
    import torch

    import comfy.lora
    import comfy.model_management
    base, convert = patch_list[0]
    device = device if device is not None else base.device
    with torch.no_grad():
        w = convert(comfy.model_management.cast_to_device(base, device, torch.float32, copy=True), inplace=True)
        return comfy.lora.calculate_weight(patch_list[1:], w, "", intermediate_dtype=torch.float32).detach()


def lazy_adapter(name: str, compute):
    """A ComfyUI weight adapter that runs ``compute(weight)`` (a new tensor, or None to keep the weight) when
    the model is loaded, writing the result into the weight in place (with an offset, ComfyUI keeps the
    outer tensor). Nothing is held but the closure's patch lists."""
    from comfy.weight_adapter.base import WeightAdapterBase

    class LazyAdapter(WeightAdapterBase):
        def __init__(self):
            self.name = name
            self.loaded_keys = set()
            self.weights = []

        def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                             intermediate_dtype=None, original_weight=None):
            result = compute(weight)
            if result is not None:
                weight.copy_(result)
            return weight

    return LazyAdapter()


def note_fallbacks(fallbacks: Optional[dict], key: str, notes: list) -> None:
    """A method's documented fallback, met at load time: into the plan's fallbacks and the console
    (the node's report was written before the sampler loaded the model)."""
    if notes and fallbacks is not None and key not in fallbacks:
        import logging
        fallbacks[key] = notes[0]
        logging.warning("Merge Suite: %s at %s", notes[0], key)


def make_calc_adapter(settings, kp, b_list, c_list, stats, fallbacks: Optional[dict] = None):
    """A weight adapter that runs one key's calc mode when the model is loaded."""
    import dataclasses

    from ..merge_core.engine import apply_calc
    narrowed = dataclasses.replace(kp, input_channels=None)  # an offset patch hands over weight[:, :n] already

    def compute(weight):
        b = effective_weight(b_list, weight.device)
        c = effective_weight(c_list, weight.device) if c_list is not None else None
        notes: list = []
        result = apply_calc(narrowed, settings, weight, b, c, stats, notes)
        note_fallbacks(fallbacks, kp.key, notes)
        return result

    return lazy_adapter("merge_suite_calcmode", compute)
