# Sourced by setup_host.sh, test.sh and demo.sh: which ComfyUI tree and which venv this run uses.
# The default host (no COMFYUI_PATH) is ComfyUI 0.3.75 in .host/ComfyUI with the venv .venv, as on a fresh
# machine. COMFYUI_PATH=/path/to/ComfyUI selects another tree; it gets a venv of its own under .venvs/, named
# after its version and path, so that its requirements (0.33 pins other frontend and kernel packages) never
# touch the default venv. MERGE_SUITE_VENV overrides the venv's path.
# Sets: repo, comfy, venv, comfy_version.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${COMFYUI_PATH:-}" ]; then
  comfy="$(cd "$COMFYUI_PATH" 2>/dev/null && pwd -P)" || { echo "COMFYUI_PATH=$COMFYUI_PATH is not a folder" >&2; exit 1; }
  [ -f "$comfy/main.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH holds no ComfyUI (no main.py)" >&2; exit 1; }
  export COMFYUI_PATH="$comfy"  # absolute, for the Python side (tests, demo) that runs from the repo
else
  comfy="$repo/.host/ComfyUI"
fi
comfy_version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$comfy/comfyui_version.py" 2>/dev/null || true)"
if [ -n "${MERGE_SUITE_VENV:-}" ]; then
  venv="$MERGE_SUITE_VENV"
elif [ -n "${COMFYUI_PATH:-}" ]; then
  venv="$repo/.venvs/comfyui-${comfy_version:-unknown}-$(printf %s "$comfy" | sha1sum | cut -c1-8)"
else
  venv="$repo/.venv"
fi
