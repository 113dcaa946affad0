"""Merge recipes: what was merged, as a tree that chains through successive merges.

A recipe is plain JSON data, so it can ride along with a MODEL or CLIP, go into a
file's metadata and come back unchanged:

  leaf   {"file": "name.safetensors", "sha256": "<hex or empty>"}  a checkpoint file
         {"unknown": "model_a"}     an input whose file is not known (e.g. a stock loader)
  merge  {"kind": "model" | "clip" | "checkpoint", "settings": {make_settings keyword arguments},
          "supermerger": {SuperMerger's sd_merge_recipe fields for this step},
          "a": node, "b": node, "c": node (only when C was used)}

The text form (``recipe_text``) is for people: grid labels, notes, file metadata.
``sd_merge_recipe`` / ``sd_merge_models`` follow SuperMerger's metadata
(docs/files.md#metadata-written-with-a-merge) for the last merge step, and carry the whole tree under "merge_suite" so
a Load recipe node can replay every step.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping, Optional

from .blocks.weights import is_named
from .errors import MergeInputError, require_ratio
from .methods.calcmodes import get_calc_mode
from .methods.modes import get_mode
from .combine.params import PARAMETER_BY_FIELD, PARAMETERS
from .plan import MergeSettings

if TYPE_CHECKING:
    from .combine.settings import CombineSettings

SETTING_DEFAULTS: dict[str, Any] = {
    "mode": "Weight sum", "alpha": 0.5, "beta": 0.25, "blocks_alpha": "", "blocks_beta": "",
    "calcmode": "normal", "gamma": 0.3, "seed": 0, "tensor2_corrected": False, "elemental": "",
    "elemental_full_key": False, "adjust": "", "include_exclude": "",
}
# A combine step's settings (the Combine Models node's / combine CLI's), every key present: the method, alpha,
# weights, every method parameter (combine/params.py PARAMETERS, by input name) and the block settings.
COMBINE_DEFAULTS: dict[str, Any] = {
    "method": "task_arithmetic", "alpha": 1.0, "weights": "",
    **{p.name: p.default for p in PARAMETERS}, "blocks_alpha": "", "elemental": "", "include_exclude": "",
}
COMBINE = "combine"
# SuperMerger's mode strings in its history and metadata (docs/files.md#recipes)
SUPERMERGER_MODES = {
    "Weight sum": "Weight sum:A*(1-alpha)+B*alpha",
    "Add difference": "Add difference:A+(B-C)*alpha",
    "Triple sum": "Triple sum:A*(1-alpha-beta)+B*alpha+C*beta",
    "sum Twice": "sum Twice:(A*(1-alpha)+B*alpha)*(1-beta)+C*beta",
}
MERGE_SUITE_KEY = "merge_suite"
# Limits on a file's recipe metadata: it comes from whoever made the file.
MAX_RECIPE_CHARS = 1_000_000
MAX_STEPS = 64
MAX_TEXT_CHARS = 20_000


def leaf(name: str, sha256: str = "") -> dict:
    return {"file": name, "sha256": sha256 or ""}


def unknown(input_name: str) -> dict:
    return {"unknown": input_name}


def is_merge(node: Mapping) -> bool:
    return "settings" in node


def settings_dict(params: Mapping[str, Any]) -> dict:
    """The recipe's copy of user settings: known keys only, every key present."""
    out = dict(SETTING_DEFAULTS)
    for key in SETTING_DEFAULTS:
        if key in params and params[key] is not None:
            value = params[key]
            out[key] = type(SETTING_DEFAULTS[key])(value) if not isinstance(value, str) else value.strip()
    return out


