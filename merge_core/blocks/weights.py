"""Block-weight text (MBW): parsing, preset resolution and layout conversion.

Accepted forms, resolved in this order (docs/merging.md#how-a-preset-name-resolves, with quirk 35 fixed: presets
are looked up before anything else):
  * empty text -> no block weights (the scalar alpha/beta apply everywhere);
  * the named form ``ID=value, FIRST-LAST=value, ALL=value`` (any text with ``=``): block ids and
    ranges in layout order (blocks/specs.py), later pairs override earlier ones, blocks not named take
    the scalar (alpha or beta);
  * a single preset name (no comma) -> that preset on the layout (see `preset_on_layout`);
  * comma-separated numbers, exactly one per block of the layout (SD1/SD2 26, SDXL 20, Flux.1 61, ...),
    else an error that prints the layout; SDXL also takes 26 (its BASE, IN00-IN08, M00 and OUT00-OUT08
    are kept, docs/merging.md#converting-an-sd1-list-for-sdxl) and SuperMerger's 110-value extended list
    (architectures.SDXL_EXTENDED).
The first value is the base slot and is also the base ratio (text encoder).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..architectures import ALTERNATE_LAYOUTS, SD1_BLOCKS, Architecture
from ..architectures.auto import AUTO
from ..errors import MergeInputError, require_ratio
from .presets import presets
from .specs import expand_token

SDXL_FROM_26 = tuple(i for i in range(26) if SD1_BLOCKS[i] not in (
    "IN09", "IN10", "IN11", "OUT09", "OUT10", "OUT11"))


@dataclass(frozen=True)
class BlockWeights:
    """Per-block ratios for one architecture, in its block-list order."""

    blocks: tuple[str, ...]
    values: tuple[float, ...]
    fine: Optional[Architecture] = None  # a finer layout of the same model (SDXL's 110): values follow its ids
    named: bool = False  # from ID=value pairs: blocks not named took the scalar, so the scalar still counts

    def __post_init__(self):
        assert len(self.blocks) == len(self.values)

    @property
    def base(self) -> float:
        return self.values[0]

    def of(self, block: str) -> float:
        return self.values[self.blocks.index(block)]

    def at(self, block: str, key: Optional[str] = None) -> float:
        """The value for a key of `block`; on a finer layout, the key's own fine block decides."""
        if self.fine is not None and key is not None:
            return self.of(self.fine.block_of(key))
        return self.of(block)

    def as_text(self) -> str:
        return ",".join(f"{v:.10g}" for v in self.values)


def parse_numbers(text: str, input_name: str) -> list[float]:
    values = []
    for pos, raw in enumerate(text.replace("\n", ",").split(",")):
        token = raw.strip()
        if token == "":
            raise MergeInputError(
                input_name, f"value #{pos + 1} is empty in '{text.strip()}'.",
                "write one number between each pair of commas.")
        try:
            value = float(token)
        except ValueError:
            hint = ("random tokens (R, U, X, D) are drawn by the Random Block Weights node "
                    "(merge_core.blocks.dice), not inside a merge; " if token.upper() in ("R", "U", "X", "D") else "")
            raise MergeInputError(
                input_name, f"value #{pos + 1} '{token}' is not a number.",
                hint + "write numbers such as 0.5, or a preset name such as GRAD_V.") from None
        values.append(require_ratio(input_name, value, f"value #{pos + 1} '{token}' "))
    return values


def parse_block_weights(text: Optional[str], arch: Architecture, input_name: str = "block_weights",
                        default: Optional[float] = None) -> Optional[BlockWeights]:
    """Parse MBW text for ``arch``; None when the text is empty. default: the scalar that blocks the
    named form leaves out take (required for that form)."""
    if text is None or not text.strip():
        return None
    stripped = text.strip().strip(",").strip()
    if not stripped:  # ",,,," is not "no block weights": a list whose numbers were lost, or a typo
        raise MergeInputError(
            input_name, f"'{text.strip()[:40].encode('unicode_escape').decode()}' holds only commas, no value.",
            f"leave it empty for no block weights, or give {arch.n_blocks} comma-separated numbers, a preset name "
            f"such as GRAD_V, or named values such as {named_example(arch)}.")
    if is_named(stripped):
        return parse_named(stripped, arch, input_name, default)
    if "," not in stripped and "\n" not in stripped:
        table = presets()
        if stripped in table:
            return BlockWeights(arch.blocks, tuple(preset_on_layout(table[stripped], arch, input_name,
                                                                    f"preset '{stripped}'")))
        try:
            float(stripped)
        except ValueError:
            close = [n for n in table if n.upper() == stripped.upper()]
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise MergeInputError(
                input_name, f"'{stripped}' is neither a preset name nor a list of numbers.{hint}",
                "use one of the preset names (GRAD_V, FLAT_25, ALL_A, ...), "
                f"{arch.n_blocks} comma-separated numbers, or named values such as {named_example(arch)}.") from None
    values = parse_numbers(stripped, input_name)
    for alternate in ALTERNATE_LAYOUTS.get(arch.name, ()):
        if len(values) == alternate.n_blocks:
            return BlockWeights(alternate.blocks, tuple(values), fine=alternate)
    return BlockWeights(arch.blocks, tuple(fit_to_layout(values, arch, input_name)))


