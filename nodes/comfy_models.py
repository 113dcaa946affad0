"""MODEL and CLIP objects as merge_core key sources, and patching of clones.

The public ModelPatcher calls are used: clone, get_key_patches, add_patches.
``get_key_patches`` returns, per key, the unpatched base weight followed by the
object's own patches; passing that list as a patch value makes a nested patch,
so a merged or LoRA'd model contributes its effective weight, lazily, with no
copy of any tensor.

Layers that store their weight encoded (0.3.75's scaled fp8, 0.33's quantized
layers) list their encoding in the state dict too: scales, the format, input
scales. Those keys are not weights: they are left out of every key source here
(merging two models' scales gives wrong values, and ComfyUI 0.33 cannot even
resolve its ``weight_scale``/``comfy_quant`` entries as patchable attributes, so
its get_key_patches fails on such a model); the layer's weight is read through
its own convert function, dequantized.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import TYPE_CHECKING, Any, Optional

from ..merge_core.architectures import Architecture, detect_or_auto, require_compatible
from ..merge_core.errors import MergeInputError
from ..merge_core.plan import MERGE, MergePlan

if TYPE_CHECKING:  # for annotations only: the functions below import torch where they use it
    import torch

UNET_PREFIX = "diffusion_model."
STORED = ("weight", "bias")  # what an encoded layer holds as weights; its other keys describe the encoding


def patcher_of(obj: Any, kind: str) -> Any:
    """The ModelPatcher of a MODEL (itself) or a CLIP."""
    return obj if kind == "model" else obj.patcher


def quantized_tensor_type() -> Optional[type]:
    """The host's quantized tensor class (comfy.quant_ops.QuantizedTensor), None where there is none."""
    try:
        from comfy.quant_ops import QuantizedTensor
    except ImportError:
        return None
    return QuantizedTensor


def _layers(model: Any):
    """key -> (its layer, its attribute name), looked up once per layer; (None, name) for a key with no layer."""
    found: dict[str, Any] = {}

    def layer(key: str):
        path, _, name = key.rpartition(".")
        if path not in found:
            try:
                found[path] = model.get_submodule(path) if path else model
            except AttributeError:
                found[path] = None
        return found[path], name
    return layer


def has_encoded_layers(model: Any) -> bool:
    """Whether any layer stores its weight encoded (a convert_weight function: 0.3.75's scaled fp8, 0.33's
    mixed-precision layers). One pass over the modules, so that the common plain model skips the per-key
    checks below on the node's hot path."""
    return any(hasattr(module, "convert_weight") for module in model.modules())


def weight_keys(model: Any, keys) -> list[str]:
    """The keys of ``model``'s state dict that hold weights: without a layer's encoding entries.

    An entry that is no attribute of its layer exists only in the file format (0.33: weight_scale,
    comfy_quant); a layer with a convert_weight function (its weight is stored encoded) holds only its
    weight and bias as weights, its other parameters are scales (0.3.75: scale_weight; 0.33: input_scale).
    A layer's weight comes before its bias, as in a plain layer (0.33 writes a quantized layer's bias first),
    so that the keys are in the same order as the same model's unquantized keys."""
    if not has_encoded_layers(model):
        return list(keys)
    layer = _layers(model)
    groups: dict[str, list[str]] = {}
    for key in keys:
        module, name = layer(key)
        if module is not None and (not hasattr(module, name) or
                                   (name not in STORED and hasattr(module, "convert_weight"))):
            continue
        groups.setdefault(key.rpartition(".")[0], []).append(key)
    rank = {name: i for i, name in enumerate(STORED)}
    return [k for group in groups.values()
            for k in sorted(group, key=lambda k: rank.get(k.rpartition(".")[2], len(STORED)))]


def _unchanged(weight, **kwargs):
    return weight


def _patch_list(patcher: Any, key: str) -> list:
    """One key's [(unpatched weight, its layer's convert), *its patches], as get_key_patches gives it: the
    weight saved aside while the model is loaded with patches applied (or hooks) is the unpatched one."""
    from comfy.model_patcher import get_key_weight
    weight, _set, convert = get_key_weight(patcher.model, key)
    saved = patcher.backup.get(key)
    if saved is not None:
        weight = saved.weight
    hooked = getattr(patcher, "hook_backup", {}).get(key)
    if hooked is not None:
        weight = hooked[0]
    return [(weight, convert if convert is not None else _unchanged)] + list(patcher.patches.get(key, ()))


def patch_lists(patcher: Any, prefix: Optional[str] = None, input_name: str = "model") -> dict[str, list]:
    """Per-key patch lists of a ModelPatcher's weights (keys starting with ``prefix``), encoding keys left out.

    A model without encoded layers gives ComfyUI's own get_key_patches; otherwise the lists are built per
    weight key the same way (get_key_patches would stop at the first key it cannot resolve)."""
    if not has_encoded_layers(patcher.model):
        return patcher.get_key_patches(prefix)
    keys = list(patcher.model_state_dict(prefix))
    kept = weight_keys(patcher.model, keys)
    if kept == keys:
        return patcher.get_key_patches(prefix)
    lists = {}
    for key in kept:
        try:
            lists[key] = _patch_list(patcher, key)
        except (AttributeError, KeyError) as exc:
            raise MergeInputError(input_name, f"has a weight ComfyUI cannot read back: {key} ({exc}).",
                                  "load the model unquantized (an fp16/bf16 file, or weight_dtype default), "
                                  "or report the model's format to merge_suite.") from None
    return lists


