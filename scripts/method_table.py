"""Writes the method comparison table of docs/methods.md from the method table itself (merge_core/combine):
every n-model method's name, label, formula, the inputs it reads, its model count and its reference, and the table
of every parameter's default, domain and users, so the page a user chooses from cannot drift from the code.
tests/unit/test_method_table_doc.py checks it is current.

    python scripts/method_table.py          # rewrite the table in docs/methods.md
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from merge_core.combine.methods import METHODS  # noqa: E402
from merge_core.combine.params import PARAMETER_BY_FIELD, PARAMETERS  # noqa: E402

PAGE = REPO / "docs" / "methods.md"
START = "<!-- method table: written by scripts/method_table.py from merge_core/combine -->"
END = "<!-- end of the method table -->"
PARAMS_START = "<!-- parameter table: written by scripts/method_table.py from merge_core/combine/params.py -->"
PARAMS_END = "<!-- end of the parameter table -->"
# The two inputs every method has, and their domains (settings.parse_weights, require_ratio): not rows of params.py.
COMMON = ["| `alpha` | 1 | finite, within +-1000 (node widget -2 to 4) | all |",
          "| `weights` | 1 each | one per model, finite, within +-1000; the weighted means (geometric median, "
          "multi-SLERP, Karcher): all >= 0 with a positive sum; NuSLERP: a sum other than 0 | the methods that "
          "list it |"]


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


def parameter_table() -> str:
    rows = ["| parameter | default | domain | used by |", "|---|---|---|---|", *COMMON]
    for row in PARAMETERS:
        users = ", ".join(m.name for m in METHODS.values() if row.field in m.uses)
        option = f" (CLI `{row.option}`)" if row.option != "--" + row.name.replace("_", "-") else ""
        rows.append(f"| `{row.name}`{option} | {row.default} | {row.domain()} | {users} |")
    return "\n".join([PARAMS_START, *rows, PARAMS_END])


def _replace(text: str, start: str, end: str, new: str) -> str:
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    return head + new + tail


def rendered(text: str) -> str:
    """The page with its two tables replaced by the current ones."""
    return _replace(_replace(text, START, END, table()), PARAMS_START, PARAMS_END, parameter_table())


if __name__ == "__main__":
    PAGE.write_text(rendered(PAGE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote the table of {len(METHODS)} methods into {PAGE.relative_to(REPO)}")
