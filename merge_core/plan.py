"""The merge plan: for every key, what happens and with which ratios.

Computed once from key names and shapes, before any tensor is touched, so a bad
input fails before anything is written or patched, and the plan doubles as the
applied-ratio report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Optional, Protocol, Sequence

from .architectures import KEPT, NO_BLOCK, Architecture
from .blocks.elemental import ElementalRule, elemental_alpha, require_rules_match
from .blocks.selection import Selection, is_vae
from .blocks.weights import BlockWeights
from .errors import MergeInputError
from .methods.adjust import Adjust
from .methods.calcmodes import CalcMode, check_calc_parameters
from .methods.modes import MergeMode

# The one list of keys that are never merged, in both namings (docs/merging.md#keys-that-are-never-merged, quirk 4,
# kept).
# SuperMerger's rule is on checkpoint names: a key without "weight" or "bias" keeps A.
# ComfyUI renames some of those OpenCLIP tensors (SD2's CLIP-H, SDXL's CLIP-G) with a
# ".weight", so the rule alone would merge them in the nodes and keep them in the CLI:
# each entry pairs SuperMerger's name with ComfyUI's, relative to the encoder's prefix.
NEVER_MERGED_OPENCLIP = (
    # (checkpoint name after OPENCLIP_PREFIXES, ComfyUI name after COMFY_OPENCLIP_PREFIXES)
    ("positional_embedding", "transformer.text_model.embeddings.position_embedding.weight"),
    ("text_projection", "transformer.text_projection.weight"),  # ComfyUI stores it transposed
    ("logit_scale", "logit_scale"),
)
OPENCLIP_PREFIXES = ("cond_stage_model.model.", "conditioner.embedders.0.model.", "conditioner.embedders.1.model.")
COMFY_OPENCLIP_PREFIXES = ("clip_h.", "clip_g.")
# ComfyUI-only keys with no checkpoint counterpart (its CLIP-L projection, dropped on save),
# and fp8 scale keys (quantisation bookkeeping, not weights).
NEVER_MERGED_COMFY_ONLY = ("clip_l.transformer.text_projection.weight",)
NEVER_MERGED_SUFFIXES = ("scale_weight", "scale_input")
_COMFY_NEVER = frozenset(comfy for _, comfy in NEVER_MERGED_OPENCLIP)


class Action(str, Enum):
    """What happens to one key. The value is the text a per-key report shows (and what str() gives)."""
    MERGE = "merge"
    KEEP_A = "keep_a"
    FROM_B = "from_b"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


MERGE, KEEP_A, FROM_B = Action.MERGE, Action.KEEP_A, Action.FROM_B


class Reason(Enum):
    """Why a key keeps A (or comes from B). The value is the text users see; ``{}`` takes the key plan's detail."""
    NOT_WEIGHT = "not a weight or bias"
    QUANTISATION_SCALE = "quantisation scale"
    VAE_KEPT = "VAE kept from A"
    NO_BLOCK_RULE = "matches no {} block rule"  # detail: the family's label
    ABSENT_FROM_B = "absent from B"
    ABSENT_FROM_C = "absent from C"
    ABSENT_FROM_MODEL = "absent from a model"  # n-model combine: a model lacks the key
    NOT_FLOAT = "integer or bool tensor"
    VAE_COSINE = "VAE kept by cosine modes"
    NOT_INCLUDED = "included"  # include mode: the key is not among the targets
    EXCLUDED = "excluded"
    RATIO_0 = "ratio 0"
    ONLY_IN_B = "only in B"

    def text(self, detail: str = "") -> str:
        return self.value.format(detail) if "{}" in self.value else self.value


# Inpainting (9 input channels) and instruct-pix2pix (8) U-Nets merge their first
# four input channels with a 4-channel model (docs/merging.md#inpainting-and-instruct-pix2pix-inputs).
WIDE_INPUT_CHANNELS = (8, 9)


