#!/usr/bin/env bash
# Sets up the host runtime if needed (scripts/setup_host.sh), then runs the whole test suite:
# unit tests of merge_core, integration tests on real ComfyUI objects, and end-to-end
# runs of every example workflow through a real ComfyUI server. Extra args go to pytest.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_host.sh" || exit 1
cd "$repo"
"$repo/.venv/bin/python" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: check the test paths or the -k/-m filter" >&2
fi
exit "$rc"
