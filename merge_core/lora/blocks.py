"""LoRA Block Weight (LBW) layouts, presets and SuperMerger's LoRA list syntax (docs/lora.md#lora-list-syntax).

A block spec is a preset name, 12/17/20/26 values in one of the LBW layouts, or the named form
(``IN04=0, OUT=0.5``). Values are placed by block name into the model's own block list (SD1: 26 slots,
SDXL: 20); blocks the layout does not name get 0, as in SuperMerger's ``to26``. On the transformer
families the list is the family's own layout (Flux.1: SuperMerger's 61 values).
The ratio always multiplies the block values (quirk 21 fixed: SuperMerger ignores
the ratio when values are given inline).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..architectures import Architecture
from ..blocks.weights import fit_to_layout, parse_named, preset_on_layout
from ..errors import MergeInputError, require_ratio
from .families import is_family

_SD1_LORA = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00") + tuple(
    f"OUT{i:02d}" for i in range(3, 12))
_SD1_FULL = ("BASE",) + tuple(f"IN{i:02d}" for i in range(12)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(12))
_SDXL_LORA = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00") + tuple(f"OUT{i:02d}" for i in range(6))
_SDXL_FULL = ("BASE",) + tuple(f"IN{i:02d}" for i in range(9)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(9))

LAYOUTS: dict[int, tuple[str, ...]] = {17: _SD1_LORA, 26: _SD1_FULL, 12: _SDXL_LORA, 20: _SDXL_FULL}
LAYOUT_NAMES = {17: "SD1 LoRA", 26: "SD1 LyCORIS/LoCon", 12: "SDXL LoRA", 20: "SDXL LyCORIS/LoCon"}
FLUX_LBW = 61  # SuperMerger's Flux LoRA list: CLIP, T5, IN, D00-D18, S00-S37, OUT (the Flux.1 layout itself)

# the lora-block-weight extension's built-in presets, SuperMerger's fallback (Appendix B)
BUILTIN_PRESETS_TEXT = """\
NONE:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
INS:1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0
IND:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0
INALL:1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0
MIDD:1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0
OUTD:1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0
OUTS:1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1
OUTALL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
ALL0.5:0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5
"""


def _numbers(parts: list[str], input_name: str, where: str) -> list[float]:
    out = []
    for pos, raw in enumerate(parts):
        try:
            value = float(raw.strip())
        except ValueError:
            raise MergeInputError(input_name, f"{where}: value #{pos + 1} '{raw.strip()}' is not a number.",
                                  "write numbers such as 0.5, or a preset name such as ALL or INS.") from None
        out.append(require_ratio(input_name, value, f"{where}: value #{pos + 1} "))
    return out


def _check_count(values: list[float], input_name: str, where: str, family_lists: bool = False) -> None:
    if len(values) not in LAYOUTS and not (family_lists and len(values) == FLUX_LBW):
        raise MergeInputError(
            input_name, f"{where} has {len(values)} block values.",
            "give 17 (SD1 LoRA), 26 (SD1 LoCon/LyCORIS), 12 (SDXL LoRA) or 20 (SDXL LoCon/LyCORIS) values, "
            "61 on Flux.1 (CLIP,T5,IN,D00-D18,S00-S37,OUT), as many as the layout has on other families, "
            "named values such as D00-D18=0.5, or a preset name.")


def parse_presets(text: str = "", input_name: str = "lbw_presets") -> dict[str, tuple[float, ...]]:
    """Built-in presets, then ``NAME:values`` lines of ``text`` (later lines win). Names are stripped
    (quirk: SuperMerger's Merge LoRAs kept 4 leading spaces, so built-ins never matched there).
    12/17/20/26 values (the LBW layouts) or 61 (SuperMerger's Flux list)."""
    out: dict[str, tuple[float, ...]] = {}
    for _source, body in (("built-in", BUILTIN_PRESETS_TEXT), (input_name, text or "")):
        for line in body.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, values = line.partition(":")
            if not sep or not name.strip():
                raise MergeInputError(input_name, f"line '{line}' is not NAME:values.",
                                      "write one preset per line, e.g. MYPRESET:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0")
            where = f"preset '{name.strip()}'"
            nums = _numbers(values.split(","), input_name, where)
            _check_count(nums, input_name, where, family_lists=True)
            out[name.strip()] = tuple(nums)
    return out


def _preset(text: str, presets: dict[str, tuple[float, ...]], input_name: str, where: str) -> list[float]:
    if text not in presets:
        close = [n for n in presets if n.upper() == text.upper()]
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise MergeInputError(input_name, f"{where}: '{text}' is not a known preset.{hint}",
                              "use one of " + ", ".join(presets) + ", define it in lbw_presets, "
                              "give 12/17/20/26 (61 on Flux.1) comma-separated values, or named values such as "
                              "D00-D18=0.5, OUT=1.")
    return list(presets[text])


def _spec_text(spec: str, input_name: str = "block_weights", where: str = "block weights") -> str:
    """The spec without outer blanks and commas; commas alone (',,,,') are refused, not read as 'every block
    = ratio': a list whose numbers were lost is a typo, and empty text already means that."""
    text = (spec or "").strip()
    stripped = text.strip(",").strip()
    if text and not stripped:
        raise MergeInputError(input_name, f"{where}: '{text[:40].encode('unicode_escape').decode()}' holds only "
                                          "commas, no value.",
                              "leave it empty for every block at the ratio, or give one value per block, a preset "
                              "name, or pairs such as D00-D18=0.5, OUT=1.")
    return stripped


def block_values(spec: str, ratio: float, arch: Architecture, presets: dict[str, tuple[float, ...]],
                 input_name: str = "block_weights", lora: str = "") -> dict[str, float]:
    """Ratio per block of ``arch`` (BASE = text encoder; Flux.1's CLIP and T5) for one LoRA.

    ``spec``: empty (every block = ratio), a preset name, comma-separated values, or the named form
    ``D00-D18=0.3, OUT=1`` (blocks not named keep 1). On the transformer families a list has one value
    per block of the layout (SuperMerger's 61 on Flux.1); an LBW preset (12/17/20/26 values) keeps its
    first value for the base slots and its other values, as a curve, resampled over the other blocks
    (blocks.weights.preset_on_layout).
    """
    where = f"LoRA '{lora}' block weights" if lora else "block weights"
    ratio = require_ratio(input_name, ratio, f"LoRA '{lora}': ratio " if lora else "strength ")
    text = _spec_text(spec, input_name, where)
    if not text:
        return {b: ratio for b in arch.blocks}
    if "=" in text:
        named = parse_named(text, arch, input_name, 1.0)
        return {b: ratio * v for b, v in zip(named.blocks, named.values)}
    preset = "," not in text
    values = _preset(text, presets, input_name, where) if preset else _numbers(text.split(","), input_name, where)
    if is_family(arch):
        if preset and len(values) != arch.n_blocks and len(values) in LAYOUTS:  # its curve, resampled
            values = preset_on_layout(tuple(values), arch, input_name, f"{where}: preset '{text}'")
        values = fit_to_layout(values, arch, input_name)
        return {b: ratio * v for b, v in zip(arch.blocks, values)}
    _check_count(values, input_name, where)
    by_block = dict(zip(LAYOUTS[len(values)], values))
    return {b: ratio * by_block.get(b, 0.0) for b in arch.blocks}


def check_spec(spec: str, ratio: float, presets: dict[str, tuple[float, ...]], input_name: str = "block_weights",
               lora: str = "") -> None:
    """What can be checked before the model is known (validate_inputs): the ratio, numbers, preset names
    and named pairs; counts and block ids are checked against the model's layout when the node runs."""
    where = f"LoRA '{lora}' block weights" if lora else "block weights"
    require_ratio(input_name, ratio, f"LoRA '{lora}': ratio " if lora else "strength ")
    text = _spec_text(spec, input_name, where)
    if "=" in text:
        for pos, raw in enumerate(text.replace("\n", ",").split(",")):
            ids, sep, number = raw.partition("=")
            if not sep or not ids.strip():
                raise MergeInputError(input_name, f"{where}: pair #{pos + 1} '{raw.strip()}' is not ID=value.",
                                      "write pairs such as D00-D18=0.5, OUT=1.")
            _numbers([number], input_name, f"{where}: pair #{pos + 1}")
    elif text and "," not in text:
        _preset(text, presets, input_name, where)
    elif text:
        _numbers(text.split(","), input_name, where)


@dataclass(frozen=True)
class LoraItem:
    """One entry of a LoRA list: file name, ratio and block spec (text, possibly empty)."""

    name: str
    ratio: float
    blocks: str = ""

    def ratio_text(self) -> str:
        return f"{self.ratio:g}" + (f":{self.blocks}" if self.blocks else "")


def parse_lora_list(text: str, input_name: str = "lora_list") -> list[LoraItem]:
    """``name:ratio[:blocks]`` items separated by commas or newlines.

    A comma fragment without ':' continues the previous item, so inline block
    values may contain commas (docs/lora.md#lora-list-syntax).
    """
    items: list[list[str]] = []
    for line in (text or "").replace("\r", "").split("\n"):
        for fragment in line.split(","):
            frag = fragment.strip()
            if not frag:
                continue
            if ":" not in frag:
                if not items:
                    raise MergeInputError(input_name, f"'{frag}' has no ':ratio'.",
                                          "write name:ratio, e.g. my_lora:0.8 or my_lora:1:INS.")
                items[-1][-1] += "," + frag
                continue
            items.append(frag.split(":", 2))
    out = []
    for parts in items:
        name = parts[0].strip()
        if len(parts) < 2 or not name:
            raise MergeInputError(input_name, f"'{':'.join(parts)}' is not name:ratio.",
                                  "write name:ratio, e.g. my_lora:0.8 or my_lora:1:INS.")
        try:
            ratio = float(parts[1])
        except ValueError:
            raise MergeInputError(input_name, f"LoRA '{name}': ratio '{parts[1].strip()}' is not a number.",
                                  "write name:ratio, e.g. my_lora:0.8.") from None
        ratio = require_ratio(input_name, ratio, f"LoRA '{name}': ratio ")
        out.append(LoraItem(name, ratio, parts[2].strip() if len(parts) > 2 else ""))
    return out


def blocks26_text(values: dict[str, float]) -> str:
    """The ratios joined, for the ``sshs_blocks`` metadata field."""
    return ",".join(f"{v:g}" for v in values.values())


def resolve_item(item: LoraItem, arch: Architecture, presets: Optional[dict] = None,
                 input_name: str = "lora_list") -> dict[str, float]:
    return block_values(item.blocks, item.ratio, arch, presets or parse_presets(), input_name, item.name)
