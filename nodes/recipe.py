"""Load Recipe: re-create a merge from a checkpoint's sd_merge_recipe (SuperMerger's "Load settings from").

The recipe names its input checkpoints by sha256 (and file name); they are
looked up among the user's checkpoints, by name first and then by hash, loaded
once each, and every merge step is replayed with the recorded settings. The
result is the same lazy merge the original graph made, so its weights equal the
saved ones up to the saved precision.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from comfy_api.latest import io

from ..merge_core import recipe as core
from ..merge_core.errors import MergeInputError
from ..merge_core.io.safetensors_file import SafetensorsReader
from .errors import named_errors
from .object_merge import merge_objects, tag_recipe
from .recipe_tags import get_recipe, set_recipe
from .save import checkpoint_hash
from .shared import CATEGORY

DIFFUSION_MODELS = "diffusion_models"


def _find_checkpoint(item: dict, where: str) -> str:
    """File name (in the checkpoints folders) of a recipe leaf, by name and hash, else a clear error."""
    import folder_paths
    if "unknown" in item:
        raise MergeInputError("ckpt_name", f"its recipe's {item['unknown']} did not come from a checkpoint file "
                                           "(e.g. from a node other than a checkpoint loader).",
                              "re-create that input by hand; only file inputs can be reloaded.")
    name, sha = item.get("file", ""), item.get("sha256", "")
    if name and folder_paths.get_full_path("checkpoints", name) and (not sha or checkpoint_hash(name) == sha):
        return name
    if sha:
        for candidate in folder_paths.get_filename_list("checkpoints"):
            if checkpoint_hash(candidate) == sha:
                return candidate
    shown = f"'{name}'" if name else "a model"
    raise MergeInputError("ckpt_name", f"its recipe needs {shown}{f' (sha256 {sha[:12]}...)' if sha else ''} for "
                                       f"{where}, which is not among your checkpoints.",
                          "put that checkpoint in the checkpoints folder (any file name: it is found by hash).")


def _load(name: str, cache: dict, folder: str = "checkpoints", path: Optional[str] = None) -> tuple:
    """(MODEL, CLIP, VAE) of one input file, loaded once per replay. A file of the diffusion_models folder
    (by its name there) loads with Load Diffusion Model at its default weight dtype: a MODEL alone, CLIP and
    VAE None."""
    if (folder, name) not in cache:
        if folder == DIFFUSION_MODELS:
            import nodes as comfy_nodes
            model, clip, vae = comfy_nodes.UNETLoader().load_unet(name, "default")[0], None, None
        else:
            import comfy.sd
            import folder_paths
            model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
                path or folder_paths.get_full_path(folder, name), output_vae=True, output_clip=True,
                embedding_directory=folder_paths.get_folder_paths("embeddings"))
            set_recipe(clip, "clip", core.leaf(name))
        set_recipe(model, "model", core.leaf(name))
        cache[(folder, name)] = (model, clip, vae)
    return cache[(folder, name)]


def find_in_checkpoints(item: dict, where: str) -> tuple[str, str, Optional[str]]:
    """Load Recipe's way to a leaf's file: (folder, name, full path or None) among the checkpoints."""
    return "checkpoints", _find_checkpoint(item, where), None


def replay(node: Optional[dict], kind: str, cache: dict, where: str = "model A",
           locate: Callable[[dict, str], tuple[str, str, Optional[str]]] = find_in_checkpoints) -> Optional[Any]:
    """The MODEL (kind "model") or CLIP ("clip") a recipe tree describes, merged again step by step.
    ``locate`` finds a leaf's file: (folder, name, full path or None); Load Recipe looks among the
    checkpoints, Merge from History where the entry recorded each input."""
    if not node:
        return None
    if not core.is_merge(node):
        folder, name, path = locate(node, where)
        return _load(name, cache, folder, path)[0 if kind == "model" else 1]
    if node.get("kind") == core.COMBINE:
        from .combine import combine_models, tag_combine
        base = replay(node["a"], kind, cache, f"the base {kind} of a combine step", locate)
        models = [(f"{kind}_{i + 1}", replay(m, kind, cache, f"{kind} {i + 1} of a combine step", locate))
                  for i, m in enumerate(node["models"])]
        merged, plan = combine_models(base, models, core.replay_combine_settings(node["settings"]), kind)
        tag_combine(merged, plan, base, models, None, kind)
        return merged
    objects = {n: replay(node.get(n), kind, cache, f"{kind} {n.upper()} of a merge step", locate)
               for n in ("a", "b", "c")}
    params = core.replay_settings(node["settings"])
    merged, plan = merge_objects(kind, objects["a"], objects["b"], objects["c"], params)
    tag_recipe(kind, merged, plan, params, objects, None, node.get("kind", kind))
    return merged


def _baked_vae(path: str):
    """The VAE stored in the merged file itself (the one that was baked in), read without loading the rest."""
    import comfy.sd
    with SafetensorsReader(path) as reader:
        keys = [k for k in reader.keys() if k.startswith("first_stage_model.")]
        if not keys:
            return None
        sd = {k[len("first_stage_model."):]: reader.get(k) for k in keys}
    return comfy.sd.VAE(sd=sd)


class LoadRecipe(io.ComfyNode):
    DISPLAY = "Load Recipe (re-create a merge)"

    @classmethod
    def define_schema(cls):
        import folder_paths
        return io.Schema(
            node_id="MergeSuite_LoadRecipe", display_name=cls.DISPLAY, category=CATEGORY,
            description="Read the merge recipe (sd_merge_recipe) saved in a checkpoint and merge its input "
                        "checkpoints again with the same settings. Inputs are found by hash among your "
                        "checkpoints. Works with files from Save Checkpoint (every step) and SuperMerger (one step).",
            inputs=[io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("checkpoints"),
                                   tooltip="A merged checkpoint whose recipe to re-create.")],
            outputs=[io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP"),
                     io.Vae.Output(display_name="VAE", tooltip="The VAE baked into the chosen file."),
                     io.String.Output(display_name="recipe", tooltip="The re-created recipe, as text.")],
        )

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        import folder_paths
        with named_errors(cls.DISPLAY):
            path = folder_paths.get_full_path("checkpoints", ckpt_name)
            if path is None:
                raise MergeInputError("ckpt_name", f"'{ckpt_name}' is not in the checkpoints folder.",
                                      "choose a file from the list.")
            with SafetensorsReader(path, "ckpt_name") as reader:
                trees = core.parse_file_recipe(reader.metadata, "ckpt_name", ckpt_name)
            cache: dict = {}
            model = replay(trees["model"], "model", cache)
            clip = replay(trees["clip"], "clip", cache) if trees.get("clip") else None
            first = next(iter(cache.values()))
            vae = _baked_vae(path) or first[2]
            text = core.recipe_text(get_recipe(model, "model") if model is not None else get_recipe(clip, "clip"))
            return io.NodeOutput(model, clip if clip is not None else first[1], vae, text)


NODES = [LoadRecipe]
