"""The ComfyUI side of the merge history: where the log lives (ComfyUI's user directory) and how nodes record.

merge_core.history keeps the file; this module turns a node's run into an entry (its recipe, its input
files with what is cheaply known about them, the prompt id) and skips a merge this server already recorded,
so a graph re-run after its cache was dropped adds nothing. Recording never fails or slows a merge: inputs
get a quick fingerprint and a sha256 only when one was already computed, and any error is one warning.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from ..merge_core import recipe as core
from ..merge_core.history import FILE_NAME, History, digest, enabled, entry, input_record
from ..merge_core.io.filehash import known_sha256

_LOGS: dict[str, History] = {}
_RECORDED: dict[str, set[str]] = {}  # per log file: the digests this process appended there
_LOCK = threading.Lock()
_LOG = logging.getLogger("merge_suite")
CHECKPOINTS, DIFFUSION_MODELS, LORAS = "checkpoints", "diffusion_models", "loras"


def history_path() -> Path:
    import folder_paths
    return Path(folder_paths.get_user_directory()) / "merge_suite" / FILE_NAME


def comfy_history() -> Optional[History]:
    """The server's log (one History per path, so its search index is kept), or None when it is turned off."""
    if not enabled():
        return None
    path = str(history_path())
    with _LOCK:
        if path not in _LOGS:
            _LOGS[path] = History(path)
        return _LOGS[path]


def warm_up() -> None:
    """Build the search index in the background when the server starts: a 100,000-entry log takes a second or
    two to index, which the first search of the sidebar tab would otherwise wait for."""
    def build() -> None:
        try:
            log = comfy_history()
            if log is not None:
                log.count()
        except Exception as exc:  # noqa: BLE001 - an optimisation only
            _LOG.warning("merge_suite: the merge history could not be read (%s)", exc)
    threading.Thread(target=build, name="merge_suite history index", daemon=True).start()


# --- what an entry says about its inputs -------------------------------------------------

def sha256_cache_file() -> Path:
    """The sha256 cache Save Checkpoint and Load Recipe fill (nodes/save.py checkpoint_hash)."""
    import folder_paths
    return Path(folder_paths.get_user_directory()) / "merge_suite" / "sha256_cache.json"


def full_path(folder: str, name: str) -> Optional[str]:
    """The absolute path of a file picked in one of ComfyUI's model folders (a LoRA list may leave out
    .safetensors), or None when it is not there."""
    import folder_paths
    for candidate in (name, name + ".safetensors") if folder == LORAS else (name,):
        found = folder_paths.get_full_path(folder, candidate)
        if found:
            return os.path.abspath(found)
    return None


def file_record(name: str, folder: str = CHECKPOINTS, sha256: str = "") -> dict:
    """One input file: its name as picked, its folder and path, a fingerprint, and its sha256 when known
    (given, in memory or in the cache file; never hashed here)."""
    path = full_path(folder, name)
    if not sha256 and path is not None:
        sha256 = known_sha256(path, sha256_cache_file())
    return input_record(name, path, sha256, folder)


def leaf_records(trees: Iterable[Optional[Mapping]], folder: str = CHECKPOINTS) -> list[dict]:
    """The input files of recipe trees, in order (a, b, c; a combine's base, then its models), each once;
    an input that came from no file ({"unknown": ...}) has no record."""
    records, seen = [], set()
    for tree in trees:
        for item in core.leaves(tree):
            name = item.get("file")
            if name and name not in seen:
                seen.add(name)
                records.append(file_record(name, folder, item.get("sha256", "")))
    return records


def prompt_id() -> Optional[str]:
    """ComfyUI's id of the prompt now executing, None outside one (a node called directly)."""
    from comfy_execution.utils import get_executing_context
    context = get_executing_context()
    return context.prompt_id if context is not None else None


def _top(recipe: Mapping[str, Optional[Mapping]]) -> Optional[Mapping]:
    """The last merge step of an entry's recipe (its model's, else its clip's)."""
    return next((t for t in (recipe.get("model"), recipe.get("clip")) if t and core.is_merge(t)), None)


def _mode(step: Mapping) -> str:
    settings = step.get("settings") or {}
    return str(settings.get("method" if step.get("kind") == core.COMBINE else "mode", ""))


# --- appending --------------------------------------------------------------------------

def _same_merge(item: Mapping[str, Any]) -> str:
    """digest() of the entry, its inputs' sha256 left out: a hash computed since (a save hashed the inputs)
    does not make the same merge a new one; the fingerprint still tells a changed file."""
    models = [{k: v for k, v in m.items() if k != "sha256"} for m in item.get("models", [])]
    return digest(dict(item, models=models))


