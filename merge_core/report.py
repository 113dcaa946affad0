"""The applied-ratio report: what a merge actually did, per block, per elemental rule and per key.

Built from the plan alone (no tensor is read), so it is exact and free; SuperMerger's
"print change" as a table users can read on a node or in a terminal.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, cast

from .analysis.similarity import format_table
from .nonfinite import warning as nonfinite_warning
from .plan import FROM_B, KEEP_A, MERGE, MergePlan, MergeSettings, Reason

if TYPE_CHECKING:
    from .combine.settings import CombineSettings

# reasons whose keys the report names, each under its heading: keys one model lacks or no block names
LISTED_REASONS = ((Reason.ABSENT_FROM_B, "absent from B"), (Reason.ABSENT_FROM_C, "absent from C"),
                  (Reason.NO_BLOCK_RULE, "matches no"))


def fallback_note(fallbacks: dict, shown: int = 3) -> str:
    """One line: how many keys took their method's documented fallback, and why (e.g. slerp's lerp)."""
    reasons = Counter(fallbacks.values())
    keys = ", ".join(list(fallbacks)[:shown]) + (" ..." if len(fallbacks) > shown else "")
    return (f"fallback: {len(fallbacks)} key(s) where the formula is undefined took the documented fallback ("
            + "; ".join(f"{n}x {why}" for why, n in reasons.most_common()) + f"): {keys}")


def applied_report(plan: MergePlan, per_key: bool = False) -> str:
    s = plan.settings
    # plan.models says which settings the plan holds: an n-model combine's, or a two-model merge's (with beta)
    pairwise = None if plan.models else cast(MergeSettings, s)
    uses_beta = pairwise is not None and (pairwise.beta_from_blocks or pairwise.mode.uses_beta)
    if pairwise is None:
        combine = cast("CombineSettings", s)
        used = ", ".join(f"{n} {getattr(combine.method_params, n)}" for n in combine.method.uses if n != "weights")
        lines = [f"{plan.arch.label} - {combine.method.label} of {len(plan.models)} models over the base"
                 + (f" ({used})" if used else "") + f": {plan.count(MERGE)} keys merged, "
                 f"{plan.count(KEEP_A)} kept from the base"]
    else:
        calc = pairwise.calc.name if pairwise.calc is not None else "normal"
        lines = [f"{plan.arch.label} - {pairwise.mode.label}, calcmode {calc}: {plan.count(MERGE)} keys merged, "
                 f"{plan.count(KEEP_A)} kept from A, {plan.count(FROM_B)} copied from B"]
    if s.blocks_alpha is not None and not s.blocks_alpha.named:
        lines.append(f"alpha {s.alpha:g} not used: blocks_alpha gives every block's alpha (SuperMerger's rule)")
    if pairwise is not None and pairwise.blocks_beta is not None and pairwise.beta_from_blocks \
            and not pairwise.blocks_beta.named:
        lines.append(f"beta {pairwise.beta:g} not used: blocks_beta gives every block's beta")
    rows = []
    for block in plan.arch.blocks:
        keys = [k for k in plan.keys if k.block == block]
        if not keys:
            continue
        alpha, beta = s.ratios(block, keys[0].key)
        merged = [k for k in keys if k.action == MERGE]
        rows.append([block, alpha, beta if uses_beta else "-", len(merged),
                     len(keys) - len(merged), sum(1 for k in merged if k.rule is not None)])
    lines += ["", format_table(rows, ["block", "alpha", "beta", "merged", "kept", "by elemental"])]
    if s.elemental:
        hits = Counter(k.rule.position for k in plan.keys if k.rule is not None)
        erows = [[r.position, r.text, r.ratio_text, hits.get(r.position, 0)] for r in s.elemental]
        lines += ["", format_table(erows, ["rule", "elemental", "alpha", "keys hit (last match)"])]
        unused = [r.text for r in s.elemental if not hits.get(r.position)]
        if unused:
            lines.append(f"note: {len(unused)} rule(s) matched no key, e.g. '{unused[0]}'")
    reasons = Counter(k.note for k in plan.keys if k.action == KEEP_A and k.reason is not None)
    if reasons:
        lines += ["", "kept from A: " + ", ".join(f"{n} {why}" for why, n in reasons.most_common())]
        for reason, heading in LISTED_REASONS:
            named = [k.key for k in plan.keys if k.action == KEEP_A and k.reason is reason]
            if named:
                more = f" (and {len(named) - 20} more)" if len(named) > 20 else ""
                lines.append(f"  {heading}: " + ", ".join(named[:20]) + more)
    if plan.nonfinite:
        lines += ["", nonfinite_warning(plan.nonfinite)]
    if plan.nonfinite_pending:
        lines += ["", f"NaN/inf check: the inputs of {plan.nonfinite_pending} merged keys are checked when the model "
                  "loads (sampling or saving), where they are read anyway; a warning then goes to the console."]
    if plan.fallbacks:
        lines += ["", fallback_note(plan.fallbacks)]
    adjusted = [k.key for k in plan.keys if k.adjust is not None]
    if adjusted:
        lines.append(f"adjusted: {len(adjusted)} keys")
    if per_key:
        krows = [[k.key, k.block, k.action, k.alpha if k.action == MERGE else "-",
                  k.beta if k.action == MERGE and not plan.models else "-", k.rule.position if k.rule else "", k.note]
                 for k in plan.keys]
        lines += ["", format_table(krows, ["key", "block", "action", "alpha", "beta", "rule", "note"])]
    return "\n".join(lines)