class PlanSettings(Protocol):
    """What build_plan reads from any merge's settings: a two-model merge's MergeSettings, or an n-model
    combine's CombineSettings (merge_core/combine/settings.py), which has no mode, calc mode, C or Adjust."""

    # read-only: the settings types are frozen dataclasses
    @property
    def alpha(self) -> float: ...

    @property
    def blocks_alpha(self) -> Optional[BlockWeights]: ...

    @property
    def seed(self) -> int: ...

    @property
    def elemental(self) -> tuple[ElementalRule, ...]: ...

    @property
    def elemental_full_key(self) -> bool: ...

    @property
    def selection(self) -> Optional[Selection]: ...

    def ratios(self, block: str, key: Optional[str] = None) -> tuple[float, float]: ...

    def is_identity(self, alpha: float, beta: float) -> bool: ...


@dataclass(frozen=True)
class MergeSettings:
    mode: MergeMode
    alpha: float = 0.5
    beta: float = 0.25
    blocks_alpha: Optional[BlockWeights] = None
    blocks_beta: Optional[BlockWeights] = None
    calc: Optional[CalcMode] = None  # None: "normal", the merge mode's own formula
    gamma: float = 0.0
    seed: int = 0
    tensor2_corrected: bool = False
    elemental: tuple[ElementalRule, ...] = ()
    elemental_full_key: bool = False  # SuperMerger's matching on the full key (prefix included)
    adjust: Optional[Adjust] = None
    selection: Optional[Selection] = None  # include / exclude

    @property
    def beta_from_blocks(self) -> bool:
        """SuperMerger's `usebeta`: Triple sum, sum Twice and the tensor calc modes.

        extract uses the scalar beta even when a beta block list is given (quirk 18, kept).
        """
        return self.mode.uses_beta or (self.calc is not None and self.calc.name in ("tensor", "tensor2"))

    @property
    def needs_c(self) -> bool:
        return self.mode.needs_c or (self.calc is not None and self.calc.needs_c)

    def ratios(self, block: str, key: Optional[str] = None) -> tuple[float, float]:
        """alpha and beta for a block (and key, for a list on a finer layout): block weights override the scalars."""
        alpha = self.blocks_alpha.at(block, key) if self.blocks_alpha is not None else self.alpha
        beta = self.beta
        if self.beta_from_blocks and self.blocks_beta is not None:
            beta = self.blocks_beta.at(block, key)
        return alpha, beta

    def is_identity(self, alpha: float, beta: float) -> bool:
        """True when a key certainly ends up equal to A (so it is not touched at all)."""
        if self.calc is None:
            return self.mode.is_identity(alpha, beta)
        if self.calc.name in ("self", "plus random", "smoothAdd", "trainDifference", "add_perpendicular",
                              "slerp"):
            return alpha == 0
        return False


@dataclass(frozen=True)
class KeyPlan:
    key: str
    action: Action
    block: str = "BASE"
    alpha: float = 0.0
    beta: float = 0.0
    # merge only weight[:, :n] (inpainting A with a 4-channel B); None = whole tensor
    input_channels: Optional[int] = None
    reason: Optional[Reason] = None  # why a key keeps A or comes from B; None for a merged key
    rule: Optional[ElementalRule] = None  # the elemental rule that set alpha, if any
    adjust: Optional[tuple] = None  # Adjust operation applied after the merge: ("scale", f) or ("add", values)
    detail: str = ""  # what the reason's text names (the family of a key no block rule matches)

    @property
    def note(self) -> str:
        """The reason as users read it ("" for a merged key)."""
        return "" if self.reason is None else self.reason.text(self.detail)


@dataclass
class MergePlan:
    arch: Architecture
    settings: PlanSettings  # MergeSettings, or CombineSettings for an n-model combine (models set)
    keys: list[KeyPlan] = field(default_factory=list)
    # {key: {"A"/"B"/"C": count}} of NaN/inf input values, filled while merging (nonfinite.py)
    nonfinite: dict = field(default_factory=dict)
    # merged keys whose inputs' NaN/inf count is not known yet (the nodes count them when the model loads)
    nonfinite_pending: int = 0
    # {key: reason} where a method's formula was undefined and its documented fallback applied
    fallbacks: dict = field(default_factory=dict)
    models: tuple[str, ...] = ()  # combine: the source names of M1..Mn (A is the base)

    def merged(self) -> list[KeyPlan]:
        return [k for k in self.keys if k.action == MERGE]

    def count(self, action: Action) -> int:
        return sum(1 for k in self.keys if k.action == action)


