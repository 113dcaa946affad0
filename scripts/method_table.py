"""Writes the method comparison table of docs/methods.md from the method table itself (merge_core/combine):
every n-model method's name, label, formula, the inputs it reads, its model count and its reference, so the page
a user chooses from cannot drift from the code. tests/unit/test_method_table_doc.py checks it is current.

    python scripts/method_table.py          # rewrite the table in docs/methods.md
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from merge_core.combine.methods import METHODS  # noqa: E402
from merge_core.combine.params import PARAMETER_BY_FIELD  # noqa: E402

PAGE = REPO / "docs" / "methods.md"
START = "<!-- method table: written by scripts/method_table.py from merge_core/combine -->"
END = "<!-- end of the method table -->"


def models(method) -> str:
    low, high = method.min_models, method.max_models
    if high is None:
        return f"{low}+"
    return str(low) if low == high else f"{low}-{high}"


def inputs(method) -> str:
    names = [PARAMETER_BY_FIELD[f].name if f in PARAMETER_BY_FIELD else f for f in method.uses]
    return ", ".join(names) or "(none)"


def table() -> str:
    rows = ["| method | d (merged = C + alpha * d) | inputs | models | reference (also in) |", "|---|---|---|---|---|"]
    for m in METHODS.values():
        formula = m.formula.replace("|", "\\|")
        rows.append(f"| `{m.name}` ({m.label}) | {formula} | {inputs(m)} | {models(m)} | {m.reference} |")
    return "\n".join([START, *rows, END])


def rendered(text: str) -> str:
    """The page with its table replaced by the current one."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return head + table() + tail


if __name__ == "__main__":
    PAGE.write_text(rendered(PAGE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote the table of {len(METHODS)} methods into {PAGE.relative_to(REPO)}")
