"""Node-search aliases of the merge nodes, for the hosts whose V3 Schema has ``search_aliases``.

Every pack node id starts with "MergeSuite_", so the frontend's search for "merge" matches the whole
pack, and since ComfyUI 0.33 core nodes such as "Merge Splats" and "Merge Meshes" too. Frontend 1.49
ranks the matches by the shorter of id and display name; between equally short ones it prefers the node
whose name and aliases match better, which an alias that is exactly "merge" wins. 0.3.75's Schema has
no such field and refuses unknown ones: the field is passed only where the Schema accepts it.
"""
from __future__ import annotations

import inspect
from functools import lru_cache

from comfy_api.latest import io

MERGE = "merge"
ALIASES = {
    "MergeSuite_ModelMerge": (MERGE, "model merge", "merge unet", "supermerger", "block weight merge", "mbw"),
    "MergeSuite_CLIPMerge": (MERGE, "clip merge", "merge text encoder", "supermerger"),
    "MergeSuite_CheckpointMerge": (MERGE, "checkpoint merge", "merge model and clip", "supermerger",
                                   "block weight merge", "mbw"),
    "MergeSuite_LoraMerge": (MERGE, "lora merge", "combine loras", "supermerger"),
    "MergeSuite_CheckpointFileMerge": (MERGE, "checkpoint file merge", "merge from disk", "fp8 merge"),
    "MergeSuite_DiffusionModelFileMerge": (MERGE, "unet file merge", "merge from disk", "fp8 merge"),
}


@lru_cache(maxsize=1)
def schema_has_search_aliases() -> bool:
    """Whether this host's io.Schema takes ``search_aliases`` (a capability, not a version check)."""
    return "search_aliases" in inspect.signature(io.Schema).parameters


def search_fields(node_id: str) -> dict:
    """Keyword arguments for io.Schema: the node's aliases where the host has the field, else nothing."""
    aliases = ALIASES.get(node_id)
    if not aliases or not schema_has_search_aliases():
        return {}
    return {"search_aliases": list(aliases)}