def is_mergeable_name(key: str) -> bool:
    """False for the never-merged keys above, in checkpoint or ComfyUI naming."""
    if not ("weight" in key or "bias" in key) or key.endswith(NEVER_MERGED_SUFFIXES):
        return False
    if key in NEVER_MERGED_COMFY_ONLY:
        return False
    return not any(key.startswith(p) and key[len(p):] in _COMFY_NEVER for p in COMFY_OPENCLIP_PREFIXES)


def kept_reason(arch: Architecture, key: str) -> Optional[Reason]:
    """Why a key keeps A whatever the settings, or None when it takes part in the merge.

    The one rule of the CLI and the nodes, in every naming. SD1/SD2/SDXL keep SuperMerger's name
    filter (parity); the other families merge every tensor (floating-point: build_plan checks dtypes)
    except fp8 scales, a component the family keeps (the VAE) and keys no rule of the family names.
    """
    if arch.name_filter:
        return None if is_mergeable_name(key) else Reason.NOT_WEIGHT
    if key.endswith(NEVER_MERGED_SUFFIXES):
        return Reason.QUANTISATION_SCALE
    block = arch.block_of(key)
    if block == KEPT:
        return Reason.VAE_KEPT
    if block == NO_BLOCK:
        return Reason.NO_BLOCK_RULE  # its text names arch.label (build_plan gives it as the detail)
    return None


def _shape_rule(key: str, sa: Sequence[int], sb: Sequence[int], other: str) -> Optional[int]:
    """None when shapes agree; the channel count to merge for inpainting; else raise."""
    if tuple(sa) == tuple(sb):
        return None
    if len(sa) == len(sb) and len(sa) >= 2 and sa[0] == sb[0] and tuple(sa[2:]) == tuple(sb[2:]):
        if sa[1] in WIDE_INPUT_CHANNELS and sb[1] == 4:
            return 4
        if sa[1] == 4 and sb[1] in WIDE_INPUT_CHANNELS:
            raise MergeInputError(
                f"model_{other}",
                f"has {sb[1]} input channels at '{key}' while model A has 4.",
                "connect the inpainting / instruct-pix2pix model as model A and the normal model as model "
                f"{other.upper()}.")
    raise MergeInputError(
        f"model_{other}",
        f"tensor '{key}' has shape {list(sb)} but model A has {list(sa)}.",
        "merge models of the same architecture and size.")


def target_keys(arch: Architecture, keys) -> list[tuple[str, str]]:
    """(element name, block) of the keys that include/exclude targets and elemental rules can select."""
    return [(arch.released_key(k), arch.block_of(k)) for k in keys if kept_reason(arch, k) is None]


def require_targets(arch: Architecture, settings: PlanSettings, pairs: Sequence[tuple[str, str]]) -> None:
    """Refuse an include/exclude target or an elemental rule that selects no key (a typo that would look
    like success). ``pairs``: target_keys of every model the settings apply to, so that Merge Checkpoints
    checks its U-Net and text encoder together (a U-Net block names no key of the text encoder)."""
    if settings.selection is not None:
        settings.selection.require_matches(pairs, arch, settings.elemental_full_key)
    if settings.elemental:
        require_rules_match(settings.elemental, pairs, arch, settings.elemental_full_key)