def supermerger_fields(settings: MergeSettings) -> dict:
    """SuperMerger's sd_merge_recipe fields of one step (hashes are filled in at save time)."""
    s = settings
    mbw = s.blocks_alpha is not None or (s.blocks_beta is not None and s.beta_from_blocks)
    wa = s.blocks_alpha.values if s.blocks_alpha else None
    wb = s.blocks_beta.values if (s.blocks_beta and s.beta_from_blocks) else None
    inex = "Off" if s.selection is None else s.selection.mode.capitalize()
    return {
        "type": "sd-webui-supermerger", "generator": "comfyui-merge-suite",
        "weights_alpha": list(wa[1:]) if (mbw and wa) else None,
        "weights_beta": list(wb[1:]) if (mbw and wb) else None,
        # wa/wb set imply their block weights are set (the extra test narrows the type)
        "weights_alpha_orig": s.blocks_alpha.as_text() if (mbw and wa and s.blocks_alpha) else None,
        "weights_beta_orig": s.blocks_beta.as_text() if (mbw and wb and s.blocks_beta) else None,
        "model_a": "", "model_b": "", "model_c": "",
        "base_alpha": wa[0] if wa else s.alpha, "base_beta": wb[0] if wb else s.beta,
        "mode": SUPERMERGER_MODES.get(s.mode.label, s.mode.label), "mbw": mbw,
        "elemental_merge": [r.text for r in s.elemental] or "",
        "calcmode": s.calc.name if s.calc else "normal",
        inex: s.selection.text if s.selection else "",
    }


def merge_step(kind: str, params: Mapping[str, Any], settings: MergeSettings, inputs: Mapping[str, dict]) -> dict:
    node = {"kind": kind, "settings": settings_dict(params), "supermerger": supermerger_fields(settings)}
    for name in ("a", "b", "c"):
        if inputs.get(name) is not None:
            node[name] = inputs[name]
    return node


def combine_settings(settings: CombineSettings) -> dict:
    """A combine step's settings from its CombineSettings (the method's parameters as applied)."""
    p = settings.method_params
    return {"method": settings.method.name, "alpha": settings.alpha,
            "weights": ",".join(f"{w:g}" for w in p.weights) if p.weights is not None else "",
            **{row.name: getattr(p, row.field) for row in PARAMETERS if _recorded(row, settings.method.uses)},
            "blocks_alpha": settings.blocks_alpha.as_text() if settings.blocks_alpha else "",
            "elemental": ",".join(r.text for r in settings.elemental),
            "include_exclude": settings.selection.text if settings.selection else ""}


def _recorded(row, uses) -> bool:
    """Whether a combine step records a parameter: the first release's every time (recipes have always held
    them), a later one only where the method reads it (a replay gives the others their defaults)."""
    return not row.late or row.field == "median_eps" or row.field in uses


def combine_step(settings: CombineSettings, inputs: list) -> dict:
    """{"kind": "combine", "settings": ..., "a": base, "models": [M1, ...]}: an n-model step."""
    return {"kind": COMBINE, "settings": combine_settings(settings),
            "supermerger": {"type": "sd-webui-supermerger", "generator": "comfyui-merge-suite",
                            "mode": f"combine:{settings.method.name}"},
            "a": inputs[0], "models": list(inputs[1:])}


def combine_text(settings: Mapping[str, Any]) -> str:
    """The parameters the step's method reads, and its block / elemental / include-exclude settings."""
    from .combine.methods import get_method
    method = get_method(settings.get("method", "task_arithmetic"))
    keys = [PARAMETER_BY_FIELD[n].name if n in PARAMETER_BY_FIELD else n for n in method.uses]
    keys = (["alpha"] if not settings.get("blocks_alpha") else []) + keys + ["blocks_alpha", "elemental",
                                                                              "include_exclude"]
    return " ".join(f"{k}={_fmt(settings.get(k))}" for k in keys if settings.get(k) not in ("", None))


def replay_combine_settings(settings: Mapping[str, Any]) -> dict:
    """A combine step's settings with every key present, to combine again. Recipes written before
    median_epsilon existed kept the geometric median's epsilon under "epsilon"."""
    from .combine.methods import get_method
    out = {**COMBINE_DEFAULTS, **settings}
    if "median_epsilon" not in settings and "epsilon" in settings and \
            get_method(out["method"]).name == "geometric_median":
        out["median_epsilon"], out["epsilon"] = settings["epsilon"], COMBINE_DEFAULTS["epsilon"]
    return out


def replay_settings(settings: Mapping[str, Any]) -> dict:
    """A merge step's settings with every key present, to merge again: a key the recipe lacks (written by
    an older version or by hand) takes its default, as the node's widget would."""
    return {**SETTING_DEFAULTS, **settings}


def step_inputs(node: Mapping) -> list:
    """The inputs of a merge step in order: a, b, c, or a combine step's base and models."""
    return [node[k] for k in ("a", "b", "c") if k in node] + list(node.get("models") or [])


# --- text for people -----------------------------------------------------------------

