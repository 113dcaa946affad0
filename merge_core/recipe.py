"""Merge recipes: what was merged, as a tree that chains through successive merges.

A recipe is plain JSON data, so it can ride along with a MODEL or CLIP, go into a
file's metadata and come back unchanged:

  leaf   {"file": "name.safetensors", "sha256": "<hex or empty>"}  a checkpoint file
         {"unknown": "model_a"}     an input whose file is not known (e.g. a stock loader)
  merge  {"kind": "model" | "clip" | "checkpoint", "settings": {make_settings keyword arguments},
          "supermerger": {SuperMerger's sd_merge_recipe fields for this step},
          "a": node, "b": node, "c": node (only when C was used)}

The text form (``recipe_text``) is for people: grid labels, notes, file metadata.
``sd_merge_recipe`` / ``sd_merge_models`` follow SuperMerger's metadata (spec
§11.5) for the last merge step, and carry the whole tree under "merge_suite" so
a Load recipe node can replay every step.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from .errors import MergeInputError
from .plan import MergeSettings

SETTING_DEFAULTS: dict[str, Any] = {
    "mode": "Weight sum", "alpha": 0.5, "beta": 0.25, "blocks_alpha": "", "blocks_beta": "",
    "calcmode": "normal", "gamma": 0.3, "seed": 0, "tensor2_corrected": False, "elemental": "",
    "elemental_full_key": False, "adjust": "", "include_exclude": "",
}
# SuperMerger's mode strings in its history and metadata (spec §11.4)
SUPERMERGER_MODES = {
    "Weight sum": "Weight sum:A*(1-alpha)+B*alpha",
    "Add difference": "Add difference:A+(B-C)*alpha",
    "Triple sum": "Triple sum:A*(1-alpha-beta)+B*alpha+C*beta",
    "sum Twice": "sum Twice:(A*(1-alpha)+B*alpha)*(1-beta)+C*beta",
}
MERGE_SUITE_KEY = "merge_suite"


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
        "weights_alpha_orig": s.blocks_alpha.as_text() if (mbw and wa) else None,
        "weights_beta_orig": s.blocks_beta.as_text() if (mbw and wb) else None,
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
    if not settings.get("blocks_alpha"):
        parts.append(f"alpha={_fmt(float(settings.get('alpha', 0.5)))}")
    if (beta_from_blocks or calcmode == "extract") and not (beta_from_blocks and settings.get("blocks_beta")):
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
        args = ", ".join(visit(n[k]) for k in ("a", "b", "c") if k in n)
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
    return [leaf_ for k in ("a", "b", "c") if k in node for leaf_ in leaves(node[k])]


def file_metadata(model: Optional[Mapping], clip: Optional[Mapping]) -> dict[str, str]:
    """sd_merge_recipe and sd_merge_models (spec §11.5) for a saved checkpoint; {} if nothing was merged."""
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


def parse_file_recipe(metadata: Mapping[str, str], input_name: str = "recipe") -> dict:
    """{"model": tree, "clip": tree} from a file's metadata; SuperMerger-made files become one merge step."""
    raw = metadata.get("sd_merge_recipe")
    if not raw:
        raise MergeInputError(input_name, "has no 'sd_merge_recipe' metadata: it was not saved by a merge.",
                              "choose a checkpoint saved by Merge Suite's Save Checkpoint or by SuperMerger.")
    try:
        recipe = json.loads(raw)
        models = json.loads(metadata.get("sd_merge_models") or "{}")
    except (TypeError, ValueError) as exc:
        raise MergeInputError(input_name, f"has unreadable recipe metadata ({exc}).",
                              "choose another file; this one's metadata is damaged.") from None
    if isinstance(recipe.get(MERGE_SUITE_KEY), dict):
        ours = recipe[MERGE_SUITE_KEY]
        return {"model": ours.get("model"), "clip": ours.get("clip")}
    return {"model": _from_supermerger(recipe, models, "model"), "clip": _from_supermerger(recipe, models, "clip")}


def _from_supermerger(recipe: Mapping, models: Mapping, kind: str) -> dict:
    mode = str(recipe.get("mode", "Weight sum")).split(":", 1)[0]
    if mode == "Add":
        mode = "Add difference"  # a mode forced by the calc mode (spec §11.4 quirk)
    settings = {"mode": mode, "alpha": float(recipe.get("base_alpha", 0.5)),
                "beta": float(recipe.get("base_beta", 0.25)), "calcmode": recipe.get("calcmode", "normal")}
    if recipe.get("mbw"):
        settings["blocks_alpha"] = recipe.get("weights_alpha_orig") or ""
        settings["blocks_beta"] = recipe.get("weights_beta_orig") or ""
    elemental = recipe.get("elemental_merge")
    settings["elemental"] = "\n".join(elemental) if isinstance(elemental, list) else (elemental or "")
    node = {"kind": kind, "settings": settings_dict(settings), "supermerger": dict(recipe)}
    uses_c = mode in ("Add difference", "Triple sum", "sum Twice")
    for name in ("a", "b") + (("c",) if uses_c else ()):
        sha = recipe.get(f"model_{name}") or ""
        node[name] = leaf(models.get(sha, {}).get("name", ""), sha)
    return node
