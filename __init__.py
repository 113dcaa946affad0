"""Merge Suite: SuperMerger's model merging as ComfyUI nodes.

ComfyUI imports this file as the pack's entry point. The math lives in
merge_core/ (usable without ComfyUI); nodes/ adapts MODEL and CLIP objects.
"""
WEB_DIRECTORY = "./web"

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # imported outside ComfyUI (e.g. as a library): no nodes to register
    ComfyExtension = None
if not __package__:  # loaded as a plain file, not as the pack (pytest does this to a checkout's root
    ComfyExtension = None  # when the folder name is not a valid package name): nothing to register

if ComfyExtension is not None:
    from .nodes.adjust import NODES as _ADJUST_NODES
    from .nodes.analysis import NODES as _ANALYSIS_NODES
    from .nodes.combine import NODES as _COMBINE_NODES
    from .nodes.file_merge import NODES as _FILE_MERGE_NODES
    from .nodes.history_node import NODES as _HISTORY_NODES
    from .nodes.lora import NODES as _LORA_NODES
    from .nodes.merge import NODES as _MERGE_NODES
    from .nodes.merge_options import NODES as _OPTION_NODES
    from .nodes.recipe import NODES as _RECIPE_NODES
    from .nodes.save import NODES as _SAVE_NODES
    from .nodes.sweep import NODES as _SWEEP_NODES
    from .nodes.random_weights import NODES as _WEIGHT_LIST_NODES
    from .nodes.rebasin import NODES as _REBASIN_NODES

    class MergeSuiteExtension(ComfyExtension):
        async def get_node_list(self):
            return (list(_MERGE_NODES) + list(_COMBINE_NODES) + list(_OPTION_NODES) + list(_ADJUST_NODES)
                    + list(_ANALYSIS_NODES) + list(_WEIGHT_LIST_NODES) + list(_SAVE_NODES) + list(_LORA_NODES)
                    + list(_SWEEP_NODES) + list(_RECIPE_NODES) + list(_HISTORY_NODES)
                    + list(_FILE_MERGE_NODES) + list(_REBASIN_NODES))

    async def comfy_entrypoint() -> "MergeSuiteExtension":
        return MergeSuiteExtension()

    from .nodes.routes import register_with_server as _register_routes

    _register_routes()  # the web editor's presets, layouts and validation (web/js)

    from .nodes.save import startup_cleanup as _startup_cleanup

    _startup_cleanup()  # partial files of stopped saves; SIGTERM/SIGHUP remove the live ones

    from .nodes.demo_models import register as _register_demo_models

    _register_demo_models()  # Load Checkpoint lists and loads demo/models (the trained demo model family)

