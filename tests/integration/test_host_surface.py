"""Every ComfyUI name the pack (nodes/, __init__.py, web/) relies on, checked against the host it runs on.

A ComfyUI release that renames, removes or re-signs one of them shows here as one named failure
(``test_module_name[comfy.lora.calculate_weight]``) instead of as errors spread over the suite.
How the pack calls each module-level name (positional count, keyword names) is read from the pack's
own source, so the check follows the code; the method calls and object attributes the source cannot
attribute to a class are listed by hand. ``test_every_host_name_the_pack_uses_is_listed`` fails when
the pack starts using a ComfyUI name this module does not list, and when a listed name is no longer used.
"""
from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import inspect
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PACK_FILES = sorted((REPO / "nodes").glob("*.py")) + [REPO / "__init__.py"]
HOST_ROOTS = ("comfy", "comfy_api", "comfy_execution", "comfy_extras", "comfy_config", "folder_paths", "nodes",
              "server", "latent_preview", "node_helpers", "execution", "app", "api_server", "utils", "protocol",
              "comfyui_version")

# Reached through a module attribute (``comfy.lora.calculate_weight(...)``, ``io.Float.Input(...)``,
# ``folder_paths.get_full_path(...)``). Each must exist; each call the pack makes must fit its signature.
MODULE_NAMES = (
    # the V3 node API (__init__.py, every node module)
    "comfy_api.latest.ComfyExtension",
    "comfy_api.latest.io.ComfyNode",
    "comfy_api.latest.io.Schema",
    "comfy_api.latest.io.NodeOutput",
    "comfy_api.latest.io.Input",
    "comfy_api.latest.io.Custom",
    "comfy_api.latest.io.Hidden.prompt",
    "comfy_api.latest.io.Hidden.unique_id",
    "comfy_api.latest.io.Hidden.extra_pnginfo",
    "comfy_api.latest.io.AnyType.Input",
    "comfy_api.latest.io.AnyType.Output",
    "comfy_api.latest.io.Boolean.Input",
    "comfy_api.latest.io.Clip.Input",
    "comfy_api.latest.io.Clip.Output",
    "comfy_api.latest.io.Combo.Input",
    "comfy_api.latest.io.Float.Input",
    "comfy_api.latest.io.Float.Output",
    "comfy_api.latest.io.Image.Input",
    "comfy_api.latest.io.Image.Output",
    "comfy_api.latest.io.Int.Input",
    "comfy_api.latest.io.Int.Output",
    "comfy_api.latest.io.Model.Input",
    "comfy_api.latest.io.Model.Output",
    "comfy_api.latest.io.String.Input",
    "comfy_api.latest.io.String.Output",
    "comfy_api.latest.io.Vae.Input",
    "comfy_api.latest.io.Vae.Output",
    # weights, patches and adapters (comfy_models.py, lora.py, nonfinite_watch.py)
    "comfy.lora.calculate_weight",
    "comfy.lora.load_lora",
    "comfy.lora.model_lora_keys_clip",
    "comfy.lora.model_lora_keys_unet",
    "comfy.lora_convert.convert_lora",
    "comfy.weight_adapter.base.WeightAdapterBase",
    "comfy.model_patcher.get_key_weight",
    "comfy.quant_ops.QuantizedTensor",
    "comfy.utils.load_torch_file",
    "comfy.utils.ProgressBar",
    "comfy.model_management.cast_to_device",
    "comfy.model_management.get_torch_device",
    "comfy.model_management.throw_exception_if_processing_interrupted",
    # loaders (recipe.py, sweep.py, file_merge.py)
    "comfy.sd.load_checkpoint_guess_config",
    "comfy.sd.VAE",
    "nodes.CheckpointLoaderSimple",
    "nodes.UNETLoader",
    # what Save Checkpoint writes about the model (save.py)
    "comfy.cli_args.args.disable_metadata",
    "comfy.model_base.ModelType.EPS",
    "comfy.model_base.ModelType.V_PREDICTION",
    "comfy.model_base.SD3",
    "comfy.model_base.SDXL",
    "comfy.model_base.SDXLRefiner",
    "comfy.model_base.SDXL_instructpix2pix",
    "comfy.model_base.SVD_img2vid",
    "comfy.model_sampling.ModelSamplingContinuousEDM",
    "comfy.model_sampling.V_PREDICTION",
    # model folders (every node that lists, finds or writes files)
    "folder_paths.filter_files_extensions",
    "folder_paths.get_filename_list",
    "folder_paths.get_folder_paths",
    "folder_paths.get_full_path",
    "folder_paths.get_user_directory",
    "folder_paths.recursive_search",
    # the demo models' config and folder (demo_models.py)
    "comfy.model_detection.convert_config",
    "comfy.sd1_clip.SD1ClipModel",
    "comfy.sd1_clip.SD1Tokenizer",
    "comfy.supported_models.SD15",
    "comfy.supported_models.models",
    "comfy.supported_models_base.ClipTarget",
    "folder_paths.add_model_folder_path",
    # the running prompt's id, recorded in the merge history (history_log.py)
    "comfy_execution.utils.get_executing_context",
)

