#!/usr/bin/env bash
# Static checks, in the venv scripts/setup_host.sh builds (ruff and mypy come from requirements-test.txt):
# ruff over the whole repository, mypy over merge_core (both configured in pyproject.toml). Exits non-zero on
# any finding. mypy's cache lives in ~/.cache/merge-suite/mypy, so a rerun checks only what changed.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/host_env.sh"
bash "$repo/scripts/setup_host.sh" || exit 1
cd "$repo"
rc=0
echo "[lint] ruff check ."
"$venv/bin/python" -m ruff check . || rc=1
echo "[lint] mypy (merge_core)"
"$venv/bin/python" -m mypy || rc=1
exit "$rc"
