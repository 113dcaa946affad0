"""The method comparison table of docs/methods.md is the method table's own rendering (scripts/method_table.py),
and the README names every method: a method added to the code without its row in the docs fails here."""
import importlib.util
import re
from pathlib import Path

from merge_core.combine.methods import METHODS

REPO = Path(__file__).resolve().parents[2]


def method_table():
    spec = importlib.util.spec_from_file_location("method_table", REPO / "scripts" / "method_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_table_is_the_method_tables_rendering():
    page = (REPO / "docs" / "methods.md").read_text(encoding="utf-8")
    module = method_table()
    for table in (module.table(), module.parameter_table()):
        assert table in page, "docs/methods.md's tables are stale: run python scripts/method_table.py"
    for method in METHODS.values():
        assert method.reference and method.formula, f"{method.name} lacks its reference or formula"
        assert f"### {method.label}" in page, f"docs/methods.md has no section '### {method.label}'"


def test_the_readme_names_every_method():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([a-z_]+)`", readme))
    missing = [name for name in METHODS if name not in named]
    assert not missing, f"README.md's method table lacks {missing}"