def build_plan(arch: Architecture, settings: PlanSettings,
               shapes_a: Mapping[str, Sequence[int]],
               shapes_b: Mapping[str, Sequence[int]],
               shapes_c: Optional[Mapping[str, Sequence[int]]] = None,
               copy_b_only_keys: bool = False,
               dtypes: Optional[Mapping[str, Mapping[str, Any]]] = None, check_targets: bool = True) -> MergePlan:
    """Decide, per key of A, whether it is merged (and with which ratios) or kept.

    Keys of A that are not mergeable names, or absent from B (or C when the mode
    needs C), keep A's tensor. With copy_b_only_keys, keys present only in B are
    copied from B (SuperMerger's stage 2, with quirk 17 fixed: raw B, never B-C).
    dtypes ({"a"/"b"/"c": {key: torch dtype}}): a key that is an integer or bool tensor in
    any input keeps A, in every mode and calc mode (a formula would truncate or cast it).
    check_targets=False: the caller runs require_targets itself, over several plans (Merge Checkpoints).
    An n-model combine's settings (no calc mode, C or Adjust) plan as a Weight sum of A and B would.
    """
    pairwise = settings if isinstance(settings, MergeSettings) else None
    calc = pairwise.calc if pairwise is not None else None
    used_c: Optional[Mapping[str, Sequence[int]]] = None  # C's shapes, where the merge reads C
    if pairwise is not None and pairwise.needs_c:
        if shapes_c is None:
            what = calc.name if calc is not None else pairwise.mode.label
            raise MergeInputError("model_c", f"is required by '{what}' but is not connected.",
                                  "connect a model C, or choose Weight sum.")
        used_c = shapes_c
    if check_targets and (settings.selection is not None or settings.elemental):
        require_targets(arch, settings, target_keys(arch, shapes_a))
    plan = MergePlan(arch, settings)
    for key, shape_a in shapes_a.items():
        block = arch.block_of(key)
        kept = kept_reason(arch, key)
        if kept is not None:
            detail = arch.label if kept is Reason.NO_BLOCK_RULE else ""
            plan.keys.append(KeyPlan(key, KEEP_A, block, reason=kept, detail=detail))
            continue
        if key not in shapes_b:
            plan.keys.append(KeyPlan(key, KEEP_A, block, reason=Reason.ABSENT_FROM_B))
            continue
        if dtypes is not None and not all(getattr(d.get(key), "is_floating_point", True) for d in dtypes.values()):
            plan.keys.append(KeyPlan(key, KEEP_A, block, reason=Reason.NOT_FLOAT))
            continue
        if calc is not None and calc.keeps_vae and is_vae(key):
            plan.keys.append(KeyPlan(key, KEEP_A, block, reason=Reason.VAE_COSINE))
            continue
        if used_c is not None and key not in used_c:
            plan.keys.append(KeyPlan(key, KEEP_A, block, reason=Reason.ABSENT_FROM_C))
            continue
        channels = _shape_rule(key, shape_a, shapes_b[key], "b")
        if used_c is not None and _shape_rule(key, shape_a, used_c[key], "c") != channels:
            raise MergeInputError(
                "model_c", f"tensor '{key}' has shape {list(used_c[key])} "
                f"but model B has {list(shapes_b[key])}.",
                "use a model C with the same layout as model B.")
        # element names (include/exclude, elemental, random draws) are the released files' (naming.py), so a
        # rule and its draws mean the same on every host
        name = arch.released_key(key)
        if settings.selection is not None \
                and not settings.selection.merges(name, block, settings.elemental_full_key, arch):
            left_out = Reason.NOT_INCLUDED if settings.selection.mode == "include" else Reason.EXCLUDED
            plan.keys.append(KeyPlan(key, KEEP_A, block, reason=left_out))
            continue
        alpha, beta = settings.ratios(block, key)
        rule = None
        if settings.elemental:
            alpha, rule = elemental_alpha(settings.elemental, name, block, alpha, settings.elemental_full_key,
                                          settings.seed)
        if calc is not None and pairwise is not None:  # a calc mode is a two-model merge's
            check_calc_parameters(calc, alpha, beta, pairwise.gamma,
                                  "blocks_alpha" if settings.blocks_alpha is not None else "alpha")
        adjust = pairwise.adjust.op(key, arch) if pairwise is not None and pairwise.adjust is not None else None
        # a ratio-0 key is A unchanged; Adjust still applies to it (docs/merging.md#adjust), except where a
        # calc mode skips the key altogether (self or trainDifference with alpha 0)
        if settings.is_identity(alpha, beta) and (adjust is None or calc is not None):
            plan.keys.append(KeyPlan(key, KEEP_A, block, alpha, beta, reason=Reason.RATIO_0, rule=rule))
            continue
        plan.keys.append(KeyPlan(key, MERGE, block, alpha, beta, channels, rule=rule, adjust=adjust))
    if copy_b_only_keys and arch.name_filter:  # SD only: elsewhere a B-only module would change A's architecture
        for key in shapes_b:
            if key not in shapes_a and not key.endswith("position_ids"):
                plan.keys.append(KeyPlan(key, FROM_B, arch.block_of(key), reason=Reason.ONLY_IN_B))
    return plan
