"""HTTP routes behind the web extension (web/js): presets, block layouts, validation and the merge history.

Every answer comes from merge_core (blocks/presets.py, architectures/, blocks/weights.py,
blocks/elemental.py), so the browser never re-implements a list or a grammar: the editor
shows what the node will do when it runs. The payload functions are plain so tests
can call them without a server; register() mounts them on ComfyUI's PromptServer.
"""
from __future__ import annotations

import gzip
import json
import re
import sys
from functools import lru_cache
from typing import Optional

from ..merge_core.analysis.similarity import element_name
from ..merge_core.architectures import SD1, Architecture, Numbered
from ..merge_core.architectures.declaration import has_prefixed_keys
from ..merge_core.architectures.registry import KEYSETS
from ..merge_core.blocks.elemental import parse_elemental, require_rules_match
from ..merge_core.blocks.presets import presets
from ..merge_core.blocks.weights import parse_block_weights
from ..merge_core.errors import MergeInputError
from ..merge_core.lora.families import LORA_ORDER
from ..merge_core.plan import target_keys
from .layout_names import ALL_LAYOUTS, FAMILIES, LAYOUTS, layout_arch, sized_name  # noqa: F401 (sized_name: API)

PREFIX = "/merge_suite"
# The longest real block list (SDXL's 110 values, or every block of Qwen-Image named) is about 2,000 characters:
# a check's text is bounded at a few times that, and its body at that text with every character JSON-escaped
# (\uXXXX), so one request costs milliseconds (a 1 MB body on layout flux1:999,999 took 17 s of CPU).
MAX_TEXT_CHARS = 16_384
MAX_BODY_BYTES = 6 * MAX_TEXT_CHARS + 1024


def _groups(blocks: tuple[str, ...]) -> dict[str, list[str]]:
    """SuperMerger's helper groups: BASE, IN*, MID (M00), OUT*."""
    groups = {"BASE": [], "IN": [], "MID": [], "OUT": []}
    for b in blocks:
        groups["BASE" if b == "BASE" else "MID" if b.startswith("M") else b.rstrip("0123456789")].append(b)
    return groups


def family_groups(arch: Architecture) -> dict[str, list[str]]:
    """A long layout's groups: the base slots, then each run of fixed ids or of one numbered container."""
    groups: dict[str, list[str]] = {"BASE": list(arch.blocks[:arch.base_blocks])}
    rest = iter(arch.blocks[arch.base_blocks:])
    counts = dict(arch.counts)
    for part in arch.layout[arch.base_blocks:]:
        if isinstance(part, Numbered):
            n = counts.get(part.container, part.default)
            if n:
                groups[part.prefix] = [next(rest) for _ in range(n)]
        else:
            groups[next(rest)] = [part]
    return groups


def layout_payload(arch: Architecture) -> dict:
    return {"label": "SD1/SD2" if arch.name == "sd1" else arch.label, "blocks": list(arch.blocks),
            "groups": _groups(arch.blocks) if arch.name_filter else family_groups(arch),
            "layout": arch.layout_text()}


def editor_data() -> dict:
    """Everything the block-weight editor needs at start: layouts, groups and presets ("families": the
    transformer families at full size, kept apart so the SD editor's layout picker is unchanged)."""
    return {
        "layouts": {name: layout_payload(arch) for name, arch in LAYOUTS.items()},
        "families": {name: layout_payload(arch) for name, arch in FAMILIES.items()},
        "presets": {name: list(values) for name, values in presets().items()},
    }


def family_layout(name: str) -> dict:
    """One layout by name (SD, a transformer family at full size, or sized: ``sd3:24``), for the editor."""
    arch = layout_arch(name)
    if arch is None:
        return {"ok": False, "error": f"unknown layout '{name}'; known: {', '.join(ALL_LAYOUTS)}, or a family "
                                      "with its block counts such as sd3:24"}
    return {"ok": True, "family": name, **layout_payload(arch)}


# "auto" tries the transformer families after SD1/SD2 and SDXL, in their LoRA naming order (SuperMerger's
# 61-value Flux.1 list and Flux ids first)
AUTO_FAMILIES = tuple(name for name in LORA_ORDER if name in FAMILIES)


