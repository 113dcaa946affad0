"""NaN/inf in a merge node's inputs, counted when ComfyUI loads the merged model instead of when the node runs.

The merge is lazy: the node only adds patches, and ComfyUI reads the inputs when a sampler (or a save) loads
the model. Scanning every input at node time read both models once more (29.5 s of a 41 s Flux merge), so the
count is made where the weights are read anyway: a weight adapter that only looks (it returns the weight
unchanged) is placed after the last patch of each input's patch list (B, C, the models of Combine) and before
the first merge patch of A's key, where ComfyUI hands it that input's effective weight in float32 on the load
device. Each adapter counts once (merged models load again and again; lowvram patches run at every step); when
every watched input has been seen, one console warning names the node, the keys and the counts.

Counts of a plain loaded weight are remembered while its storage lives unchanged (``_version``), so the next
run of a merge of the same models (a sweep, a re-queued graph) has them in its report at no cost.
ModelPatcher.patches is read (not only its public calls) to tell a plain weight of A from a patched one.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from ..merge_core.nonfinite import count_nonfinite, warning

_SCANNED: dict[tuple, tuple] = {}  # _place(weight) -> (weak reference to its storage, its _version then, count)
_prune_at = [4096]


def _place(weight) -> tuple:
    """Where a weight's values live. Not the tensor object: ComfyUI wraps the same storage in a new Parameter
    each time it unpatches a model; the wrappers share the storage and its version counter."""
    return (weight.untyped_storage()._cdata, weight.storage_offset(), tuple(weight.shape), weight.stride(),
            weight.dtype)


def known_count(weight) -> Optional[int]:
    """The remembered NaN/inf count of a loaded weight, or None when unknown (nothing is read)."""
    entry = _SCANNED.get(_place(weight))
    try:
        if entry is not None and not entry[0].expired() and entry[1] == weight._version:
            return entry[2]
    except RuntimeError:  # an inference tensor (made under torch.inference_mode) has no version counter
        pass
    return None


def identity(weight) -> Optional[tuple]:
    """(place, weak reference to the storage, _version) of a plain loaded weight, taken when the node runs;
    None for an inference tensor (no version counter)."""
    from torch.multiprocessing.reductions import StorageWeakRef
    try:
        return _place(weight), StorageWeakRef(weight.untyped_storage()), weight._version
    except RuntimeError:
        return None


def remember(ident: tuple, n: int) -> None:
    """The count of the weight ``identity`` describes. Taken at load from what the node saw: if the weight
    changed in between, its _version no longer matches and the entry is never used."""
    place, storage, version = ident
    if storage.expired():
        return
    _SCANNED[place] = (storage, version, n)
    if len(_SCANNED) > _prune_at[0]:  # forget the weights that are gone
        for gone in [p for p, entry in _SCANNED.items() if entry[0].expired()]:
            del _SCANNED[gone]
        _prune_at[0] = max(4096, 2 * len(_SCANNED))


class InputWatch:
    """The load-time counts of one merge's inputs; reports once, when every watched input has been seen."""

    def __init__(self, label: str, node_id: Optional[str]):
        self.label, self.node_id = label, node_id
        self.counts: dict[str, dict[str, int]] = {}
        self.waiting = 0

    def seen(self, key: str, name: str, n: int) -> None:
        if n:
            self.counts.setdefault(key, {})[name] = n
        self.waiting -= 1
        if self.waiting == 0:
            self.report()

    def report(self) -> None:
        if self.counts:
            text = f"{self.label}: {warning({key: dict(sorted(per.items())) for key, per in self.counts.items()})}"
            logging.warning("Merge Suite: %s", text)
        else:
            logging.info("Merge Suite: %s: NaN/inf check of the inputs at load: all values finite.", self.label)
        # Console only: ComfyUI's progress text on the node is saved into the workflow's widgets_values,
        # where it shifts the node's own widget values when the workflow is loaded again.


OBSERVER_NAME = "merge_suite_nonfinite_check"
_OBSERVER: list = []  # the adapter class, made once (a class per key would cost ms on 1000-key models)


class _Seen:
    """What one observer watches, and whether it has counted: shared by the copies ComfyUI makes of it."""

    def __init__(self, watch: "InputWatch", key: str, input_name: str, original):
        self.watch, self.key, self.input_name, self.original = watch, key, input_name, original
        self.done = False


def observer(watch: InputWatch, key: str, name: str, original=None):
    """A weight adapter that counts the weight it is handed, once, and returns it unchanged.
    original: the plain loaded weight it is handed a copy of, or its ``identity`` (taken when the node
    ran, so that A's weight is not held); its count is remembered.

    Its state travels in ``weights`` (a non-tensor entry, passed over as it is): ComfyUI 0.33's dynamic
    loading copies each adapter as ``type(a)(a.loaded_keys, a.weights)`` before using it."""
    if not _OBSERVER:
        from comfy.weight_adapter.base import WeightAdapterBase

        class Observer(WeightAdapterBase):
            name = OBSERVER_NAME

            def __init__(self, loaded_keys, weights):
                self.loaded_keys, self.weights = loaded_keys, weights

            def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                                 intermediate_dtype=None, original_weights=None):
                seen = self.weights[0]
                if not seen.done:
                    seen.done = True
                    n = count_nonfinite(weight)
                    original = seen.original
                    if original is not None and not isinstance(original, tuple):
                        original = identity(original)
                    if original is not None:
                        remember(original, n)
                    seen.watch.seen(seen.key, seen.input_name, n)
                return weight

        _OBSERVER.append(Observer)
    watch.waiting += 1
    return _OBSERVER[0](set(), [_Seen(watch, key, name, original)])


