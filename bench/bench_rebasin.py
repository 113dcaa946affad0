"""Re-basin benchmark: full-size synthetic SDXL checkpoints (two seeds), the CLI's path from files to a file.

A and B are bench/synth.py checkpoints (every key of a full SDXL checkpoint, fp16, seeded values), written
to a temporary folder first. Timed in one run: the weight matching (rounds run, groups) and the whole
rebasin_files call (matching plus writing B permuted); peak RSS is the process's VmHWM (file pages it mapped
count too). Usage: python bench/bench_rebasin.py [--folder DIR] [--iterations N] [--keep]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from merge_core.rebasin import rebasin_files  # noqa: E402
from synth import write_synthetic  # noqa: E402


def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default=None, help="where the synthetic files go (default: a temporary folder)")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="keep the files")
    args = ap.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench_rebasin_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        a = write_synthetic("sdxl", folder / "a.safetensors", 1)
        b = write_synthetic("sdxl", folder / "b.safetensors", 2)
        print(f"synthetic SDXL pair written in {time.perf_counter() - t:.1f} s", flush=True)
        marks: list[float] = []
        start = time.perf_counter()
        path, result = rebasin_files(str(a), str(b), str(folder / "out.safetensors"), iterations=args.iterations,
                                     overwrite=True, progress=lambda done, total: marks.append(time.perf_counter()))
        total = time.perf_counter() - start
        matching = (marks[-1] if marks else start) - start
        print(result.report())
        print("| groups | rounds run | matching | whole call (matching + write) | peak RSS |")
        print(f"| {len(result.groups)} | {result.stats.rounds} | {matching:.1f} s | {total:.1f} s | "
              f"{peak_rss_gb():.2f} GB |")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