# Read with getattr(module, "name", default): a capability the pack uses only where the host has it.
OPTIONAL_NAMES = (
    "comfy.utils.convert_old_quants",  # file_merge.py: 0.33's per-layer quantization layout
)

PATCHER, CLIP, VAE = "comfy.model_patcher.ModelPatcher", "comfy.sd.CLIP", "comfy.sd.VAE"
# Methods of objects ComfyUI hands the nodes, with the calls the pack makes (a method passed on as a
# function, such as process_unet_state_dict_for_saving, is called with the listed shape):
# (positional arguments, keyword names). test_every_host_name_the_pack_uses_is_listed checks that every
# call of these method names in the pack fits one of the shapes listed for that name.
METHODS = {
    f"{PATCHER}.add_patches": [(2, ()), (3, ())],
    f"{PATCHER}.get_key_patches": [(0, ()), (1, ())],
    f"{PATCHER}.model_state_dict": [(1, ())],
    f"{PATCHER}.clone": [(0, ())],
    f"{PATCHER}.get_model_object": [(1, ())],
    f"{PATCHER}.get_attachment": [(1, ())],
    f"{PATCHER}.set_attachments": [(2, ())],
    f"{CLIP}.add_patches": [(2, ()), (3, ())],
    f"{CLIP}.get_key_patches": [(0, ())],
    f"{CLIP}.clone": [(0, ())],
    f"{CLIP}.load_model": [(0, ())],
    f"{VAE}.get_sd": [(0, ())],
    "comfy.sd1_clip.SD1Tokenizer.state_dict": [(0, ())],
    "comfy.sdxl_clip.SDXLTokenizer.state_dict": [(0, ())],
    "comfy.utils.ProgressBar.update_absolute": [(2, ())],
    "comfy.supported_models_base.BASE.process_unet_state_dict_for_saving": [(1, ())],
    "comfy.supported_models_base.BASE.process_clip_state_dict_for_saving": [(1, ())],
    "comfy.supported_models_base.BASE.process_vae_state_dict_for_saving": [(1, ())],
    "nodes.CheckpointLoaderSimple.load_checkpoint": [(1, ())],
    "nodes.UNETLoader.load_unet": [(2, ())],
}
# Names too common to attribute by a source scan (tensors and dicts have them too).
GENERIC_METHODS = {"clone", "state_dict"}


# --- reading the pack's source -------------------------------------------------------------------

def _chain(node) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


def _shape(call: ast.Call) -> tuple[int, tuple[str, ...], bool]:
    """(positional count, keyword names, whether *args/**kwargs hide more)."""
    starred = any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords)
    return (sum(not isinstance(a, ast.Starred) for a in call.args),
            tuple(sorted(k.arg for k in call.keywords if k.arg)), starred)


def _host_name(expr, bound: dict[str, str]):
    """The host's dotted name an expression reads (through the names a file's imports bound), or None."""
    parts = _chain(expr)
    if parts and parts[0] in bound:
        return ".".join([bound[parts[0]]] + parts[1:])
    return None


