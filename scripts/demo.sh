#!/usr/bin/env bash
# The main job on a fresh machine: set up (scripts/setup_host.sh), start headless ComfyUI,
# merge the demo models shipped in demo/models (a base and two style fine-tunes) seven ways,
# sample each merge with the same prompts and seed, and print where the grid and images were written.
# MERGE_SUITE_CKPT_A/B naming your own SD1 checkpoints run the weight sums on them instead.
# COMFYUI_PATH=/path/to/ComfyUI runs it on that ComfyUI, in a venv of its own.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/host_env.sh"
bash "$repo/scripts/setup_host.sh"
exec "$venv/bin/python" "$repo/demo/run_demo.py" "$@"
