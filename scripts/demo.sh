#!/usr/bin/env bash
# The main job on a fresh machine: set up (scripts/setup_host.sh), start headless ComfyUI,
# build tiny demo checkpoints unless MERGE_SUITE_CKPT_A/B point at your own SD1 checkpoints,
# run an example merge -> KSampler workflow, and print where the images were written.
# COMFYUI_PATH=/path/to/ComfyUI runs it on that ComfyUI, in a venv of its own.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/host_env.sh"
bash "$repo/scripts/setup_host.sh"
exec "$venv/bin/python" "$repo/demo/run_demo.py" "$@"