def _short_name(node: Mapping) -> str:
    if "file" in node:
        name = node["file"].rsplit("/", 1)[-1]
        return name.rsplit(".", 1)[0] if "." in name else name
    return f"?{node.get('unknown', 'model')}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and any(c in value for c in " \n"):
        return json.dumps(value)
    return str(value)


def settings_text(settings: Mapping[str, Any]) -> str:
    """The settings one step applied, non-default ones only: 'alpha=0.5', or 'blocks_alpha=GRAD_V' without
    alpha, since block weights override the scalar (a swept alpha under fixed blocks changes nothing)."""
    mode = settings.get("mode", "Weight sum")
    calcmode = settings.get("calcmode", "normal")
    beta_from_blocks = mode in ("Triple sum", "sum Twice") or calcmode in ("tensor", "tensor2")
    parts = []
    if not settings.get("blocks_alpha") or is_named(settings["blocks_alpha"]):  # named: unnamed blocks take alpha
        parts.append(f"alpha={_fmt(float(settings.get('alpha', 0.5)))}")
    if (beta_from_blocks or calcmode == "extract") and not (
            beta_from_blocks and settings.get("blocks_beta") and not is_named(settings["blocks_beta"])):
        parts.append(f"beta={_fmt(float(settings.get('beta', 0.25)))}")
    for key in ("blocks_alpha", "blocks_beta", "calcmode", "gamma", "seed", "tensor2_corrected", "elemental",
                "elemental_full_key", "adjust", "include_exclude"):
        value = settings.get(key, SETTING_DEFAULTS[key])
        if value == SETTING_DEFAULTS[key] or value in ("", None):
            continue
        if key == "gamma" and calcmode != "extract" or key == "seed" and calcmode != "plus random":
            continue
        if key == "blocks_beta" and not beta_from_blocks:
            continue
        parts.append(f"{key}={_fmt(value)}")
    return " ".join(parts)


def recipe_text(node: Optional[Mapping]) -> str:
    """One line per merge step, innermost first; a chained step refers to earlier ones as [n]."""
    if not node:
        return ""
    if not is_merge(node):
        return _short_name(node)
    lines: list[str] = []

    def visit(n: Mapping) -> str:
        if not is_merge(n):
            return _short_name(n)
        args = ", ".join(visit(x) for x in step_inputs(n))
        if n.get("kind") == COMBINE:
            lines.append(f"{n['settings'].get('method')}({args}) {combine_text(n['settings'])}")
            return f"[{len(lines)}]"
        scope = {"model": "", "clip": " [text encoder]", "checkpoint": ""}.get(n.get("kind", ""), "")
        later = " (changed after this merge, e.g. a LoRA)" if n.get("modified_after") else ""
        lines.append(f"{n['settings'].get('mode', 'Weight sum')}({args}){scope} {settings_text(n['settings'])}{later}")
        return f"[{len(lines)}]"

    visit(node)
    if len(lines) == 1:
        return lines[0]
    return "\n".join(f"[{i + 1}] {line}" for i, line in enumerate(lines))


# --- file metadata -------------------------------------------------------------------

def leaves(node: Optional[Mapping]) -> list[dict]:
    if not node:
        return []
    if not is_merge(node):
        return [dict(node)]
    return [leaf_ for x in step_inputs(node) for leaf_ in leaves(x)]


def file_metadata(model: Optional[Mapping], clip: Optional[Mapping]) -> dict[str, str]:
    """sd_merge_recipe and sd_merge_models (docs/files.md#metadata-written-with-a-merge) for a saved checkpoint; {}
    if nothing was merged."""
    top = model if (model and is_merge(model)) else (clip if (clip and is_merge(clip)) else None)
    if top is None:
        return {}
    recipe = dict(top.get("supermerger") or {})

    def sha(name: str) -> str:
        node = top.get(name)
        return node.get("sha256", "") if (node and "file" in node) else ""
    recipe["model_a"], recipe["model_b"] = sha("a"), sha("b")
    recipe["model_c"] = sha("c") or recipe["model_a"]  # SuperMerger: C equals A when unused
    recipe[MERGE_SUITE_KEY] = {"model": model, "clip": clip, "text": recipe_text(model or clip)}
    models = {}
    for item in leaves(model) + leaves(clip):
        if item.get("sha256"):
            models[item["sha256"]] = {"name": item["file"], "legacy_hash": item["sha256"][:8]}
    return {"sd_merge_recipe": json.dumps(recipe), "sd_merge_models": json.dumps(models)}