def check_block_weights(text: str, layout: str = "auto") -> dict:
    """Parse block-weight text as the merge node will. layout "auto" tries SD1/SD2, then SDXL, then the
    transformer families at full size (a list of their length, or their ids in the named form); its
    error is the SD layouts' when nothing fits. A sized layout (``sd3:24``, what a run reported) is
    checked against that model's blocks, and the answer carries the layout ("info") for the editor."""
    known = layout_arch(layout) is not None
    names = [layout] if known else list(LAYOUTS) + list(AUTO_FAMILIES)
    info = {"info": layout_payload(layout_arch(layout))} if known and layout not in ALL_LAYOUTS else {}
    errors = []
    for name in names:
        try:
            weights = parse_block_weights(text, layout_arch(name), "blocks", 0.5)
        except MergeInputError as exc:
            errors.append(exc)
            continue
        if weights is None:
            return {"ok": True, "empty": True, "layout": names[0] if known else None, **info}
        stripped = text.strip()
        return {"ok": True, "empty": False, "layout": name, "values": list(weights.values),
                "preset": stripped if stripped in presets() else None, **info}
    errors = errors[:len(LAYOUTS)] if not known else errors
    error = errors[0]
    if len({e.problem for e in errors}) > 1:  # "auto" and a wrong count: name both layouts
        return {"ok": False, "error": error.problem, "fix": "give 26 values for SD1/SD2 or 20 for SDXL, BASE first."}
    return {"ok": False, "error": error.problem, "fix": error.fix}


def entry_spans(text: str) -> list[tuple[int, int]]:
    """Character span of each elemental entry, numbered as parse_elemental numbers them
    (it splits at commas and newlines; a carriage return stays inside an entry)."""
    spans, start = [], 0
    for i, ch in enumerate(text):
        if ch in ",\n":
            spans.append((start, i))
            start = i + 1
    spans.append((start, len(text)))
    return spans


def check_elemental(text: str, layout: str = "sd1") -> dict:
    """Parse elemental text as the merge node will; on error, the entry number and its span in the text."""
    arch = ALL_LAYOUTS.get(layout, SD1)
    try:
        rules = parse_elemental(text, arch, "elemental")
        keys = _keys(layout if layout in ALL_LAYOUTS else "sd1")
        if rules and keys:  # the full-size model's keys: a rule whose elements match none of them is a typo
            sized = arch.sized(keys, bare=not has_prefixed_keys(keys)) if layout in FAMILIES else arch
            require_rules_match(rules, target_keys(sized, keys), sized)
    except MergeInputError as exc:
        out = {"ok": False, "error": exc.problem, "fix": exc.fix}
        m = re.match(r"entry #(\d+)", exc.problem)
        if m:
            entry = int(m.group(1))
            spans = entry_spans(text)
            if 1 <= entry <= len(spans):
                out.update(entry=entry, start=spans[entry - 1][0], end=spans[entry - 1][1])
        return out
    return {"ok": True, "rules": len(rules), "layout": layout if layout in ALL_LAYOUTS else "sd1"}


@lru_cache(maxsize=None)
def _keys(layout: str) -> tuple[str, ...]:
    arch = ALL_LAYOUTS.get(layout)
    path = KEYSETS / f"{arch.keyset if arch is not None and arch.keyset else layout}.json.gz"  # the full-size model
    if not path.is_file():
        return ()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.load(f))


def block_elements(layout: str, block: str) -> dict:
    """Element names (what an elemental rule matches, less .weight/.bias) of one block of a full-size model."""
    arch = ALL_LAYOUTS.get(layout)
    if arch is not None and layout in FAMILIES:
        arch = arch.sized(_keys(layout), bare=not has_prefixed_keys(_keys(layout)))
    if arch is None or block not in arch.blocks:
        return {"ok": False, "error": f"unknown layout '{layout}' or block '{block}'", "elements": []}
    seen = {}
    for key in _keys(layout):
        if arch.block_of(key) == block:
            seen.setdefault(re.sub(r"\.(weight|bias)$", "", element_name(key, arch)), None)
    return {"ok": True, "layout": layout, "block": block, "elements": list(seen)}