def scan_pack():
    """({host dotted name: [(shape, where)]}, {method name: [(shape, where)]}, {optional name: [where]},
    every attribute name the pack reads)."""
    names: dict[str, list] = defaultdict(list)
    methods: dict[str, list] = defaultdict(list)
    optional: dict[str, list] = defaultdict(list)
    attributes: set[str] = set()
    for path in PACK_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = path.relative_to(REPO).as_posix()
        bound: dict[str, str] = {}  # local name -> host module path
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in HOST_ROOTS:
                        local = alias.asname or alias.name.split(".")[0]
                        bound[local] = alias.name if alias.asname else local
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] in HOST_ROOTS:
                for alias in node.names:
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    names.setdefault(f"{node.module}.{alias.name}", [])

        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute):
                attributes.add(node.attr)
                full = _host_name(node, bound)
                if full:
                    names.setdefault(full, [])
            if not isinstance(node, ast.Call):
                continue
            full = _host_name(node.func, bound)
            if full:
                names[full].append((_shape(node), where))
            elif isinstance(node.func, ast.Attribute):
                methods[node.func.attr].append((_shape(node), where))
            if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant) and _host_name(node.args[0], bound):
                optional[f"{_host_name(node.args[0], bound)}.{node.args[1].value}"].append(where)
    return names, methods, optional, attributes


USED_NAMES, USED_METHODS, USED_OPTIONAL, USED_ATTRIBUTES = scan_pack()


def _leaves(used: dict) -> set[str]:
    """Used names that are not only a prefix of a longer used name (``comfy.lora`` of ``comfy.lora.x``)."""
    return {n for n in used if not any(o.startswith(n + ".") for o in used)}


# --- resolving host names ----------------------------------------------------------------------

def resolve(dotted: str):
    """The host object a dotted name stands for: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for i, attr in enumerate(parts[cut:]):
            if not hasattr(obj, attr):
                raise AssertionError(f"{'.'.join(parts[:cut + i])} has no attribute '{attr}'")
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"no module of '{dotted}' can be imported")


class _Arg:
    pass


def check_calls(label: str, target, calls, extra_positional: int = 0) -> None:
    """Each call shape must bind to the target's signature (missing required or unknown names fail)."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return  # no introspectable signature (a builtin): existence is all that can be checked
    problems = []
    for (positional, keywords, starred), where in calls:
        args = [_Arg()] * (positional + extra_positional)
        kwargs = {k: _Arg() for k in keywords}
        try:
            sig.bind_partial(*args, **kwargs) if starred else sig.bind(*args, **kwargs)
        except TypeError as exc:
            problems.append(f"{where}: {positional} positional + {list(keywords)}: {exc}")
    assert not problems, f"{label}{sig} no longer fits the pack's calls:\n" + "\n".join(problems)


def _method(dotted: str):
    """(owning class, method object, whether the call passes self)."""
    owner_path, name = dotted.rsplit(".", 1)
    owner = resolve(owner_path)
    assert hasattr(owner, name), f"{owner_path} has no method '{name}'"
    static = inspect.getattr_static(owner, name)
    return owner, getattr(owner, name), not isinstance(static, (staticmethod, classmethod))


def _host_subclasses(cls) -> list[type]:
    """cls and its subclasses defined by the host (0.33's ModelPatcherDynamic is handed out as a MODEL)."""
    found, todo = [], [cls]
    while todo:
        c = todo.pop()
        if c not in found and c.__module__.split(".")[0] in HOST_ROOTS:
            found.append(c)
            todo.extend(c.__subclasses__())
    return found


# --- the listed names ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODULE_NAMES, ids=MODULE_NAMES)
def test_module_name(name):
    target = resolve(name)
    check_calls(name, target, USED_NAMES.get(name, []))


@pytest.mark.parametrize("name", METHODS, ids=list(METHODS))
def test_method(name):
    owner, method, passes_self = _method(name)
    shapes = [((p, k, False), "listed in METHODS") for p, k in METHODS[name]]
    for cls in _host_subclasses(owner):
        check_calls(f"{cls.__module__}.{cls.__qualname__}.{name.rsplit('.', 1)[1]}",
                    getattr(cls, name.rsplit(".", 1)[1]), shapes, 1 if passes_self else 0)


