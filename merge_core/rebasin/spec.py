"""Which weights of an SD1 or SDXL U-Net share a permutation: the permutation groups, as data.

A group permutes ``width`` hidden units. Every (key, axis, offset) window of a lane is indexed by the same
order, so that what one layer writes into a unit the next layer still reads from it: the function stays
exactly the same. Units come in ``blocks`` equal blocks: a permutation moves whole blocks, and reorders the
units inside each block (one order per lane). That is how GroupNorm (32 groups: a unit must stay in its
group) and attention heads (a head's dims must stay in the head; q/k and v/out are two lanes) are kept.

Groups are found by rule over the U-Net-relative key names (``input_blocks.1.0.in_layers.2.weight``):

- ResBlock hidden channels: in_layers.2 out-channels, emb_layers.1 rows, out_layers.0 GroupNorm, out_layers.3
  in-channels (32 blocks: the GroupNorm groups).
- Attention (attn1, attn2): one block per head; lane q/k: to_q and to_k rows; lane v/out: to_v rows and
  to_out.0 columns.
- Feed-forward (GEGLU) hidden units: ff.net.0.proj value and gate halves (rows, both halves alike) and ff.net.2
  columns.
- The time and label embedding MLPs' hidden units: time_embed.0 / label_emb.0.0 rows, time_embed.2 /
  label_emb.0.2 columns.

The residual streams (the U-Net's channels through skips and concatenations, and the transformers' inner
width through proj_in, LayerNorms and proj_out) are left as they are.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from ..errors import MergeInputError

GROUP_NORM_GROUPS = 32  # every GroupNorm of the SD1 and SDXL U-Nets
SD1_HEADS = 8  # SD1's attention layers have 8 heads (head width = channels / 8)
SDXL_HEAD_WIDTH = 64  # SDXL's have 64-channel heads
FAMILIES = ("sd1", "sdxl")

RESBLOCK = re.compile(r"^(.*)\.in_layers\.2\.weight$")
ATTENTION = re.compile(r"^(.*\.attn[12])\.to_q\.weight$")
FEED_FORWARD = re.compile(r"^(.*)\.ff\.net\.2\.weight$")
MLPS = (("time_embed.0", "time_embed.2", "time embedding"), ("label_emb.0.0", "label_emb.0.2", "label embedding"))

Shapes = Mapping[str, Sequence[int]]
HeadsFn = Callable[[str, int], int]


@dataclass(frozen=True)
class Window:
    """The units of ``key`` along ``axis``, from ``offset`` on (the group's width of them)."""
    key: str
    axis: int
    offset: int = 0


@dataclass(frozen=True)
class PermGroup:
    name: str
    kind: str  # "resblock", "attention", "feed-forward", "mlp"
    width: int
    blocks: int
    lanes: tuple[tuple[Window, ...], ...]

    @property
    def block_width(self) -> int:
        return self.width // self.blocks

    def keys(self) -> list[str]:
        return sorted({w.key for lane in self.lanes for w in lane})


def default_heads(family: str) -> HeadsFn:
    """Attention heads of the released models of a family: SD1 8 heads, SDXL 64-channel heads."""
    def heads(prefix: str, width: int) -> int:
        if family == "sd1":
            return SD1_HEADS
        if width % SDXL_HEAD_WIDTH:
            raise MergeInputError("model_a", f"has {width} attention channels at {prefix}, not a multiple of SDXL's "
                                  f"{SDXL_HEAD_WIDTH}-channel heads.", "re-basin a full-size SDXL U-Net.")
        return width // SDXL_HEAD_WIDTH
    return heads


def heads_from(table: Mapping[str, int]) -> HeadsFn:
    """Heads read from the model itself ({attention module's U-Net-relative name: heads}, e.g. ComfyUI's)."""
    def heads(prefix: str, width: int) -> int:
        if prefix not in table:
            raise MergeInputError("model_a", f"has no head count for the attention layer {prefix}.",
                                  "connect an SD1 or SDXL model loaded by ComfyUI.")
        return int(table[prefix])
    return heads


def _existing(shapes: Shapes, *keys: str) -> list[str]:
    return [k for k in keys if k in shapes]


def _resblock(prefix: str, shapes: Shapes) -> PermGroup:
    conv, emb, norm, out = (f"{prefix}.in_layers.2", f"{prefix}.emb_layers.1", f"{prefix}.out_layers.0",
                            f"{prefix}.out_layers.3")
    width = shapes[f"{conv}.weight"][0]
    rows = _existing(shapes, f"{conv}.weight", f"{conv}.bias", f"{emb}.weight", f"{emb}.bias", f"{norm}.weight",
                     f"{norm}.bias")
    lane = tuple(Window(k, 0) for k in rows) + (Window(f"{out}.weight", 1),)
    return PermGroup(f"{prefix} hidden channels", "resblock", width, GROUP_NORM_GROUPS, (lane,))


def _attention(prefix: str, shapes: Shapes, heads: HeadsFn) -> PermGroup:
    width = shapes[f"{prefix}.to_q.weight"][0]
    n = heads(prefix, width)
    if n < 1 or width % n:
        raise MergeInputError("model_a", f"has {width} attention channels at {prefix}, which {n} heads do not split.",
                              "re-basin an SD1 or SDXL U-Net of the released layout.")
    qk = tuple(Window(k, 0) for k in _existing(shapes, f"{prefix}.to_q.weight", f"{prefix}.to_q.bias",
                                                   f"{prefix}.to_k.weight", f"{prefix}.to_k.bias"))
    vo = tuple(Window(k, 0) for k in _existing(shapes, f"{prefix}.to_v.weight", f"{prefix}.to_v.bias"))
    vo += (Window(f"{prefix}.to_out.0.weight", 1),)
    return PermGroup(f"{prefix} heads", "attention", width, n, (qk, vo))


def _feed_forward(prefix: str, shapes: Shapes) -> PermGroup:
    proj, out = f"{prefix}.ff.net.0.proj", f"{prefix}.ff.net.2"
    inner = shapes[f"{out}.weight"][1]
    halves = tuple(Window(k, 0, offset) for k in _existing(shapes, f"{proj}.weight", f"{proj}.bias")
                   for offset in (0, inner))
    return PermGroup(f"{prefix} feed-forward", "feed-forward", inner, 1, (halves + (Window(f"{out}.weight", 1),),))


def _mlp(first: str, second: str, what: str, shapes: Shapes) -> PermGroup:
    width = shapes[f"{first}.weight"][0]
    lane = tuple(Window(k, 0) for k in _existing(shapes, f"{first}.weight", f"{first}.bias"))
    return PermGroup(f"{what} hidden units", "mlp", width, 1, (lane + (Window(f"{second}.weight", 1),),))


def unet_groups(shapes: Shapes, heads: HeadsFn) -> list[PermGroup]:
    """The permutation groups of an SD1/SDXL U-Net, from its U-Net-relative key names and shapes."""
    groups: list[PermGroup] = []
    for first, second, what in MLPS:
        if f"{first}.weight" in shapes and f"{second}.weight" in shapes:
            groups.append(_mlp(first, second, what, shapes))
    for key in shapes:
        if m := RESBLOCK.match(key):
            groups.append(_resblock(m.group(1), shapes))
        elif m := ATTENTION.match(key):
            groups.append(_attention(m.group(1), shapes, heads))
        elif m := FEED_FORWARD.match(key):
            groups.append(_feed_forward(m.group(1), shapes))
    for group in groups:
        check_group(group, shapes)
    return groups


def check_group(group: PermGroup, shapes: Shapes, input_name: str = "model_a") -> None:
    """Every window exists and fits; blocks split the width; one key is indexed along one axis only."""
    if group.width % group.blocks:
        raise MergeInputError(input_name, f"{group.name}: {group.width} units do not split into {group.blocks} "
                              "blocks.", "re-basin an SD1 or SDXL U-Net of the released layout.")
    axes: dict[str, int] = {}
    for lane in group.lanes:
        for w in lane:
            shape = shapes.get(w.key)
            if shape is None or w.axis >= len(shape) or shape[w.axis] < w.offset + group.width:
                raise MergeInputError(input_name, f"{group.name}: {w.key} is missing or has the shape {shape}.",
                                      "re-basin an SD1 or SDXL U-Net of the released layout.")
            if axes.setdefault(w.key, w.axis) != w.axis:
                raise ValueError(f"{group.name}: {w.key} along two axes")


def group_index(groups: Sequence[PermGroup]) -> dict[str, list[tuple[int, int, Window]]]:
    """{key: [(group number, lane number, window), ...]}: which permutations index each key."""
    index: dict[str, list[tuple[int, int, Window]]] = {}
    for g, group in enumerate(groups):
        for lane_no, lane in enumerate(group.lanes):
            for w in lane:
                index.setdefault(w.key, []).append((g, lane_no, w))
    return index


def neighbours(groups: Sequence[PermGroup]) -> list[set[int]]:
    """Groups that index a common key: solving one changes what the other sees."""
    near: list[set[int]] = [set() for _ in groups]
    for entries in group_index(groups).values():
        members = {g for g, _, _ in entries}
        for g in members:
            near[g] |= members - {g}
    return near


def heads_or_default(family: str, table: Optional[Mapping[str, int]]) -> HeadsFn:
    return heads_from(table) if table is not None else default_heads(family)
