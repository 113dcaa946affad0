"""What a model family declares, and the one interpreter that turns a declaration into key -> block.

A family is data: its layout (block ids in weight-list order, where a numbered container such as
``double_blocks`` stands for one block per index), ordered (pattern -> block) rules over keys relative
to the diffusion model, the prefixes of its other components (text encoders, VAE) with the block they
belong to (or kept from A), what is merged (SuperMerger's weight/bias name filter, or every float
tensor), a detection signature with its rank among the other families, how its LoRA files name
its modules, and its full-size key inventory. Adding a family means adding a declaration (and listing
it in the registry's tuple); every table keyed by family (detection order, LoRA order, keysets) is
derived from the declarations, and nothing here branches on a family's name.

A declaration is a template: the counts of its numbered containers are the full-size model's until
`sized` reads them from a model's keys (SD3 medium has 24 joint blocks, large 38), so the layout is
fixed per model.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from .keys import UNET_PREFIXES, unet_relative
from .naming import released_relative

# block_of's answer for a diffusion-model key that no rule of a family names (families without a
# catch-all block): such a key keeps A and is listed in the report; it never borrows a block's ratio.
NO_BLOCK = "(no block)"
# block_of's answer for a component the family keeps from A (Flux's VAE, SuperMerger's rule).
KEPT = "(kept)"


@dataclass(frozen=True)
class Numbered:
    """A numbered container of the diffusion model: ``<container>.N.`` is block ``<prefix>NN``
    (``<container>N.`` when glued: Cosmos 1 names its blocks ``blocks.block0.``)."""

    container: str
    prefix: str
    default: int  # the count of the full-size model, used until `sized` reads the keys
    glued: bool = False

    def ids(self, count: int) -> tuple[str, ...]:
        return tuple(f"{self.prefix}{i:02d}" for i in range(count))

    @property
    def separator(self) -> str:
        """What stands between the container's name and the index."""
        return "" if self.glued else "."

    @property
    def index_pattern(self) -> str:
        """A regex over diffusion-relative keys whose group is the index."""
        return re.escape(self.container + self.separator) + r"(\d+)\."

    @property
    def rule(self) -> tuple[str, str]:
        return self.index_pattern, self.prefix + "{0:02d}"


@dataclass(frozen=True)
class Signature:
    """How to recognise a family from key names alone.

    numbered: (container, lowest, highest) — the highest index of ``<container>.N`` among the
        diffusion-model keys must lie in [lowest, highest] (highest None: no upper bound).
    any_of: regexes over diffusion-relative keys; when given, one of them (or one of the
        text-encoder markers) must be present.
    all_of / none_of: regexes over diffusion-relative keys that must all be present / all be absent.
    text_encoder_markers: key prefixes that only this family's text encoders have; they decide
        on their own for a text-encoder-only source (a ComfyUI CLIP).
    text_encoder_absent: key prefixes that rule this family's text encoders out (Flux.1 has T5
        like SD3, but never CLIP-G).
    needs_text_encoder: the diffusion layout is shared with another family, so only the text
        encoder can name this one (SD2 vs SD1).
    """

    numbered: tuple[tuple[str, int, Optional[int]], ...] = ()
    any_of: tuple[str, ...] = ()
    all_of: tuple[str, ...] = ()
    none_of: tuple[str, ...] = ()
    text_encoder_markers: tuple[str, ...] = ()
    text_encoder_absent: tuple[str, ...] = ()
    needs_text_encoder: bool = False


@dataclass(frozen=True)
class LoraNaming:
    """How LoRA files name a family's modules, and what extraction writes for it.

    rank: the order among families when a LoRA's module names fit several equally well (lower wins;
        also the order a bare block-weight list is tried in); None where the family's LoRA names are
        read by the U-Net key map (SD1/SD2/SDXL) rather than by family resolution (lora/families.py).
    diffusers: (diffusers/PEFT prefix, the family's own prefix) pairs, enough to name a module's block.
    group: families whose LoRA names cannot be told apart (Chroma and Flux.2 name modules as Flux.1
        does) share a group; a LoRA of one may be applied to a model of another. Empty: the family's name.
    base_model_version / modelspec: kohya's ``ss_base_model_version`` and SAI's
        ``modelspec.architecture`` written by extraction (empty: the family name, ``<name>/lora``).
    """

    rank: Optional[int] = None
    diffusers: tuple[tuple[str, str], ...] = ()
    group: str = ""
    base_model_version: str = ""
    modelspec: str = ""