@pytest.mark.parametrize("name", OPTIONAL_NAMES, ids=OPTIONAL_NAMES)
def test_optional_name_is_callable_where_present(name):
    module, attr = name.rsplit(".", 1)
    value = getattr(resolve(module), attr, None)
    assert value is None or callable(value), f"{name} exists but is not callable"


def test_every_host_name_the_pack_uses_is_listed():
    """The lists above are the pack's whole ComfyUI surface: a new use must be added here, a dropped one removed."""
    listed = set(MODULE_NAMES)
    unlisted = sorted(n for n in _leaves(USED_NAMES) if n not in listed)
    stale = sorted(n for n in listed if n not in USED_NAMES)
    assert not unlisted, f"the pack uses host names this module does not check: {unlisted}"
    assert not stale, f"listed names the pack no longer uses: {stale}"
    assert sorted(USED_OPTIONAL) == sorted(OPTIONAL_NAMES), dict(USED_OPTIONAL)
    by_name = defaultdict(set)
    for dotted, shapes in METHODS.items():
        by_name[dotted.rsplit(".", 1)[1]].update(shapes)
    for name, shapes in by_name.items():
        if name in GENERIC_METHODS:
            continue
        assert name in USED_ATTRIBUTES, f"the pack no longer uses .{name}: remove it from METHODS"
        for (positional, keywords, _), where in USED_METHODS.get(name, []):
            assert (positional, keywords) in shapes, f"{where} calls .{name}() with {positional} positional " \
                                                     f"and {list(keywords)}, a shape METHODS does not list"


# --- the V3 schema objects the pack reads back (validation.py, merge.py) ----------------------------

def _io():
    from comfy_api.latest import io
    return io


SCHEMA_READS = {
    "io.Schema.node_id": lambda io: io.Schema(node_id="X").node_id == "X",
    "io.Schema.display_name": lambda io: io.Schema(node_id="X", display_name="Y").display_name == "Y",
    "io.Schema.inputs": lambda io: io.Schema(node_id="X", inputs=[io.Int.Input("n")]).inputs[0].id == "n",
    "io.Float.Input.min_max": lambda io: (io.Float.Input("a", min=-1.0, max=2.0).min,
                                          io.Float.Input("a", min=-1.0, max=2.0).max) == (-1.0, 2.0),
    "io.Int.Input.min_max": lambda io: (io.Int.Input("a", min=1, max=9).min, io.Int.Input("a", min=1, max=9).max)
    == (1, 9),
    "io.Combo.Input.options": lambda io: list(io.Combo.Input("c", options=["p", "q"]).options) == ["p", "q"],
    "io.Custom.io_type": lambda io: io.Custom("MERGE_OPTIONS").Input("o", optional=True, tooltip="t").id == "o",
}


@pytest.mark.parametrize("name", SCHEMA_READS, ids=list(SCHEMA_READS))
def test_schema_attribute_the_pack_reads(name):
    assert SCHEMA_READS[name](_io())


def test_hidden_holder_has_the_fields_the_nodes_read():
    """cls.hidden.prompt / unique_id / extra_pnginfo (merge.py, save.py, recipe_tags.py)."""
    io = _io()
    holder = sys.modules[io.ComfyNode.__module__].HiddenHolder
    params = inspect.signature(holder).parameters
    assert {"prompt", "unique_id", "extra_pnginfo"} <= set(params), list(params)


def test_comfy_node_hooks_the_pack_implements():
    """define_schema, execute and validate_inputs are classmethods the host calls on the node class;
    ComfyExtension.get_node_list is awaited."""
    io = _io()
    for hook in ("define_schema", "execute", "validate_inputs"):
        assert isinstance(inspect.getattr_static(io.ComfyNode, hook), classmethod), hook
    from comfy_api.latest import ComfyExtension
    assert inspect.iscoroutinefunction(ComfyExtension.get_node_list)