def parse_named(text: str, arch: Architecture, input_name: str, default: Optional[float]) -> BlockWeights:
    """``D00-D18=0.3, S00-S37=0.7, OUT=1``: later pairs override earlier ones, other blocks take `default`."""
    if default is None:
        raise MergeInputError(input_name, "named block weights need the scalar that unnamed blocks take.",
                              "give the full list of numbers instead.")
    values = dict.fromkeys(arch.blocks, float(default))
    for pos, raw in enumerate(text.replace("\n", ",").split(",")):
        ids, sep, number = raw.partition("=")
        ids = ids.strip()
        if not sep or not ids:
            raise MergeInputError(input_name, f"pair #{pos + 1} '{raw.strip()}' is not ID=value.",
                                  f"write pairs such as {named_example(arch)}.")
        named = arch.blocks if ids.upper() == "ALL" else expand_token(ids, arch)
        if named is None:
            raise MergeInputError(
                input_name, f"pair #{pos + 1}: unknown block id '{ids}' for {arch.label}{unrecognised(arch)}.",
                f"use ids or ranges of its layout: {arch.layout_text()}, or ALL.")
        value = parse_numbers(number, input_name)
        if len(value) != 1:
            raise MergeInputError(input_name, f"pair #{pos + 1} '{raw.strip()}' needs one number.",
                                  f"write pairs such as {named_example(arch)}.")
        values.update(dict.fromkeys(named, value[0]))
    return BlockWeights(arch.blocks, tuple(values.values()), named=True)


def is_named(text: str) -> bool:
    """True for the named form (``ID=value`` pairs), whose unnamed blocks take the scalar."""
    return "=" in text


def named_example(arch: Architecture) -> str:
    mid = arch.blocks[len(arch.blocks) // 2]
    return f"'{arch.blocks[1]}=0.3, {mid}-{arch.blocks[-2]}=0.7, {arch.blocks[-1]}=1'"


def unrecognised(arch: Architecture) -> str:
    """On automatic blocks, why a list written for a family does not fit: the model matched none."""
    return " (the model matches no declared family, so its blocks are named after its modules)" \
        if arch.name == AUTO else ""


def preset_on_layout(values: tuple[float, ...], arch: Architecture, input_name: str = "block_weights",
                     what: str = "a preset") -> list[float]:
    """A 26-value preset on a layout: exact on SD1/SD2 (26) and SDXL (20, converted); elsewhere the
    base value goes to the base slots and the curve over IN00..OUT11 (positions 0..24) is resampled
    linearly over the other blocks in layout order — block j of m sits at 24·j/(m-1).

    Automatic blocks are refused: the block-weight editor only ever shows declared layouts, so a preset
    met there was chosen for another layout (a Flux model its family failed to match), and spreading its
    curve over module names in key order would give every block a ratio nobody saw."""
    if arch.name == AUTO:
        shown = arch.blocks if arch.n_blocks <= 6 else (*arch.blocks[:4], "...", arch.blocks[-1])
        raise MergeInputError(
            input_name, f"{what} needs a declared layout (SD1/SD2, SDXL, Flux.1, ...), but the model matches no "
            f"declared family and has {arch.n_blocks} automatic blocks ({', '.join(shown)}).",
            f"give {arch.n_blocks} comma-separated values (python -m merge_core blocks FILE lists the blocks), "
            f"named values such as {named_example(arch)}, or no block weights (the scalar applies everywhere).")
    if arch.name_filter:  # the SD families
        return fit_to_layout(list(values), arch, "preset")
    curve, m = values[1:], arch.n_blocks - arch.base_blocks
    out = [values[0]] * arch.base_blocks
    for j in range(m):
        x = (len(curve) - 1) * j / (m - 1) if m > 1 else 0.0
        i = min(int(x), len(curve) - 2)
        out.append(curve[i] + (curve[i + 1] - curve[i]) * (x - i))
    return out


def fit_to_layout(values: list[float], arch: Architecture, input_name: str) -> list[float]:
    n = len(values)
    if n == arch.n_blocks:
        return values
    if arch.n_blocks == 20 and n == 26:
        return [values[i] for i in SDXL_FROM_26]
    if arch.n_blocks == 20 and n == 21:
        return values[:20]  # SuperMerger's lists may carry the unused trailing VAE slot
    alternates = "".join(f"{a.n_blocks} (extended), " for a in ALTERNATE_LAYOUTS.get(arch.name, ()))
    accepted = alternates + ("26 (SD1/SD2 layout, converted) or 20" if arch.n_blocks == 20 else str(arch.n_blocks))
    raise MergeInputError(
        input_name,
        f"has {n} values, but {arch.label} block weights need {accepted}{unrecognised(arch)} ({arch.layout_text()}).",
        f"give exactly {arch.n_blocks} comma-separated values, starting with {arch.blocks[0]}, "
        f"or named values such as {named_example(arch)}.")
