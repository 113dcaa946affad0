"""Merge from History: re-create a merge the history recorded (SuperMerger's History tab, as a node).

An entry keeps the merge's recipe tree and a record of each input file (where it was, its sha256 when
known, a quick fingerprint). Every input is checked against that record first, so a replay never
silently merges a file that changed since; then the recipe is replayed as Load Recipe replays a file's
(nodes/recipe.py), with each leaf loaded from where the entry found it. Replaying records nothing: the
merge nodes record their runs, not the replay helpers this node shares with Load Recipe.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from comfy_api.latest import io

from ..merge_core import recipe as core
from ..merge_core.errors import MergeInputError
from ..merge_core.history import ENV, check_input
from ..merge_core.io.filehash import file_sha256
from .errors import named_errors
from .history_log import comfy_history
from .recipe import DIFFUSION_MODELS, find_in_checkpoints, replay
from .recipe_tags import get_recipe
from .shared import CATEGORY

INPUT = "history_id"
LORA_KINDS = ("lora merge", "lora extract")
TAB = "the Merge History tab in the sidebar"


def _history():
    """The server's history, or a clear error when it is turned off."""
    log = comfy_history()
    if log is None:
        raise MergeInputError(INPUT, f"the merge history is turned off ({ENV}=0), so there is no entry to re-create.",
                              f"unset {ENV} (or set it to 1) and restart ComfyUI; merges made while it was off "
                              "were not recorded.")
    return log


def _label(entry: Mapping[str, Any]) -> str:
    return f"entry {entry.get('id', '?')} ({entry.get('source') or entry.get('kind') or 'unknown source'})"


def replayable_recipe(entry: Mapping[str, Any]) -> dict:
    """The entry's recipe trees, or an error saying what the entry is and where its settings are."""
    kind = entry.get("kind", "")
    if kind in LORA_KINDS:
        raise MergeInputError(INPUT, f"{_label(entry)} is a {kind}: it wrote a LoRA file, not a merge this node "
                                     "re-creates.",
                              f"its settings are in the entry: copy them from {TAB} into a {entry.get('source')} "
                              "node.")
    recipe = entry.get("recipe")
    if not isinstance(recipe, Mapping) or not (recipe.get("model") or recipe.get("clip")):
        raise MergeInputError(INPUT, f"{_label(entry)} is a {kind or 'entry'} without a recipe, so it cannot be "
                                     "merged again.",
                              f"its settings are in the entry: copy them from {TAB} into the merge node.")
    return {"model": recipe.get("model"), "clip": recipe.get("clip")}


def in_folder(record: Mapping[str, Any]) -> Optional[str]:
    """The input's path by its name in its ComfyUI folder, None when it is not there."""
    import folder_paths
    if not (record.get("folder") and record.get("name")):
        return None
    try:
        return folder_paths.get_full_path(record["folder"], record["name"])
    except KeyError:  # a folder kind this ComfyUI does not know
        return None


def input_path(record: Mapping[str, Any]) -> Optional[str]:
    """Where an input is now: by its name in its ComfyUI folder, else the absolute path recorded."""
    return in_folder(record) or record.get("path")


def check_inputs(entry: Mapping[str, Any]) -> dict[str, tuple[str, str, Optional[str]]]:
    """Every recorded input checked (missing or changed: an error naming the file); returns the leaves' places:
    {file name: (folder, name, full path)}."""
    import folder_paths
    sha_cache = Path(folder_paths.get_user_directory()) / "merge_suite" / "sha256_cache.json"
    places = {}
    for record in entry.get("models") or []:
        path = input_path(record)
        check_input(record, path, lambda p: file_sha256(p, sha_cache), INPUT)
        if record.get("folder") == DIFFUSION_MODELS and in_folder(record) is None:  # its loader reads names
            raise MergeInputError(INPUT, f"the entry's input '{record.get('name')}' is no longer in the "
                                         f"{DIFFUSION_MODELS} folder (it is at {path}).",
                                  f"put it back in the {DIFFUSION_MODELS} folder under that name.")
        places[record.get("name", "")] = (record.get("folder") or "checkpoints", record.get("name", ""), path)
    return places


def locator(entry: Mapping[str, Any], places: Mapping[str, tuple]):
    """replay's ``locate``: a leaf from the entry's records, else looked up among the checkpoints."""
    def locate(leaf: dict, where: str) -> tuple[str, str, Optional[str]]:
        if "unknown" in leaf:
            raise MergeInputError(INPUT, f"{_label(entry)}'s recipe has an input ({leaf['unknown']}) that did not "
                                         "come from a model file (e.g. from a node other than a loader), so it "
                                         "cannot be loaded again.",
                                  f"re-create that input by hand; the entry's settings are in {TAB}.")
        if leaf.get("file") in places:
            return places[leaf["file"]]
        try:
            return find_in_checkpoints(leaf, where)
        except MergeInputError as exc:
            exc.input_name = INPUT
            raise
    return locate


class MergeFromHistory(io.ComfyNode):
    DISPLAY = "Merge from History"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MergeSuite_MergeFromHistory", display_name=cls.DISPLAY, category=CATEGORY,
            description="Re-create a merge the merge history recorded, from its input files and settings: -1 the "
                        "last merge, -2 the one before, or an entry's id (the Merge History tab lists them). Each "
                        "input file is checked first: a missing or changed one is an error naming it.",
            inputs=[io.Int.Input(INPUT, default=-1, min=-(2 ** 31), max=2 ** 31 - 1,
                                 tooltip="-1: the last merge, -2: the one before, ...; n > 0: the entry with id n."),
                    io.AnyType.Input("after", optional=True,
                                     tooltip="Anything that must run first (only the order matters), e.g. the "
                                             "merge being re-created in this graph, so -1 is that merge.")],
            outputs=[io.Model.Output(display_name="MODEL"),
                     io.Clip.Output(display_name="CLIP", tooltip="None for a merge of diffusion-model files."),
                     io.Vae.Output(display_name="VAE", tooltip="The first input checkpoint's VAE (None for a merge "
                                                               "of diffusion-model files)."),
                     io.String.Output(display_name="recipe", tooltip="The re-created recipe, as text.")],
        )

    @classmethod
    def fingerprint_inputs(cls, history_id: int = -1, **_) -> str:
        """The entry -1 (or n) stands for now, by id and time: a newer merge makes -1 run again."""
        log = comfy_history()
        if log is None:
            return "history off"
        try:
            found = log.get(int(history_id), INPUT)
        except (MergeInputError, ValueError, TypeError):
            return f"no entry {history_id} of {log.count()}"
        return f"{found.get('id')} {found.get('time')}"

    @classmethod
    def execute(cls, history_id: int = -1, after: Any = None) -> io.NodeOutput:
        with named_errors(cls.DISPLAY):
            entry = _history().get(int(history_id), INPUT)
            trees = replayable_recipe(entry)
            locate = locator(entry, check_inputs(entry))
            cache: dict = {}
            model = replay(trees["model"], "model", cache, locate=locate)
            clip = replay(trees["clip"], "clip", cache, locate=locate) if trees["clip"] else None
            text = core.recipe_text(get_recipe(model, "model") if model is not None else get_recipe(clip, "clip"))
            first = next((loaded for (folder, _), loaded in cache.items() if folder != DIFFUSION_MODELS), None)
            if first is not None:  # a step on one side only (Merge Models, Merge CLIP): the other from input A
                model = model if model is not None else first[0]
                clip = clip if clip is not None else first[1]
            return io.NodeOutput(model, clip, first[2] if first is not None else None, text)


NODES = [MergeFromHistory]