def record(kind: str, source: str, build: Callable[[], Optional[dict]]) -> Optional[dict]:
    """Append the entry ``build()`` returns (kwargs of merge_core.history.entry besides kind and source) to the
    server's log, unless the history is off, ``build()`` returns None (nothing to record) or this process
    already appended the same merge there. Never raises: an error is one warning and the merge goes on."""
    try:
        log = comfy_history()
        if log is None:
            return None
        fields = build()
        if fields is None:
            return None
        item = entry(kind, source, prompt_id=prompt_id(), **fields)
        key = _same_merge(item)
        with _LOCK:
            seen = _RECORDED.setdefault(str(log.path), set())
            if key in seen:
                return None
            done = log.append(item)
            if done is not None:
                seen.add(key)
            return done
    except Exception as exc:  # the history must never fail a merge
        _LOG.warning("merge_suite: the merge of %s was not recorded in the merge history (%s: %s)", source,
                     type(exc).__name__, exc)
        return None


def _recipe_fields(recipe: dict, models: list) -> dict:
    top = _top(recipe)
    return {"models": models, "mode": _mode(top) if top else "", "settings": (top or {}).get("settings") or {},
            "recipe": recipe, "text": core.recipe_text(top)}


def record_merge(source: str, results: Mapping[str, Any], kind: str = "merge") -> Optional[dict]:
    """A merge or combine node's run: ``results`` maps "model" / "clip" to the merged objects, whose recipe
    trees (nodes/recipe_tags.py) are the entry's recipe."""
    def build() -> dict:
        from .recipe_tags import get_recipe
        recipe = {k: (get_recipe(results[k], k) if results.get(k) is not None else None) for k in ("model", "clip")}
        return _recipe_fields(recipe, leaf_records(recipe.values()))
    return record(kind, source, build)


def record_file_merge(source: str, folder: str, picked: Mapping[str, Optional[str]], output: str | os.PathLike
                      ) -> Optional[dict]:
    """A streamed file merge: the tree the written (or reused) file's metadata carries, its inputs named as
    picked in ``folder``; a diffusion-model file has no text encoder, so its recipe's clip is null."""
    def build() -> dict:
        from ..merge_core.io.safetensors_file import SafetensorsReader
        with SafetensorsReader(output) as reader:
            tree = dict(core.parse_file_recipe(reader.metadata, "file_name", str(output))["model"])
        for name, value in picked.items():
            if value and name in tree:
                tree[name] = core.leaf(value, tree[name].get("sha256", ""))
        models = [file_record(value, folder, tree[name].get("sha256", "")) for name, value in picked.items()
                  if value and name in tree]
        recipe = {"model": tree, "clip": tree if folder == CHECKPOINTS else None}
        return dict(_recipe_fields(recipe, models), output=os.path.abspath(output))
    return record("file merge", source, build)


def record_save(source: str, recipe: Mapping[str, Optional[Mapping]], output: str | os.PathLike) -> Optional[dict]:
    """Save Checkpoint: the saved model's and clip's recipes (as written into the file), only when one of them
    is a merge."""
    def build() -> Optional[dict]:
        trees = {"model": recipe.get("model"), "clip": recipe.get("clip")}
        if _top(trees) is None:
            return None
        return dict(_recipe_fields(trees, leaf_records(trees.values())), output=os.path.abspath(output))
    return record("save", source, build)


def record_lora(kind: str, source: str, mode: str, settings: Mapping[str, Any], loras: Sequence[str] = (),
                models: Sequence[tuple[str, Any]] = (), output: Optional[str] = None) -> Optional[dict]:
    """A LoRA node's run: its parameters, its inputs (LoRA files picked in the loras folder, or the files
    the recipes of its input ("model" | "clip", object) pairs name) and the LoRA file written (a name in
    the loras folder)."""
    def build() -> dict:
        from .recipe_tags import get_recipe
        trees = [get_recipe(obj, which) for which, obj in models if obj is not None]
        records = [file_record(name, LORAS) for name in loras] + leaf_records(trees)
        written = full_path(LORAS, output) if output else None
        names = [r["name"].rsplit("/", 1)[-1] for r in records] or ["?"]
        text = f"{mode}({', '.join(names)})" + (f" -> {output}" if output else "")
        return {"models": records, "mode": mode, "settings": dict(settings), "text": text, "output": written}
    return record(kind, source, build)