def parse_file_recipe(metadata: Mapping[str, str], input_name: str = "recipe", source: str = "") -> dict:
    """{"model": tree, "clip": tree} from a file's metadata; SuperMerger-made files become one merge step.
    Every field is checked (types, sizes, step count, finite numbers, known modes): errors name ``source``
    (the file) and the field."""
    raw = metadata.get("sd_merge_recipe")
    if not raw:
        raise MergeInputError(input_name, "has no 'sd_merge_recipe' metadata: it was not saved by a merge.",
                              "choose a checkpoint saved by Merge Suite's Save Checkpoint or by SuperMerger.")
    check = RecipeCheck(input_name, source)
    for field in ("sd_merge_recipe", "sd_merge_models"):
        if len(metadata.get(field) or "") > MAX_RECIPE_CHARS:
            raise check.error(field, f"has {len(metadata[field])} characters (at most {MAX_RECIPE_CHARS}).")
    try:
        recipe = json.loads(raw)
        models = json.loads(metadata.get("sd_merge_models") or "{}")
    except (TypeError, ValueError, RecursionError) as exc:
        raise MergeInputError(input_name, f"{check.where}has unreadable recipe metadata ({str(exc)[:200]}).",
                              "choose another file; this one's metadata is damaged.") from None
    check.mapping(recipe, "sd_merge_recipe")
    check.mapping(models, "sd_merge_models")
    if isinstance(recipe.get(MERGE_SUITE_KEY), dict):
        ours = recipe[MERGE_SUITE_KEY]
        trees = {"model": ours.get("model"), "clip": ours.get("clip")}
    else:
        trees = {"model": _from_supermerger(recipe, models, "model", check),
                 "clip": _from_supermerger(recipe, models, "clip", check)}
    for kind, tree in trees.items():
        if tree is not None:
            check.tree(tree, f"{MERGE_SUITE_KEY}.{kind}")
    if trees["model"] is None and trees["clip"] is None:
        raise check.error(MERGE_SUITE_KEY, "has neither a model nor a clip recipe.")
    return trees