def key_patches(obj: Any, kind: str, input_name: Optional[str] = None) -> dict[str, list]:
    """Per-key patch lists of a MODEL (U-Net keys only) or a CLIP (all keys); input_name names it in errors."""
    return patch_lists(patcher_of(obj, kind), UNET_PREFIX if kind == "model" else None, input_name or kind)


def shapes_of(patches: dict[str, list]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v[0][0].shape) for k, v in patches.items()}


def base_weights(obj: Any, kind: str) -> dict[str, Any]:
    """The module state dict of the object merged into (A): its current weights, by key (encoding keys
    left out; a quantized weight as the data it stores)."""
    patcher = patcher_of(obj, kind)
    sd = patcher.model_state_dict(UNET_PREFIX if kind == "model" else None)
    return {k: sd[k] for k in weight_keys(patcher.model, list(sd))}


def base_layout(obj: Any, kind: str,
                weights: Optional[dict] = None) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """Key shapes and dtypes of the object merged into (A), without building its patch lists.

    A contributes through its own clone, so only its key set, shapes and dtypes are
    needed; the module state dict is several times cheaper than get_key_patches.
    A quantized layer's weight has the shape and dtype it dequantizes to (its stored data may be packed).
    weights: base_weights(obj, kind) when already taken.
    """
    sd = weights if weights is not None else base_weights(obj, kind)
    shapes, dtypes = {k: tuple(v.shape) for k, v in sd.items()}, {k: v.dtype for k, v in sd.items()}
    quantized = quantized_tensor_type()
    model = patcher_of(obj, kind).model
    if quantized is not None and has_encoded_layers(model):
        layer = _layers(model)
        for key in sd:
            module, name = layer(key)
            value = getattr(module, name, None) if module is not None and name == "weight" else None
            if isinstance(value, quantized):
                shapes[key], dtypes[key] = tuple(value.shape), value.dtype
    return shapes, dtypes


def serialised_layers(patcher: Any, lists: dict[str, list]) -> dict[str, "OrderedDict"]:
    """{weight key: {entry key: (shape, dtype, getter)}} for each layer whose quantized weight the host
    writes as several state-dict entries (0.33: its stored data, weight_scale, comfy_quant, input_scale);
    the getters re-encode the key's effective weight through the layer itself (its set_weight, as ComfyUI
    stores a patched weight, rounding to nearest), so the entries load back as that quantized layer.
    Hosts whose quantized layers are not written that way (0.3.75) have none here: their weights are
    saved dequantized."""
    quantized = quantized_tensor_type()
    if quantized is None:
        return {}
    layer = _layers(patcher.model)
    out = {}
    for key, plist in lists.items():
        module, name = layer(key)
        if name != "weight" or not isinstance(plist[0][0], quantized) or not hasattr(module, "set_weight"):
            continue
        prefix = key[:-len(name)]
        entries = OrderedDict((prefix + k, v) for k, v in module.state_dict().items() if k != "bias")
        if all(hasattr(module, k[len(prefix):]) for k in entries):  # the layer is not written in pieces
            continue
        shared: dict = {}
        out[key] = OrderedDict((k, (tuple(v.shape), v.dtype, _piece(k, entries, module, key, plist, shared)))
                               for k, v in entries.items())
    return out


def _piece(entry: str, entries: dict, module: Any, key: str, plist: list, shared: dict):
    """The getter of one entry of a re-encoded layer: the layer is encoded once, when its first entry is
    asked for, and let go when its last one was taken (``shared``: the layer's entries meanwhile)."""
    def get():
        if not shared:
            value = effective_weight(plist)
            try:
                encoded = module.set_weight(value.to(module.weight.dtype), return_weight=True, seed=0)
                pieces = encoded.state_dict(key)
            except Exception as exc:  # a format this host cannot quantize into here (e.g. no kernel on this device)
                raise MergeInputError("precision", f"'as loaded' cannot re-encode the quantized layer {key} "
                                      f"({type(exc).__name__}: {exc}).",
                                      "choose fp16, bf16 or fp32 (the weights are then written "
                                      "dequantized).") from None
            shared.update(entries)
            shared.update(pieces)
            shared["left"] = set(entries)
        shared["left"].discard(entry)
        value = shared[entry]
        if not shared["left"]:
            shared.clear()
        return value
    return get


def architecture_of(shapes: dict[str, tuple], input_name: str) -> Architecture:
    """The model's family (declared, else automatic blocks), read from ComfyUI's key names."""
    arch = detect_or_auto(shapes)
    if arch is None:
        raise MergeInputError(input_name,
                              "has no diffusion-model or text-encoder keys this node can split into blocks.",
                              "connect a MODEL from a checkpoint or diffusion-model loader, or a CLIP.")
    return arch