def _pack_nodes() -> list:
    import merge_suite
    extension = asyncio.run(merge_suite.comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


def test_search_aliases_reach_the_node_info_where_the_schema_has_the_field():
    """0.33's Schema has search_aliases and sends it in /object_info (GET_NODE_INFO_V1); 0.3.75's has
    neither, and every node must still build its schema there (the field is passed only where accepted)."""
    from merge_suite.nodes.search import ALIASES
    supported = "search_aliases" in inspect.signature(_io().Schema).parameters
    nodes = {cls.define_schema().node_id: cls for cls in _pack_nodes()}
    assert set(ALIASES) <= set(nodes)
    for node_id, cls in nodes.items():
        info = cls.GET_NODE_INFO_V1()
        if supported and node_id in ALIASES:
            assert "merge" in info["search_aliases"], node_id
        else:
            assert not info.get("search_aliases"), node_id


# --- objects as ComfyUI hands them to the nodes ------------------------------------------------------

@pytest.fixture(scope="module")
def patcher():
    """A ModelPatcher over a plain module: what the patch-list format checks need, and nothing more."""
    import comfy.model_patcher
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 4)
    return comfy.model_patcher.ModelPatcher(module, torch.device("cpu"), torch.device("cpu"))


def test_model_patcher_patches_and_patches_uuid(patcher):
    """nonfinite_watch.py reads .patches (a plain weight has none); recipe_tags.py stores .patches_uuid."""
    clone = patcher.clone()
    assert isinstance(clone.patches, dict) and not clone.patches.get("weight")
    before = str(clone.patches_uuid)
    clone.add_patches({"weight": (torch.ones(4, 4),)}, 0.5, 1.0)
    assert clone.patches.get("weight") and str(clone.patches_uuid) != before


def test_get_key_patches_entries_start_with_weight_and_convert_function(patcher):
    """comfy_models.py reads v[0][0] (the base weight) and v[0][1] (its convert function, inplace=)."""
    lists = patcher.get_key_patches()
    first = lists["weight"][0]
    assert isinstance(first[0], torch.Tensor) and tuple(first[0].shape) == (4, 4)
    assert torch.equal(first[1](first[0].clone(), inplace=True), first[0])


def test_add_patches_returns_accepted_keys_and_takes_offset_keys(patcher):
    """The pack counts accepted keys and patches the first n input channels with (key, (1, 0, n))."""
    clone = patcher.clone()
    accepted = clone.add_patches({"weight": (torch.ones(4, 4),), ("weight", (1, 0, 2)): (torch.ones(4, 2),),
                                  "no.such.key": (torch.ones(1),)}, 1.0, 1.0)
    assert set(map(str, accepted)) == {"weight", str(("weight", (1, 0, 2)))}


def test_patch_entries_are_strength_value_strength_model_offset_function(patcher):
    """nonfinite_watch.py appends its own (strength, value, strength_model, offset, function) entries."""
    clone = patcher.clone()
    clone.add_patches({"weight": (torch.ones(4, 4),)}, 0.25, 0.5)
    entry = clone.patches["weight"][-1]
    assert len(entry) == 5 and entry[0] == 0.25 and entry[2] == 0.5 and entry[3] is None


def test_calculate_weight_evaluates_nested_patch_lists(patcher):
    """A merged model's patch is another object's whole patch list: base weight plus its own patches."""
    from merge_suite.nodes.comfy_models import effective_weight
    other = patcher.clone()
    other.add_patches({"weight": (torch.full((4, 4), 2.0),)}, 1.0, 1.0)
    merged = patcher.clone()
    merged.add_patches({"weight": other.get_key_patches()["weight"]}, 0.5, 0.5)
    base = patcher.model.weight.detach()
    got = effective_weight(merged.get_key_patches()["weight"])
    assert torch.allclose(got, 0.5 * base + 0.5 * (base + 2.0))


def test_weight_adapters_are_called_with_the_arguments_the_pack_accepts(patcher):
    """comfy_models.lazy_adapter and the NaN/inf observer subclass WeightAdapterBase; the host calls
    calculate_weight on them while it computes a patched weight."""
    from merge_suite.nodes.comfy_models import effective_weight, lazy_adapter
    clone = patcher.clone()
    clone.add_patches({"weight": lazy_adapter("surface_check", lambda w: w * 3.0)}, 1.0, 1.0)
    got = effective_weight(clone.get_key_patches()["weight"])
    assert torch.allclose(got, patcher.model.weight.detach() * 3.0)


