"""LoRA extraction benchmark: rank-r LoRA from two synthetic full-size SD1.5 U-Nets.

Model A (tuned) and B (original) have every key a U-Net LoRA targets, at full
SD1.5 shapes (from merge_core/architectures/keysets/sd1.json.gz), stored fp16. B is random; A = B + a
fine-tune-like delta whose singular values decay as 1/i^0.8 (full rank, so a
rank-64 LoRA has a real truncation error). Timed in the same run:

* ComfyUI's LoraSave algorithm (comfy_extras.nodes_lora_extract.extract_lora:
  full SVD with full_matrices, 0.99-quantile clamp) — the baseline;
* ours, full SVD (no clamp);
* ours, randomized SVD (torch.svd_lowrank, 4 power iterations, no clamp).

Error = ||delta - up @ down||_F / ||delta||_F over all modules (fp32 factors).
Usage: python bench/bench_lora.py [--rank 64] [--limit N] [--markdown]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from merge_core.architectures import SD1  # noqa: E402
try:
    from merge_core.lora.operations import extract_from_models  # noqa: E402
    from merge_core.lora.keys import unet_module  # noqa: E402
    from merge_core.lora.linalg import decompose  # noqa: E402
except ImportError:  # bench_busy.py's "before" copy: the flat layout from before merge_core/lora/ existed
    from merge_core.lora_files import extract_from_models  # noqa: E402
    from merge_core.lora_keys import unet_module  # noqa: E402
    from merge_core.lora_math import decompose  # noqa: E402
from synth import keyset  # noqa: E402


def synthetic_pair(limit: int = 0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {k: s for k, s in keyset("sd1").items() if unet_module(k, SD1, s, conv=False)}
    if limit:
        shapes = dict(list(shapes.items())[:limit])
    a, b = {}, {}
    for key, shape in shapes.items():
        m, n = shape[0], math.prod(shape[1:])
        k = min(m, n)
        spectrum = 0.5 / torch.arange(1, k + 1, dtype=torch.float32) ** 0.8
        delta = (torch.randn(m, k, generator=gen) / math.sqrt(m) * spectrum) @ (
            torch.randn(k, n, generator=gen) / math.sqrt(n))
        base = torch.randn(m, n, generator=gen) * 0.05
        b[key] = base.half().reshape(shape)
        a[key] = (base + delta).half().reshape(shape)
    return shapes, a, b


def run_interleaved(shapes, a, b, rank):
    """Per key, the three methods one after another in rotating order, so that load from other
    processes on a shared machine hits all of them alike. Times cover the decomposition only
    (the delta is computed once); errors are measured the same way for all, outside the timing."""
    import comfy_env
    comfy_env.setup()
    from comfy_extras.nodes_lora_extract import extract_lora
    methods = {
        "ComfyUI LoraSave algorithm (baseline)": lambda d: extract_lora(d, rank),
        "ours, full SVD": lambda d: _factors(decompose(d, rank, "full")),
        "ours, randomized SVD": lambda d: _factors(decompose(d, rank, "randomized")),
    }
    secs = dict.fromkeys(methods, 0.0)
    sq_err = dict.fromkeys(methods, 0.0)
    sq_norm = 0.0
    names = list(methods)
    for i, (key, shape) in enumerate(shapes.items()):
        diff = a[key].float() - b[key].float()
        mat = diff.reshape(shape[0], -1)
        sq_norm += float((mat ** 2).sum())
        for name in names[i % 3:] + names[:i % 3]:
            t = time.perf_counter()
            up, down = methods[name](diff)
            secs[name] += time.perf_counter() - t
            sq_err[name] += float(((mat - up.reshape(shape[0], -1) @ down.reshape(down.shape[0], -1)) ** 2).sum())
    return [(name, secs[name], math.sqrt(sq_err[name] / sq_norm)) for name in names]


def _factors(dec):
    return dec.up, dec.down


def end_to_end(shapes, a, b, rank, svd):
    """Our whole extraction (deltas, SVD, error bookkeeping), for the report's wall time."""
    start = time.perf_counter()
    result = extract_from_models(shapes, a.__getitem__, b.__getitem__, SD1, rank=rank, svd=svd)
    return time.perf_counter() - start, result.rel_error


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--limit", type=int, default=0, help="only the first N modules (quick check)")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    t = time.perf_counter()
    shapes, a, b = synthetic_pair(args.limit)
    params = sum(math.prod(s) for s in shapes.values())
    print(f"{len(shapes)} U-Net modules, {params / 1e6:.0f} M parameters per model, made in "
          f"{time.perf_counter() - t:.1f} s; rank {args.rank}; {torch.get_num_threads()} threads", file=sys.stderr)
    rows = run_interleaved(shapes, a, b, args.rank)
    e2e = end_to_end(shapes, a, b, args.rank, "randomized")
    print(f"end to end, ours randomized (deltas + SVD + bookkeeping): {e2e[0]:.1f} s, error {e2e[1]:.4f}",
          file=sys.stderr)
    base_t, base_e = rows[0][1], rows[0][2]
    full_e = rows[1][2]
    if args.markdown:
        print("| method | wall time (s) | speed vs LoraSave | relative error | error vs our full SVD |")
        print("|---|---|---|---|---|")
    for name, secs, err in rows:
        if args.markdown:
            print(f"| {name} | {secs:.1f} | {base_t / secs:.2f}x | {err:.4f} | {err / full_e - 1:+.2%} |")
        else:
            print(f"{name:40s} {secs:8.1f} s  {base_t / secs:5.2f}x  error {err:.4f} ({err / full_e - 1:+.2%} vs "
                  f"full, {err / base_e - 1:+.2%} vs LoraSave)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
