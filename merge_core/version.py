"""The package version, kept in one place: pyproject.toml's ``[project] version``.

A checkout (the ComfyUI pack cloned into custom_nodes/, or ``python -m merge_core`` from a clone) reads
its own pyproject.toml, so a different merge-suite installed in the same environment cannot mislead it;
an installed wheel has no pyproject.toml beside it and asks importlib.metadata.
"""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Optional

DISTRIBUTION = "merge-suite"
CHECKOUT_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def pyproject_version(path: Path) -> Optional[str]:
    """``[project] version`` of a pyproject.toml that describes merge-suite, else None."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)  # the [project] table's lines
    if project is None or not re.search(rf'^name\s*=\s*"{DISTRIBUTION}"\s*$', project.group(1), re.M):
        return None
    version = re.search(r'^version\s*=\s*"([^"]+)"\s*$', project.group(1), re.M)
    return version.group(1) if version else None


def package_version() -> str:
    """This copy's version: the checkout's pyproject.toml, else the installed distribution's metadata."""
    version = pyproject_version(CHECKOUT_PYPROJECT)
    if version is not None:
        return version
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


__version__ = package_version()