def test_model_patcher_backup_keeps_the_unpatched_weight(patcher):
    """comfy_models.py reads a loaded model's unpatched weight from .backup[key].weight (and from
    .hook_backup[key][0] where the host has hooks), and a key's layer through get_key_weight."""
    import comfy.model_patcher
    weight, _set, convert = comfy.model_patcher.get_key_weight(patcher.model, "weight")
    assert weight is patcher.model.weight
    clone = patcher.clone()
    original = patcher.model.weight.detach().clone()
    clone.add_patches({"weight": (torch.ones(4, 4),)}, 1.0, 1.0)
    clone.patch_weight_to_device("weight")
    try:
        assert torch.equal(clone.backup["weight"].weight, original)
        assert isinstance(getattr(clone, "hook_backup", {}), dict)
    finally:
        clone.unpatch_model()
    assert torch.equal(patcher.model.weight, original)


def test_attachments_follow_clones(patcher):
    """recipe_tags.py keeps the recipe in an attachment; clone() must carry it to later nodes."""
    tagged = patcher.clone()
    tagged.set_attachments("merge_suite_surface", "x")
    assert tagged.clone().get_attachment("merge_suite_surface") == "x"


def test_edm_sampling_has_sigma_range():
    """save.py writes edm_vpred.sigma_min/sigma_max from the model's sampling object."""
    import comfy.model_sampling
    sampling = comfy.model_sampling.ModelSamplingContinuousEDM()
    assert float(sampling.sigma_min) > 0 and float(sampling.sigma_max) > float(sampling.sigma_min)


# Attributes of a loaded SD1 model and CLIP (built by the shared tiny-model builder): save.py, lora.py,
# analysis.py reach these through the objects.
SD1_ATTRIBUTES = {
    "ModelPatcher.model": lambda m, c: m.model,
    "BaseModel.model_config": lambda m, c: m.model.model_config.process_unet_state_dict_for_saving,
    "BaseModel.model_type": lambda m, c: m.model.model_type,
    "CLIP.patcher": lambda m, c: c.patcher.model_state_dict,
    "CLIP.cond_stage_model": lambda m, c: c.cond_stage_model,
    "CLIP.tokenizer": lambda m, c: c.tokenizer.state_dict,
    "SD1ClipModel.clip_l": lambda m, c: c.cond_stage_model.clip_l,
    "SDClipModel.special_tokens": lambda m, c: c.cond_stage_model.clip_l.special_tokens["start"],
    "SDClipModel.transformer.text_model": lambda m, c: c.cond_stage_model.clip_l.transformer.text_model,
    "CLIPTextModel_.embeddings": lambda m, c: (c.cond_stage_model.clip_l.transformer.text_model.embeddings
                                               .position_embedding.weight),
    "CLIPTextModel_.final_layer_norm": lambda m, c: c.cond_stage_model.clip_l.transformer.text_model.final_layer_norm,
    "SD1Tokenizer.clip_l.tokenizer": lambda m, c: c.tokenizer.clip_l.tokenizer.get_vocab,
}


@pytest.fixture(scope="module")
def sd1(tiny):
    return tiny("model", "sd1", 0), tiny("clip", "sd1", 0)


@pytest.mark.parametrize("name", SD1_ATTRIBUTES, ids=list(SD1_ATTRIBUTES))
def test_sd1_object_attribute(name, sd1):
    assert SD1_ATTRIBUTES[name](*sd1) is not None


def test_clip_l_text_model_runs_as_the_token_norm_node_calls_it(sd1):
    """analysis.py calls token_embedding(tokens, out_dtype=) and encoder(x, mask=) -> (x, ...)."""
    from merge_suite.nodes.analysis import clip_l_token_norms
    _, clip = sd1
    norms, vocab = clip_l_token_norms(clip, batch=4096)
    assert norms.ndim == 1 and len(norms) > 0 and torch.isfinite(norms).all() and len(vocab) > 1000


