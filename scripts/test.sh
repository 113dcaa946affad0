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
# mergekit and fusion-bench likewise, for the methods they implement (tests/unit/test_parity_*.py).
reference() {  # reference DIR MODULE SPEC...: install SPEC into DIR unless DIR/MODULE is there
  local dir=$1 module=$2
  shift 2
  if [ ! -d "$dir/$module" ]; then
    "$venv/bin/python" -m pip install -q --no-deps --target "$dir" "$@" \
      || echo "$1 could not be installed: its parity tests will skip" >&2
  fi
}
cache="$HOME/.cache/merge-suite"
reference "$cache/sd-mecha-1.1.8" sd_mecha sd-mecha==1.1.8 fuzzywuzzy python-Levenshtein
reference "$cache/mergekit-0.1.5" mergekit mergekit==0.1.5
reference "$cache/fusion-bench-0.2.33" fusion_bench fusion-bench==0.2.33
"$venv/bin/python" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: check the test paths or the -k/-m filter" >&2
fi
exit "$rc"
