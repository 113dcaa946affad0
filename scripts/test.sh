#!/usr/bin/env bash
# Sets up the host runtime if needed (scripts/setup_host.sh), then runs the whole test suite:
# unit tests of merge_core, integration tests on real ComfyUI objects, and end-to-end
# runs of every example workflow through a real ComfyUI server. Extra args go to pytest.
# COMFYUI_PATH=/path/to/ComfyUI runs the suite against that ComfyUI, in a venv of its own.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/host_env.sh"
bash "$repo/scripts/setup_host.sh" || exit 1
cd "$repo"
# sd-mecha: a test-only reference for the n-model methods (tests/unit/test_sd_mecha_parity.py), pinned, kept
# out of the venv (--no-deps: it must not pull another torch); without it those tests skip and say so.
mecha="$HOME/.cache/merge-suite/sd-mecha-1.1.8"
if [ ! -d "$mecha/sd_mecha" ]; then
  "$venv/bin/python" -m pip install -q --no-deps --target "$mecha" sd-mecha==1.1.8 fuzzywuzzy python-Levenshtein \
    || echo "sd-mecha could not be installed: its parity tests will skip" >&2
fi
"$venv/bin/python" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: check the test paths or the -k/-m filter" >&2
fi
exit "$rc"
