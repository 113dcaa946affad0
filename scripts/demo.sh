#!/usr/bin/env bash
# The main job on a fresh machine: set up (scripts/setup_host.sh), start headless ComfyUI,
# build tiny demo checkpoints unless MERGE_SUITE_CKPT_A/B point at your own SD1 checkpoints,
# run an example merge -> KSampler workflow, and print where the images were written.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_host.sh"
exec "$repo/.venv/bin/python" "$repo/demo/run_demo.py" "$@"
