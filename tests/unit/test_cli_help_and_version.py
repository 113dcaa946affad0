"""`--version` and `--help` of the CLI, and the one-place version (pyproject.toml's [project] version)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from merge_core import __version__
from merge_core.cli.app import build_parser, main
from merge_core.version import package_version, pyproject_version

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("merge", "combine", "analyze", "lora-merge", "lora-extract", "dice", "pinpoint", "elements", "blocks",
            "history", "rebasin")


def test_version_is_pyprojects():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(REPO / "pyproject.toml", "rb") as f:
        expected = tomllib.load(f)["project"]["version"]
    assert __version__ == package_version() == pyproject_version(REPO / "pyproject.toml") == expected


def test_pyproject_version_reads_only_merge_suites_project_table(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.other]\nversion = "9.9"\n\n[project]\nname = "merge-suite"\nversion = "1.2.3"\n')
    assert pyproject_version(path) == "1.2.3"
    path.write_text('[project]\nname = "something-else"\nversion = "1.2.3"\n')
    assert pyproject_version(path) is None  # a pyproject.toml that happens to sit above an installed copy
    assert pyproject_version(tmp_path / "missing.toml") is None


def test_version_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f" {__version__}")


def test_help_lists_every_command_on_one_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal must not wrap the command list
    text = build_parser().format_help()
    for command in COMMANDS:
        assert re.search(rf"^    {command}\s+\w.+$", text, re.M), f"{command}:\n{text}"
    res = subprocess.run([sys.executable, "-m", "merge_core", "--help"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("usage: python -m merge_core ")