CHECK_NAME = "merge_suite_result_check"
_CHECK: list = []


class _Check:
    """What one result check looks at; ``passed`` once the key's result was seen in range (the patch lists do
    not change, so later loads and lowvram steps need no second pass)."""

    def __init__(self, watch: "InputWatch", key: str, method: str, input_name: str, dtype):
        self.watch, self.key, self.method, self.input_name, self.dtype = watch, key, method, input_name, dtype
        self.passed = False


FIXES = {"mode": "lower alpha or beta (or the block weights).",
         "calcmode": "lower alpha (or the block weights), or use another calc mode.",
         "adjust": "bring the Adjust values closer to 0."}


def result_check(watch: InputWatch, key: str, method: str, input_name: str, dtype):
    """A weight adapter placed after a key's merge patches: ComfyUI hands it the merged weight in float32, before
    rounding it into the layer's dtype; a NaN/inf there, or a value beyond that dtype's range, while the key's
    inputs were finite (the watch's counts: every observer of the key ran earlier in the same pass, or its
    count was known), raises an error naming the node, the key and the method. Placed only where the merge can
    leave the range (nonfinite.may_leave_range), so a plain weight sum costs nothing more."""
    if not _CHECK:
        from comfy.weight_adapter.base import WeightAdapterBase

        class ResultCheck(WeightAdapterBase):
            name = CHECK_NAME

            def __init__(self, loaded_keys, weights):
                self.loaded_keys, self.weights = loaded_keys, weights

            def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                                 intermediate_dtype=None, original_weights=None):
                check = self.weights[0]
                if not check.passed:
                    from ..merge_core.errors import MergeInputError
                    from ..merge_core.nonfinite import check_result
                    from .errors import MergeNodeError
                    try:
                        check.passed = check_result(
                            weight, check.key, check.method, not check.watch.counts.get(check.key),
                            check.input_name, check.dtype, FIXES.get(check.input_name, FIXES["mode"]))
                    except MergeInputError as exc:
                        raise MergeNodeError(exc.describe(check.watch.label)) from None
                return weight

        _CHECK.append(ResultCheck)
    return _CHECK[0](set(), [_Check(watch, key, method, input_name, dtype)])


def _watched(patch_list: list, adapter) -> list:
    """A copy of an input's patch list that ends with the observer (it sees the effective weight)."""
    return patch_list + [(1.0, adapter, 1.0, None, None)]


def watch_inputs(plan, a: Any, kind: str, patches: dict[str, dict[str, list]], label: str,
                 node_id: Optional[str] = None, a_weights: Optional[dict] = None
                 ) -> tuple[dict[str, dict[str, list]], dict[str, Any]]:
    """Fill plan.nonfinite from remembered counts, watch the rest at load; nothing is read here.

    Returns (the patch lists of B, C or the models with observers appended to the watched keys,
    {key: observer} of A, to be added before the merge patches). plan.nonfinite_pending gets the
    number of merged keys whose inputs are checked at load. a_weights: base_weights(a, kind) when taken."""
    from .comfy_models import base_weights
    patcher = a if kind == "model" else a.patcher
    a_weights = a_weights if a_weights is not None else base_weights(a, kind)
    watch = InputWatch(label, node_id)
    watched = {name: dict(per_key) for name, per_key in patches.items()}
    a_observers, pending = {}, set()
    for kp in plan.merged():
        found = {}
        a_plain = not patcher.patches.get(kp.key)
        n = known_count(a_weights[kp.key]) if a_plain else None
        if n is None:
            a_observers[kp.key] = observer(watch, kp.key, "A", identity(a_weights[kp.key]) if a_plain else None)
            pending.add(kp.key)
        elif n:
            found["A"] = n
        for name, per_key in patches.items():
            plist = per_key.get(kp.key)
            if plist is None:
                continue
            n = known_count(plist[0][0]) if len(plist) == 1 else None
            if n is None:  # the list holds B's weight anyway: its identity is taken at load
                original = plist[0][0] if len(plist) == 1 else None
                watched[name][kp.key] = _watched(plist, observer(watch, kp.key, name.upper(), original))
                pending.add(kp.key)
            elif n:
                found[name.upper()] = n
        if found:
            plan.nonfinite[kp.key] = found
            watch.counts[kp.key] = dict(found)  # the load-time warning names every count
    plan.nonfinite_pending = len(pending)
    plan.input_watch = watch  # the result checks read its counts (result_check)
    return watched, a_observers