# --- server routes and the web extension ---------------------------------------------------------------

@contextlib.contextmanager
def comfy_server_module():
    """ComfyUI's server module as ``sys.modules["server"]`` for one test, imported as main.py does: its root
    ``utils`` package before ``nodes`` (which puts comfy/ on sys.path, where comfy/utils.py would shadow that
    package). The end-to-end tests import demo/server.py under the same name: it is set aside meanwhile."""
    shadow = sys.modules.get("server")
    if shadow is not None and not hasattr(shadow, "PromptServer"):
        del sys.modules["server"]
    try:
        if "server" in sys.modules:
            yield sys.modules["server"]
            return
        root = str(Path(importlib.import_module("folder_paths").__file__).parent)
        utils = sys.modules.get("utils")
        if utils is not None and not hasattr(utils, "__path__"):
            del sys.modules["utils"]
        sys.path.insert(0, root)
        try:
            importlib.import_module("utils.install_util")
            module = importlib.import_module("server")
        finally:
            sys.path.remove(root)
            if utils is not None and not hasattr(utils, "__path__"):
                sys.modules["utils"] = utils
        yield module
    finally:
        if shadow is not None:
            sys.modules["server"] = shadow


def test_prompt_server_instance_routes_are_served_under_api_too():
    """routes.register_with_server() adds to PromptServer.instance.routes before the server starts;
    the browser calls them through api.fetchApi, which prefixes /api."""
    from merge_suite.nodes import routes
    with comfy_server_module() as server:
        missing = object()
        before = getattr(server.PromptServer, "instance", missing)
        loop = asyncio.new_event_loop()
        try:
            prompt_server = server.PromptServer(loop)
            assert server.PromptServer.instance is prompt_server
            assert routes.register_with_server()
            prompt_server.add_routes()
            served = {getattr(r, "canonical", "") for r in prompt_server.app.router.resources()}
        finally:
            if before is missing:
                del server.PromptServer.instance
            else:
                server.PromptServer.instance = before
            loop.close()
    for path in ("/merge_suite/editor_data", "/merge_suite/layout", "/merge_suite/check/block_weights",
                 "/merge_suite/check/elemental", "/merge_suite/elements"):
        assert path in served and "/api" + path in served, path


def test_custom_node_loader_reads_comfy_entrypoint_and_web_directory():
    """__init__.py exposes comfy_entrypoint (V3 registration) and WEB_DIRECTORY (the web/js extension)."""
    source = inspect.getsource(importlib.import_module("nodes"))
    assert "comfy_entrypoint" in source and "WEB_DIRECTORY" in source and "EXTENSION_WEB_DIRS" in source


def _frontend_root() -> Path:
    from app.frontend_management import FrontendManager
    return Path(FrontendManager.default_frontend_path())


@pytest.mark.parametrize("module, name", [("scripts/app.js", "app"), ("scripts/api.js", "api")],
                         ids=["scripts/app.js:app", "scripts/api.js:api"])
def test_frontend_serves_the_modules_the_extension_imports(module, name):
    """web/js imports ../../../scripts/app.js and api.js from the served frontend."""
    text = (_frontend_root() / module).read_text(encoding="utf-8")
    assert re.search(rf"export\s+const\s+{name}\b", text), f"{module} exports no '{name}'"


# Frontend API the web extension calls (a public name survives minification; the browser test drives it).
FRONTEND_NAMES = ("registerExtension", "nodeCreated", "onExecuted", "comfyClass", "addDOMWidget", "getMinHeight",
                  "getMaxHeight", "hideOnZoom", "fetchApi", "setDirtyCanvas", "computeSize", "setSize")


@pytest.fixture(scope="module")
def frontend_bundle() -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="replace")
                     for p in (_frontend_root() / "assets").glob("*.js"))


@pytest.mark.parametrize("name", FRONTEND_NAMES)
def test_frontend_has_the_api_name_the_extension_calls(name, frontend_bundle):
    assert re.search(rf"\b{name}\b", frontend_bundle), f"the frontend no longer mentions '{name}'"