def check_same_architecture(archs: dict[str, Optional[Architecture]], kind: str) -> Architecture:
    arch = archs["a"]
    for name in ("b", "c"):
        if archs.get(name) is not None:
            require_compatible(arch, archs[name], f"{kind}_{name}")
    return arch


def apply_plan(base: Any, plan: MergePlan, others: dict[str, dict[str, list]], prepared=None,
               first: Optional[dict] = None, last: Optional[dict] = None) -> Any:
    """A clone of ``base`` with the plan's linear steps added as nested patches.

    ``prepared`` (calc modes) maps each merged key to ready patches instead:
    {key: (strength, value)}, grouped the same way. ``first``: {key: value} added before every merge
    patch (the NaN/inf observers of A, nonfinite_watch.py); ``last``: {key: value} added after them all (the
    checks of a result that may leave its layer's range, nonfinite_watch.result_check).

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
    for (_index, strength, keep), patches in sorted(groups.items(), key=lambda item: item[0][0]):
        _add(merged, patches, strength, keep)
    add_adjust_patches(merged, [(kp.key, kp.adjust) for kp in plan.keys if kp.action == MERGE and kp.adjust])
    if last:
        _add(merged, last, 1.0, 1.0)
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
    """A key's weight as its object would load it: base weight (dequantized by its layer's convert) + its own
    patches, float32."""
    import torch

    import comfy.lora
    import comfy.model_management
    base, convert = patch_list[0]
    device = device if device is not None else base.device
    with torch.no_grad():
        w = plain(convert(comfy.model_management.cast_to_device(base, device, torch.float32, copy=True), inplace=True))
        return comfy.lora.calculate_weight(patch_list[1:], w, "", intermediate_dtype=torch.float32).detach()


def plain(weight) -> "torch.Tensor":
    """A float32 tensor of a weight's values: a quantized tensor a layer's convert left as it was is
    dequantized here."""
    import torch
    quantized = quantized_tensor_type()
    if quantized is not None and isinstance(weight, quantized):
        weight = weight.dequantize()
    return weight if weight.dtype == torch.float32 else weight.float()


def value_dtype(dtype) -> "torch.dtype":
    """The dtype a value computed for a key is kept in (a baked weight, a prepared diff): the key's dtype
    when it is a 16- or 32-bit float, else float16: an fp8 weight may be stored scaled (its raw values are not
    the weight), and ComfyUI rounds the patched weight into the layer's own format at load anyway."""
    import torch
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float16


def lazy_adapter(name: str, compute):
    """A ComfyUI weight adapter that runs ``compute(weight)`` (a new tensor, or None to keep the weight) when
    the model is loaded, writing the result into the weight in place (with an offset, ComfyUI keeps the
    outer tensor). Nothing is held but the closure's patch lists.

    ComfyUI 0.33's dynamic loading copies each adapter before use as ``type(a)(a.loaded_keys, a.weights)``
    (with its tensors moved): the class keeps the closure, so a copy computes the same."""
    from comfy.weight_adapter.base import WeightAdapterBase

    class LazyAdapter(WeightAdapterBase):
        def __init__(self, loaded_keys=None, weights=None):
            self.name = name
            self.loaded_keys = loaded_keys if loaded_keys is not None else set()
            self.weights = weights if weights is not None else []

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


def check_loaded(result, inputs: list, key: str, method: str, input_name: str, label: str, dtype=None) -> None:
    """A merged key computed at load (KSampler, Save Checkpoint): a NaN/inf result, or one beyond the range of
    the layer's dtype ``dtype`` that ComfyUI rounds it into, while every input was finite, is an error naming
    the node, the key and the method (merge_core/nonfinite.py says why); explained by NaN/inf inputs, it is
    merged as the formula says (the input watch warns). One aminmax pass over the result."""
    from ..merge_core.nonfinite import all_finite, check_result
    from .errors import MergeNodeError
    try:
        check_result(result, key, method, lambda: all(all_finite(t) for t in inputs if t is not None), input_name,
                     dtype, "lower alpha, the weights or the drop rate (kept values are scaled by 1/(1 - p)).")
    except MergeInputError as exc:
        raise MergeNodeError(exc.describe(label)) from None


def make_calc_adapter(settings, kp, b_list, c_list, stats, fallbacks: Optional[dict] = None,
                      label: str = "Merge", dtype=None):
    """A weight adapter that runs one key's calc mode when the model is loaded; its result is checked
    (check_loaded: label names the node, dtype is the layer's)."""
    import dataclasses

    from ..merge_core.engine import apply_calc
    narrowed = dataclasses.replace(kp, input_channels=None)  # an offset patch hands over weight[:, :n] already

    def compute(weight):
        b = effective_weight(b_list, weight.device)
        c = effective_weight(c_list, weight.device) if c_list is not None else None
        notes: list = []
        result = apply_calc(narrowed, settings, weight, b, c, stats, notes)
        note_fallbacks(fallbacks, kp.key, notes)
        if result is not None:
            check_loaded(result, [weight, b, c], kp.key, settings.calc.name, "calcmode", label, dtype)
        return result

    return lazy_adapter("merge_suite_calcmode", compute)
