"""Peak memory of one SVD-based method on SDXL's largest key, CLIP-G's 49408 x 1280 token embedding.

The four synthetic SDXL checkpoints of bench_svd_methods.py (run it with --keep first) give the key's fp16 base and
three models; they are copied into memory (resident) before a thread samples VmRSS every 5 ms around one call of
the method's per-key merge (C + alpha * d, then cast to fp16, as the engine does). Prints the peak above the
loaded inputs. One method per process, so an earlier method's freed memory does not hide a later one's peak.

    python bench/bench_svd_key_memory.py tsv            # or iso_c, iso_cts, truncate_rank, rotate
    PYTHONPATH=<another checkout> python bench/bench_svd_key_memory.py tsv   # the same probe on other code
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import torch
from safetensors import safe_open

from merge_core.combine.deltas import combine_key
from merge_core.combine.methods import METHODS, MethodParams
from merge_core.threads import compute_threads, torch_threads

WORK = Path(__file__).resolve().parent / "_work"
KEY = "conditioner.embedders.1.model.token_embedding.weight"


def rss_mb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    method = sys.argv[1]
    tensors = []
    for name in "abcd":
        with safe_open(str(WORK / f"sdxl_{name}.safetensors"), "pt") as f:
            tensors.append(f.get_tensor(KEY).clone())  # resident, not pages of a mapping touched later
    base, models = tensors[0], tensors[1:]
    if METHODS[method].max_models == 1:
        models = models[:1]
    peak = [0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    time.sleep(0.1)
    start = peak[0] = rss_mb()
    began = time.perf_counter()
    with torch_threads(compute_threads()):
        combine_key(METHODS[method], MethodParams(rank=64, alignment=1.0), KEY, 1.0, base, models).to(torch.float16)
    took = time.perf_counter() - began
    time.sleep(0.05)
    print(f"{method}: +{peak[0] - start} MB above the loaded inputs ({start} MB), {took:.1f} s")


if __name__ == "__main__":
    main()