@dataclass(frozen=True)
class Architecture:
    """One model family, declared: its layout, its key -> block rules and its signature.

    layout: block ids and `Numbered` containers, in weight-list order; the first `base_blocks`
        blocks are the text-encoder slots (the first is the base ratio).
    rules: ordered (regex, block template) pairs over diffusion-relative keys, first match wins
        (numbered containers' rules come first); the template is a block id or a format string fed
        the regex's groups as integers (``IN{0:02d}``).
    components: (prefix, block) pairs for keys outside the diffusion model (text encoders, VAE);
        block `KEPT` keeps the component from A. Keys that match none belong to `outside_block`.
    unmatched_block: the block of a diffusion-model key that no rule names (`NO_BLOCK`: kept from A).
    name_filter: SuperMerger's rule (only keys named weight/bias are merged) — SD1/SD2/SDXL, for
        parity; without it every floating-point tensor is merged.
    scale_norms: a regex over diffusion-relative key stems (no ``.scale`` suffix) of the RMSNorm
        parameters that released files name ``.scale`` and a host may load as ``.weight`` (naming.py);
        either name is read as the released one by the signature, the rules and file key matching.
    detect_rank: when several families' signatures match a model, the lowest rank wins (a family whose
        text encoders include another's, or that needs its text encoder to be told apart, ranks first).
    text_encoder_rank: the order in which a source without diffusion-model keys (a ComfyUI CLIP) is
        named by its text encoders; None: never named that way.
    lora: how the family's LoRA files name modules (`LoraNaming`).
    keyset: the file name (no extension) of the full-size model's key inventory in ``keysets/``.
    variants: (counts, label) pairs: released models of the family that differ only in their block
        counts (Flux.2 Klein 4B and 9B beside Flux.2 dev), named when `sized` reads those counts.
    counts / bare: set by `sized` — container counts read from a model, and whether that model's
        diffusion keys carry no prefix (a diffusion-model-only file).
    """

    name: str
    label: str
    layout: tuple[Union[str, Numbered], ...]
    rules: tuple[tuple[str, str], ...]
    signature: Signature = Signature()
    components: tuple[tuple[str, str], ...] = ()
    outside_block: str = "BASE"
    unmatched_block: str = "BASE"
    name_filter: bool = False
    base_blocks: int = 1
    scale_norms: str = ""
    detect_rank: int = 100
    text_encoder_rank: Optional[int] = None
    lora: LoraNaming = LoraNaming()
    keyset: str = ""
    variants: tuple[tuple[tuple[int, ...], str], ...] = ()
    counts: tuple[tuple[str, int], ...] = ()
    bare: bool = False
    _compiled: tuple = field(default=(), init=False, repr=False, compare=False)
    _scale_norms: Optional[re.Pattern] = field(default=None, init=False, repr=False, compare=False)
    _blocks: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        numbered = [part.rule for part in self.layout if isinstance(part, Numbered)]
        object.__setattr__(self, "_compiled", tuple((re.compile(p), t) for p, t in (*numbered, *self.rules)))
        object.__setattr__(self, "_scale_norms", re.compile(self.scale_norms) if self.scale_norms else None)
        counts = dict(self.counts)
        blocks: list[str] = []
        for part in self.layout:
            blocks.extend(part.ids(counts.get(part.container, part.default)) if isinstance(part, Numbered) else (part,))
        object.__setattr__(self, "_blocks", tuple(blocks))
        named = {t for _, t in self.rules if "{" not in t} | {b for _, b in self.components}
        named |= {self.outside_block, self.unmatched_block}
        unknown = named - set(blocks) - {NO_BLOCK, KEPT}
        if unknown:
            raise ValueError(f"architecture {self.name}: rules name blocks outside its list: {sorted(unknown)}")

    @property
    def lora_group(self) -> str:
        """The LoRA naming group: families in one group cannot be told apart by LoRA module names."""
        return self.lora.group or self.name

    @property
    def blocks(self) -> tuple[str, ...]:
        return self._blocks

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def numbered(self) -> tuple[Numbered, ...]:
        return tuple(p for p in self.layout if isinstance(p, Numbered))

    def sized(self, keys: Iterable[str], bare: bool = False) -> "Architecture":
        """This family's layout for one model: container counts read from its keys (indices 0..max)."""
        rel = [key if bare else unet_relative(key) for key in keys]
        counts = []
        for part in self.numbered:
            pattern = re.compile(part.index_pattern)
            found = [int(m.group(1)) for m in map(pattern.match, filter(None, rel)) if m]
            counts.append((part.container, max(found) + 1 if found else 0))
        sizes = tuple(n for _, n in counts)
        label = next((name for variant, name in self.variants if variant == sizes), self.label)
        return dataclasses.replace(self, counts=tuple(counts), bare=bare, label=label)

    def relative(self, key: str) -> Optional[str]:
        """The key relative to the diffusion model, or None for a component (text encoder, VAE)."""
        rel = unet_relative(key)
        if rel is None and self.bare and not any(key.startswith(p) for p, _ in self.components):
            return key
        return rel

    def released_relative(self, rel: str) -> str:
        """A diffusion-relative key under the name released files give it (naming.py)."""
        return released_relative(self._scale_norms, rel)

    def released_key(self, key: str) -> str:
        """The key with its released parameter name, in the key's own prefix naming."""
        if self._scale_norms is None:  # most families: every key is already its released name
            return key
        rel = self.relative(key)
        if rel is None:
            return key
        return key[:len(key) - len(rel)] + self.released_relative(rel)

    def block_of(self, key: str) -> str:
        """Block id of a key in any naming, a host's renamed parameters included (`NO_BLOCK` / `KEPT`
        for keys that keep A)."""
        rel = self.relative(key)
        if rel is None:
            for prefix, block in self.components:
                if key.startswith(prefix):
                    return block
            return self.outside_block
        rel = self.released_relative(rel)
        for regex, template in self._compiled:
            m = regex.match(rel)
            if m:
                return template.format(*(int(g) for g in m.groups()))
        return self.unmatched_block

    def block_index(self, key: str) -> int:
        return self.blocks.index(self.block_of(key))

    def layout_text(self) -> str:
        """The block ids, with runs of a numbered container shortened to a range (``D00-D18``)."""
        parts, counts = [], dict(self.counts)
        for part in self.layout:
            if isinstance(part, Numbered):
                ids = part.ids(counts.get(part.container, part.default))
                if ids:
                    parts.append(ids[0] if len(ids) == 1 else f"{ids[0]}-{ids[-1]}")
            else:
                parts.append(part)
        return ", ".join(parts)


def has_prefixed_keys(keys: Iterable[str]) -> bool:
    return any(k.startswith(UNET_PREFIXES) for k in keys)