class BadRequest(ValueError):
    """A malformed check request: answered 400 (413 when too large) with a JSON error."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def text_fields(raw: bytes, default_layout: str) -> tuple[str, str]:
    """(text, layout) from a check request's body: a JSON object with a string "text" and an optional
    string "layout"."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not JSON ({str(exc)[:120]}); send {{\"text\": \"...\"}}.") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body is a JSON {type(body).__name__}, not an object; send {{\"text\": \"...\"}}.")
    text, layout = body.get("text", ""), body.get("layout", default_layout)
    for name, value in (("text", text), ("layout", layout)):
        if not isinstance(value, str):
            raise BadRequest(f"'{name}' is a JSON {type(value).__name__}, not a string.")
    if len(text) > MAX_TEXT_CHARS:
        raise BadRequest(f"'text' has {len(text)} characters; at most {MAX_TEXT_CHARS} are checked (the longest "
                         "block list of any layout needs about 2,000).")
    if ":" in layout and layout_arch(layout) is None:
        raise BadRequest(f"'layout' '{layout[:40]}' is not a layout: give a family with its block counts as a "
                         "merge reports them, such as flux1:19,38 (each count at most twice the family's "
                         "full size), or sd1, sdxl, auto.")
    return text, layout


async def read_body(request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused by its Content-Length or after reading limit + 1 bytes at most."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(f"the body has {request.content_length} bytes; at most {limit} are accepted.", 413)
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(min(65536, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the body is larger than {limit} bytes.", 413)


HISTORY_MAX_LIMIT = 100
HISTORY_MAX_SEARCH_CHARS = 1000


def _whole_number(params: dict, name: str, default: int, low: int, high: Optional[int] = None) -> int:
    raw = params.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise BadRequest(f"'{name}' is '{str(raw)[:40]}', not a whole number.") from None
    if value < low or (high is not None and value > high):
        raise BadRequest(f"'{name}' is {value}; give {low} or more" + (f", at most {high}." if high else "."))
    return value


def history_page(params: dict) -> dict:
    """One page of the merge history, newest first, filtered on the server (the log can hold 100,000 entries;
    only the page is sent): query ``search`` (words), ``mode`` (and|or), ``offset``, ``limit`` (1..100).
    Bad values raise BadRequest; a history turned off (MERGE_SUITE_HISTORY=0) answers an empty page marked
    "disabled"."""
    from .history_log import comfy_history
    search = str(params.get("search") or "")
    if len(search) > HISTORY_MAX_SEARCH_CHARS:
        raise BadRequest(f"'search' has {len(search)} characters; at most {HISTORY_MAX_SEARCH_CHARS} are accepted.")
    mode = str(params.get("mode") or "and").strip().lower()
    if mode not in ("and", "or"):
        raise BadRequest(f"'mode' is '{mode[:40]}'; give 'and' (entries with every word) or 'or' (any word).")
    offset = _whole_number(params, "offset", 0, 0)
    limit = _whole_number(params, "limit", 20, 1, HISTORY_MAX_LIMIT)
    log = comfy_history()
    if log is None:
        return {"total": 0, "count": 0, "offset": offset, "limit": limit, "entries": [], "disabled": True}
    total, entries = log.search(search, mode, offset, limit)
    return {"total": total, "count": log.count(), "offset": offset, "limit": limit, "entries": entries}


def register(routes) -> None:
    """Mount the routes on an aiohttp RouteTableDef (ComfyUI also serves them under /api)."""
    import asyncio

    from aiohttp import web

    async def answer(request, check, default_layout: str):
        """Read (size-capped), then parse and check in a worker thread: the event loop keeps serving."""
        try:
            raw = await read_body(request)
            return web.json_response(await asyncio.to_thread(lambda: check(*text_fields(raw, default_layout))))
        except BadRequest as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=exc.status)

    @routes.get(PREFIX + "/editor_data")
    async def _editor_data(request):
        return web.json_response(editor_data())

    @routes.get(PREFIX + "/layout")
    async def _layout(request):
        return web.json_response(family_layout(request.rel_url.query.get("family", "sd1")))

    @routes.post(PREFIX + "/check/block_weights")
    async def _check_blocks(request):
        return await answer(request, check_block_weights, "auto")

    @routes.post(PREFIX + "/check/elemental")
    async def _check_elemental(request):
        return await answer(request, check_elemental, "sd1")

    @routes.get(PREFIX + "/history")
    async def _history(request):
        """Read in a worker thread: a search of a large log takes a moment."""
        try:
            params = dict(request.rel_url.query)
            return web.json_response(await asyncio.to_thread(history_page, params))
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)

    @routes.get(PREFIX + "/elements")
    async def _elements(request):
        q = request.rel_url.query
        return web.json_response(block_elements(q.get("layout", "sd1"), q.get("block", "")))


def register_with_server() -> bool:
    """Register on the running ComfyUI server; False when there is none (library use, tests)."""
    server = sys.modules.get("server")  # ComfyUI's main.py imports it before loading packs
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None:
        return False
    register(instance.routes)
    from .history_log import warm_up
    warm_up()
    return True
