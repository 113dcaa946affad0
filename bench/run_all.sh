#!/usr/bin/env bash
# Runs every benchmark in one go and rewrites bench/RESULTS.md with the figures.
# Needs the host runtime (scripts/setup_host.sh) and ~25 GB of free disk for SDXL files.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$repo/.venv/bin/python"
out="$repo/bench/RESULTS.md"
filter() { grep -E '^(#|\||$)' || true; }
{
  echo "# Benchmark results"
  echo
  echo "Produced by \`bash bench/run_all.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GB RAM,"
  echo "torch $("$py" -c 'import torch; print(torch.__version__)'), ComfyUI 0.3.75, CPU only. Ratios compare figures taken in the same run."
  "$py" "$repo/bench/bench_node.py" --repeat 5 2>>"$out.log" | filter
  "$py" "$repo/bench/bench_cli.py" --arch sd1 2>>"$out.log" | filter
  "$py" "$repo/bench/bench_cli.py" --arch sdxl --skip-naive 2>>"$out.log" | filter
  "$py" "$repo/bench/bench_calc.py" --stride 10 2>>"$out.log" | filter
  "$py" "$repo/bench/bench_busy.py" 2>>"$out.log" | filter
} > "$out.tmp"
mv "$out.tmp" "$out"
rm -f "$out.log"
cat "$out"
