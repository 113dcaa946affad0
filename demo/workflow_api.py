"""Convert a UI-format (saved) workflow into the API-format prompt that /prompt takes.

Example workflows are kept in UI format so ComfyUI's template browser can open
them; the server executes API format. Widget values are matched to input names
in the order the server's /object_info declares them, as the frontend does.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SKIPPED_MODES = {2, 4}  # muted, bypassed


def _inputs_in_order(info: dict) -> list[tuple[str, object, dict]]:
    out = []
    for section in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(section) or {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, kind, opts))
    return out


def _is_widget(kind, opts) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def to_prompt(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in SKIPPED_MODES:
            continue
        class_type = node["type"]
        if class_type not in object_info:
            raise KeyError(f"node type '{class_type}' is not installed on this server")
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, kind, opts in _inputs_in_order(object_info[class_type]):
            if _is_widget(kind, opts) and values:
                inputs[name] = values.pop(0)
                if opts.get("control_after_generate") and values:
                    values.pop(0)  # "fixed" / "randomize": the frontend's own state
            if name in linked:
                _, src_node, src_slot, *_ = links[linked[name]]
                inputs[name] = [str(src_node), src_slot]
        prompt[str(node["id"])] = {"class_type": class_type, "inputs": inputs}
    return prompt