class RecipeCheck:
    """Checks one file's recipe tree; errors read "input 'ckpt_name': 'x.safetensors': recipe field 'f' ..."."""

    def __init__(self, input_name: str, source: str):
        self.input_name, self.where, self.steps = input_name, f"'{source}': " if source else "", 0

    def error(self, field: str, problem: str, fix: str = "") -> MergeInputError:
        return MergeInputError(self.input_name, f"{self.where}recipe field '{field}' {problem}",
                               fix or "choose another file, or re-create this merge by hand; this file's recipe "
                                      "metadata is damaged or was written by another tool.")

    def mapping(self, value: Any, field: str) -> Mapping:
        if not isinstance(value, dict):
            raise self.error(field, f"is a {type(value).__name__}, not a JSON object.")
        return value

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.error(field, f"is a {type(value).__name__}, not text.")
        if len(value) > MAX_TEXT_CHARS:
            raise self.error(field, f"has {len(value)} characters (at most {MAX_TEXT_CHARS}).")
        return value

    def number(self, value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(field, f"is {value!r}, not a number.")
        try:
            return require_ratio(field, value)
        except MergeInputError as exc:
            raise self.error(field, exc.problem, exc.fix) from None

    def tree(self, node: Any, field: str) -> None:
        node = self.mapping(node, field)
        if not is_merge(node):
            if set(node) - {"file", "sha256", "unknown"} or not ({"file", "unknown"} & set(node)):
                raise self.error(field, "is neither a merge step nor a file ({'file', 'sha256'} or {'unknown'}).")
            for key, value in node.items():
                self.text(value, f"{field}.{key}")
            return
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.error(field, f"is merge step {self.steps}; a recipe may have at most {MAX_STEPS}.")
        if node.get("kind") == COMBINE:
            self.combine(node, field)
            return
        if node.get("kind", "model") not in ("model", "clip", "checkpoint"):
            raise self.error(f"{field}.kind", f"is {node.get('kind')!r}, not model, clip, checkpoint or combine.")
        self.settings(self.mapping(node["settings"], f"{field}.settings"), f"{field}.settings")
        if "a" not in node or "b" not in node:
            raise self.error(field, "lacks its model A or B.")
        for name in ("a", "b", "c"):
            if name in node:
                self.tree(node[name], f"{field}.{name}")

    def combine(self, node: Mapping, field: str) -> None:
        """A combine step: known settings of the right types, a known method, a base and 1..64 models."""
        from .combine.methods import get_method
        settings = self.mapping(node["settings"], f"{field}.settings")
        self.settings(settings, f"{field}.settings", COMBINE_DEFAULTS)
        try:
            get_method(settings.get("method", "task_arithmetic"))
        except MergeInputError as exc:
            raise self.error(f"{field}.settings.method", exc.problem, exc.fix) from None
        models = node.get("models")
        if "a" not in node or not isinstance(models, list) or not 1 <= len(models) <= MAX_STEPS:
            raise self.error(field, "lacks its base or its list of models.")
        for i, item in enumerate([node["a"], *models]):
            self.tree(item, f"{field}.{'a' if i == 0 else f'models[{i - 1}]'}")

    def settings(self, settings: Mapping, field: str, defaults: Optional[Mapping] = None) -> None:
        known = SETTING_DEFAULTS if defaults is None else defaults
        for key, value in settings.items():
            where = f"{field}.{key}"
            if key not in known:
                raise self.error(where, "is not a merge setting.",
                                 "choose another file; known settings are " + ", ".join(known) + ".")
            default = known[key]
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise self.error(where, f"is {value!r}, not true or false.")
            elif key == "seed":  # only a seed: any 64-bit value costs the same
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 64:
                    raise self.error(where, f"is {value!r}, not a seed (a whole number from 0).")
            elif key == "iterations":  # sizes a loop: a crafted 2**63 would run past any interrupt
                from .combine.methods import MAX_ITERATIONS
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ITERATIONS:
                    raise self.error(where, f"is {value!r}, not an iteration count from 1 to {MAX_ITERATIONS}.")
            elif isinstance(default, int):  # a count such as a rank: a whole number within its row's domain
                row = PARAMETER_BY_FIELD.get(key)
                if isinstance(value, bool) or not isinstance(value, int) or row is not None and not row.accepts(value):
                    raise self.error(where, f"is {value!r}, not a whole number"
                                            + (f" {row.domain()}." if row is not None else "."))
            elif isinstance(default, float):
                self.number(value, where)
            else:
                self.text(value, where)
        if defaults is not None:
            return
        try:
            get_mode(settings.get("mode", "Weight sum"))
            get_calc_mode(settings.get("calcmode", "normal"))
        except MergeInputError as exc:
            raise self.error(f"{field}.{exc.input_name}", exc.problem, exc.fix) from None


def _from_supermerger(recipe: Mapping, models: Mapping, kind: str, check: RecipeCheck) -> dict:
    mode = check.text(recipe.get("mode", "Weight sum"), "mode").split(":", 1)[0]
    if mode == "Add":
        mode = "Add difference"  # a mode forced by the calc mode (docs/supermerger-quirks.md#quirk-26-merge-history)
    settings = {"mode": mode, "alpha": check.number(recipe.get("base_alpha", 0.5), "base_alpha"),
                "beta": check.number(recipe.get("base_beta", 0.25), "base_beta"),
                "calcmode": check.text(recipe.get("calcmode", "normal"), "calcmode")}
    if recipe.get("mbw"):
        settings["blocks_alpha"] = check.text(recipe.get("weights_alpha_orig") or "", "weights_alpha_orig")
        settings["blocks_beta"] = check.text(recipe.get("weights_beta_orig") or "", "weights_beta_orig")
    elemental = recipe.get("elemental_merge")
    if isinstance(elemental, list):
        elemental = "\n".join(check.text(e, "elemental_merge") for e in elemental)
    settings["elemental"] = check.text(elemental or "", "elemental_merge")
    node = {"kind": kind, "settings": settings_dict(settings), "supermerger": dict(recipe)}
    uses_c = mode in ("Add difference", "Triple sum", "sum Twice")
    for name in ("a", "b") + (("c",) if uses_c else ()):
        sha = check.text(recipe.get(f"model_{name}") or "", f"model_{name}")
        entry = check.mapping(models.get(sha, {}), f"sd_merge_models.{sha[:12]}")
        node[name] = leaf(check.text(entry.get("name", ""), f"sd_merge_models.{sha[:12]}.name"), sha)
    return node
