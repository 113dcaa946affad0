"""The SVD-based n-model methods (TSV-Merge, Iso-C, Iso-CTS, truncate_rank, rotate) on full-size synthetic SDXL.

(1) Whole files: a base and three "fine-tunes" (bench/synth.py's full SDXL checkpoints, fp16, seeds 1-4: every
    key of a real SDXL checkpoint with seeded random values) combined by ``python -m merge_core combine`` into an
    fp16 file; wall time and the child's peak RSS against the cold I/O floor of the same job (read every input once,
    write one output of the base's size, fsync; inputs dropped from the page cache before each). rotate takes the
    base and one model.
(2) The same keys, against the reference implementations: a sample of the largest matrices of each shape (U-Net
    linear layers, 3x3 convolutions, the token embeddings) through our per-key function and through fusion-bench
    0.2.33's TSV / Iso-C / Iso-CTS and sd-mecha 1.1.8's truncate_rank / rotate, in this process, float32, one key
    at a time; the references are looked for where the parity tests find them.

Synthetic fine-tunes are independent random tensors, so every task vector has full rank: the SVDs do the most
work they can (a real fine-tune's task vectors are no cheaper to decompose, since the methods take full SVDs).

    python bench/bench_svd_methods.py [--methods tsv,iso_c,iso_cts,truncate_rank,rotate] [--sample 3] [--keep]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "unit"))

from bench_cli import WORK, evict, run_measured, synthetic_inputs  # noqa: E402
from bench_flux import FLOOR  # noqa: E402
from bench_methods import fourth_input  # noqa: E402
from merge_core.combine.methods import METHODS, MethodParams  # noqa: E402
from merge_core.io.safetensors_file import SafetensorsReader  # noqa: E402

METHODS_RUN = ("truncate_rank", "iso_c", "tsv", "rotate", "iso_cts")  # cheapest first
OPTIONS = {"truncate_rank": ["--rank", "64"], "rotate": []}
SHAPE_CLASSES = {  # a name per kind of matrix, and how to recognise its keys
    "linear 1280x1280": lambda k, s: s == (1280, 1280),
    "linear 10240x1280 (GEGLU)": lambda k, s: s == (10240, 1280),
    "conv 1280x2560x3x3": lambda k, s: s == (1280, 2560, 3, 3),
    "token embedding 49408x1280": lambda k, s: s == (49408, 1280),
}


def file_rows(methods, base: str, models: list[str]) -> list[str]:
    py, out = sys.executable, str(WORK / "svd_out.safetensors")
    size = os.path.getsize(base)
    rows = ["| job | wall | peak RSS | vs floor |", "|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    floors: dict[int, float] = {}
    for method in methods:
        used = models[:1] if METHODS[method].max_models == 1 else models
        inputs = [base, *used]
        if len(used) not in floors:
            evict(inputs)
            floors[len(used)] = run_measured([py, "-c", FLOOR, out, str(size), *inputs])[0]
            os.remove(out)
            rows.append(f"| I/O floor: read {len(inputs)} files, write {size / 1e9:.1f} GB, fsync | "
                        f"{floors[len(used)]:.1f} s | | 1.00x |")
            print(rows[-1], flush=True)
        evict(inputs)
        wall, rss = run_measured([py, "-m", "merge_core", "combine", *used, "--base", base, "--method", method,
                                  *OPTIONS.get(method, []), "--dtype", "fp16", "-o", out, "--overwrite", "-q"])
        os.remove(out)
        rows.append(f"| `combine --method {method}` ({len(used)} model{'s' * (len(used) > 1)}) | {wall:.1f} s | "
                    f"{rss:.2f} GB | {wall / floors[len(used)]:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def sample_keys(path: str, per_class: int) -> dict[str, list[str]]:
    with SafetensorsReader(path) as f:
        shapes = f.shapes()
    return {name: [k for k, s in shapes.items() if test(k, s)][:per_class] for name, test in SHAPE_CLASSES.items()}


def load(paths: list[str], key: str) -> list[torch.Tensor]:
    out = []
    for p in paths:
        with SafetensorsReader(p) as f:
            out.append(f.get(key).float())
    return out


def references():
    """{method: fn(base, models) -> merged tensor} of the reference implementations that are installed."""
    found = {}
    with contextlib.suppress(Exception), contextlib.redirect_stdout(None):
        import test_parity_subspace as fb_test
        with fb_test._stub_fusion_bench_utils():
            tsvm = fb_test._load(fb_test.TSVM_UTILS, "_fb_tsvm_utils")
            iso = fb_test._load(fb_test.ISO_UTILS, "_fb_iso_utils")

        def tvs(base, models):
            return [{"k": (m - base).reshape(m.shape[0], -1)} for m in models]

        found["tsv"] = lambda b, ms: tsvm.compute_and_sum_svd_mem_reduction(tvs(b, ms), accelerator="cpu")["k"]
        found["iso_c"] = lambda b, ms: iso.iso_c(tvs(b, ms), accelerator="cpu")["k"]
        found["iso_cts"] = lambda b, ms: iso.iso_cts(tvs(b, ms), common_space_fraction=0.8, accelerator="cpu")["k"]
    mecha = Path(os.environ.get("MERGE_SUITE_SD_MECHA", Path.home() / ".cache/merge-suite/sd-mecha-1.1.8"))
    with contextlib.suppress(Exception):
        sys.path.append(str(mecha))
        svd = importlib.import_module("sd_mecha.extensions.builtin.merge_methods.svd")
        found["truncate_rank"] = lambda b, ms: svd.truncate_rank.__wrapped__(
            sum(m - b for m in ms), rank=64, use_approximate_basis=True, approximate_basis_seed=0)
        found["rotate"] = lambda b, ms: svd.rotate.__wrapped__({"k": b}, {"k": ms[0]}, alignment=1.0,
                                                               alpha=torch.tensor(0.0), key="k")
    return found


def timed(fn, *args) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(None):
        fn(*args)
    return time.perf_counter() - start


def key_rows(methods, paths: list[str], per_class: int) -> list[str]:
    refs = references()
    sample = sample_keys(paths[0], per_class)
    rows = ["| method | keys | ours | reference | ours vs reference |", "|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    for method in methods:
        m = METHODS[method]
        params = MethodParams(rank=64) if method == "truncate_rank" else MethodParams()
        for name, keys in sample.items():
            if not keys:
                continue
            ours = theirs = 0.0
            for key in keys:
                base, *models = load(paths, key)
                models = models[:1] if m.max_models == 1 else models
                ours += timed(m.fn, base, models, params, key, [])
                if method in refs:
                    theirs += timed(refs[method], base, models)
            ref = f"{theirs:.1f} s" if method in refs else "not installed"
            ratio = f"{ours / theirs:.2f}x" if method in refs and theirs else ""
            rows.append(f"| {method} | {len(keys)} x {name} | {ours:.1f} s | {ref} | {ratio} |")
            print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default=",".join(METHODS_RUN))
    parser.add_argument("--sample", type=int, default=2, help="keys per shape class in the per-key comparison")
    parser.add_argument("--skip-files", action="store_true", help="only the per-key comparison")
    parser.add_argument("--skip-keys", action="store_true", help="only the whole-file jobs")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints in bench/_work")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    paths = synthetic_inputs("sdxl") + [fourth_input("sdxl")]
    load_avg = os.getloadavg()
    print(f"\n### SVD-based methods on full-size synthetic SDXL (fp16, {os.path.getsize(paths[0]) / 1e9:.1f} GB "
          f"each; load average {load_avg[0]:.1f} at the start, {os.cpu_count()} cores)\n")
    try:
        if not args.skip_files:  # first: a child's peak RSS (wait4) counts this process's pages at fork, which
            file_rows(methods, paths[0], paths[1:])  # the per-key comparison's tensors would inflate
        if not args.skip_keys:
            print()
            key_rows(methods, paths, args.sample)
    finally:
        if not args.keep:
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p)


if __name__ == "__main__":
    main()
