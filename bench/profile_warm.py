"""Where the time goes in a warm SD1.5 fp16 weight sum: the I/O floor, the merge, and the merge by stage.

Each round runs, in alternating order: the floor (``cat A B > /dev/null``, then ``dd if=/dev/zero bs=16M
conv=fsync`` of the output's size, both as shell commands), the plain merge (``python -m merge_core merge A B
--alpha 0.5 --dtype fp16``; wall, user, sys, peak RSS and faults from os.wait4), and the same merge with
stage timers. The timers wrap engine and io functions from here (monkeypatching, nothing edited) and take
getrusage(RUSAGE_THREAD) around each call: user and system seconds and minor faults of the thread that ran
it, exclusive of nested wrapped calls. Then, once, ``perf stat`` and ``perf record -g`` of a plain merge,
its samples sorted into kernel paths (read copy, write copy, page faults, fadvise, fsync, munmap) and
user-space libraries. Medians of the rounds are printed as markdown.

    python bench/profile_warm.py [--rounds 5] [--no-perf] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_cli import WORK, synthetic_inputs  # noqa: E402

# The instrumented child: wrap stage functions, run the CLI, dump {stage: totals} as JSON.
CHILD = r"""
import time
t0 = time.perf_counter()
import gc, json, os, resource, sys, threading
out_json, argv = sys.argv[1], sys.argv[2:]
from merge_core import api
from merge_core.engine import copied, linear
from merge_core.io import buffers, mapped_file, output_file, precision, safetensors_file
from merge_core.methods import fused_linear
from merge_core import pipeline
from merge_core.cli import main

stats = {}
local = threading.local()

def usage():
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return (time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt, r.ru_majflt)

def wrap(owner, attr, stage):
    fn = getattr(owner, attr)
    def timed(*args, **kwargs):
        stack = local.__dict__.setdefault("stack", [])
        stack.append([0.0] * 5)
        start = usage()
        try:
            return fn(*args, **kwargs)
        finally:
            end = usage()
            nested = stack.pop()
            spent = [e - s for e, s in zip(end, start)]
            if stack:
                stack[-1] = [p + x for p, x in zip(stack[-1], spent)]
            row = stats.setdefault(stage, {"calls": 0, "wall": 0.0, "user": 0.0, "sys": 0.0, "minflt": 0,
                                           "majflt": 0, "threads": []})
            row["calls"] += 1
            for name, x, n in zip(("wall", "user", "sys", "minflt", "majflt"), spent, nested):
                row[name] += x - n
            thread = threading.current_thread().name.split("_")[0]
            if thread not in row["threads"]:
                row["threads"].append(thread)
    setattr(owner, attr, timed)

R, W, OF = safetensors_file.SafetensorsReader, safetensors_file.SafetensorsWriter, output_file.OutputFile
wrap(R, "_read", "read: preadv into a buffer (copy from page cache), or a view of the mapping")
wrap(mapped_file.MappedFile, "_map_in", "read: map pages in (MADV_POPULATE_READ; the program's mapped reads)")
wrap(mapped_file.MappedFile, "release", "release: a merged key's pages let go (MADV_DONTNEED)")
wrap(R, "prefetch", "read: posix_fadvise WILLNEED hint")
wrap(linear.LinearKey, "load", "load: other (dtype checks, NaN scan where not fused)")
wrap(copied.CopyKey, "load", "load: other (dtype checks, NaN scan where not fused)")
wrap(pipeline.ReadAhead, "take", "merge thread: waiting for the read-ahead")
wrap(fused_linear, "merge_span", "formula: native kernel (decode, merge, encode fp16; faults on result buffer)")
wrap(linear, "merge_tensor", "formula: torch chunks (keys the kernel does not take)")
wrap(linear.LinearKey, "compute", "compute: other (result buffer, range check, give-back)")
wrap(copied.CopyKey, "compute", "compute: other (result buffer, range check, give-back)")
wrap(pipeline.WriteBehind, "put", "merge thread: waiting on the write budget / finished writes")
wrap(pipeline.WriteBehind, "drain", "merge thread: waiting on the write budget / finished writes")
wrap(precision.EncodingSink, "put", "encoding: EncodingSink.put (dtype cast)")
wrap(precision.EncodingSink, "put_raw", "encoding: EncodingSink.put (dtype cast)")
wrap(W, "write", "write: tensor bytes, order checks")
wrap(W, "write_raw", "write: tensor bytes, order checks")
wrap(OF, "write", "write: os.write (copy into page cache)")
wrap(OF, "_start_writeback", "write: posix_fadvise DONTNEED every 64 MiB (starts writeback)")
wrap(OF, "_commit", "commit: fsync, rename, folder fsync")
wrap(W, "__init__", "write: header, output file opened")

marks = {}
real_run = api.run_merge
def run_merge(*args, **kwargs):
    marks["start"] = (time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF))
    try:
        return real_run(*args, **kwargs)
    finally:
        marks["end"] = (time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF))
api.run_merge = run_merge

gc_time = {"s": 0.0, "n": 0, "t0": 0.0}
def on_gc(phase, info):
    if phase == "start":
        gc_time["t0"] = time.perf_counter()
    else:
        gc_time["s"] += time.perf_counter() - gc_time["t0"]
        gc_time["n"] += 1
gc.callbacks.append(on_gc)

pool = {"hit": 0, "miss": 0, "hit_bytes": 0, "miss_bytes": 0}
real_take = buffers.BufferPool.take
def take(self, nbytes):
    free = {b.data_ptr() for b in list(self._free)}
    got = real_take(self, nbytes)
    kind = "hit" if got.data_ptr() in free else "miss"
    pool[kind] += 1
    pool[kind + "_bytes"] += nbytes
    return got
buffers.BufferPool.take = take

sys.argv = ["merge_core", *argv]
try:
    code = main()
finally:
    t1 = time.perf_counter()
    self_end = resource.getrusage(resource.RUSAGE_SELF)
    (ws, rs), (we, re_) = marks.get("start", (t0, self_end)), marks.get("end", (t1, self_end))
    phases = {"before run_merge (imports, CLI, plan, headers)": [ws - t0, rs.ru_utime, rs.ru_stime, rs.ru_minflt],
              "run_merge": [we - ws, re_.ru_utime - rs.ru_utime, re_.ru_stime - rs.ru_stime,
                            re_.ru_minflt - rs.ru_minflt],
              "after run_merge (report, exit)": [t1 - we, self_end.ru_utime - re_.ru_utime,
                                                 self_end.ru_stime - re_.ru_stime,
                                                 self_end.ru_minflt - re_.ru_minflt]}
    with open(out_json, "w") as f:
        json.dump({"stages": stats, "phases": phases, "gc": [gc_time["s"], gc_time["n"]],
                   "pool": pool, "total_wall": t1 - t0}, f)
raise SystemExit(code)
"""

# perf script sample -> category: the syscall a kernel sample is in (the frame under do_syscall_64), and
# whether it is a page fault; these names make the syscalls readable.
SYSCALLS = {"ksys_write": "write: copy into page cache", "do_preadv": "preadv: copy from page cache",
            "ksys_read": "read (imports, headers)", "__x64_sys_fadvise64": "posix_fadvise (writeback start, hints)",
            "__x64_sys_fsync": "fsync", "__x64_sys_madvise": "madvise (map pages in, let them go)",
            "__x64_sys_munmap": "munmap (freeing large buffers)",
            "__x64_sys_rename": "rename (over the old output)", "__x64_sys_futex": "futex (thread wait/wake)"}


def measured(cmd, shell: bool = False, out=subprocess.DEVNULL) -> dict:
    """Wall, user, sys, peak RSS (GB) and faults of one child (os.wait4)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, shell=shell, stdout=out, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if status != 0:
            err.seek(0)
            raise RuntimeError(f"{str(cmd)[:200]} failed: {err.read().decode(errors='replace')[-2000:]}")
    return {"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime, "rss": ru.ru_maxrss / 1024 / 1024,
            "minflt": ru.ru_minflt, "majflt": ru.ru_majflt, "nvcsw": ru.ru_nvcsw, "nivcsw": ru.ru_nivcsw}


def floor(a: str, b: str, out: Path, size: int) -> dict:
    read = measured(f"cat '{a}' '{b}' > /dev/null", shell=True)
    count = -(-size // (16 << 20))
    write = measured(["dd", "if=/dev/zero", f"of={out}", "bs=16M", f"count={count}", "conv=fsync"])
    out.unlink()
    return {"read": read, "write": write, "wall": read["wall"] + write["wall"],
            "user": read["user"] + write["user"], "sys": read["sys"] + write["sys"]}


def merge_cmd(a: str, b: str, out: Path) -> list[str]:
    return ["-m", "merge_core", "merge", a, b, "--alpha", "0.5", "--dtype", "fp16", "-o", str(out),
            "--overwrite", "-q"]


def perf_categories(data: Path) -> tuple[dict, int]:
    """Samples of ``perf record -g`` by kernel path (the syscall, or a page fault in it) or, in user space, by
    library: {category: [samples on the main thread, samples on the others]}, and the total."""
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,tid,ip,sym,dso"], capture_output=True,
                          text=True, check=True).stdout
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    total = 0
    for sample in text.split("\n\n"):
        lines = [line.split() for line in sample.strip().splitlines() if line.strip()]
        if len(lines) < 2:
            continue
        pid, _, tid = lines[0][0].partition("/")
        frames = lines[1:]
        total += 1
        syms = [f[1].split("+")[0] if len(f) > 1 else "" for f in frames]
        leaf_dso = frames[0][-1]
        if "kernel.kallsyms" in leaf_dso:
            call = next((syms[j - 1] for j in range(1, len(syms)) if syms[j] == "do_syscall_64"), None)
            where = "no syscall" if call is None else SYSCALLS.get(call, f"syscall {call}")
            name = f"kernel: page faults ({where})" if "asm_exc_page_fault" in syms else f"kernel: {where}"
        else:
            lib = Path(leaf_dso.strip("()")).name
            name = next((f"user: {label}" for key, label in LIBRARIES if key in lib), f"user: {lib or 'unknown'}")
        counts[name][0 if pid == tid else 1] += 1
    return dict(counts), total


LIBRARIES = (("kernels-", "merge kernel (native, merge_core/methods/native)"), ("libpython", "Python interpreter"),
             ("libtorch", "torch"), ("openblas", "OpenBLAS"), ("libgomp", "OpenMP"), ("libc.so", "libc"),
             ("ld-linux", "dynamic loader"))


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-perf", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic inputs in bench/_work")
    args = parser.parse_args()
    a, b, _ = synthetic_inputs("sd1", warm=True)
    py = sys.executable
    out = WORK / "profile_out.safetensors"
    floor_out = WORK / "profile_floor.bin"
    subprocess.run([py, *merge_cmd(a, b, out)], cwd=REPO, check=True)  # warm-up; also gives the output size
    size = out.stat().st_size
    out.unlink()
    floors, merges, timed, stage_rows, imports = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        stage_json = Path(tmp) / "stages.json"
        for i in range(args.rounds):
            def run_floor():
                floors.append(floor(a, b, floor_out, size))

            def run_merge():
                merges.append(measured([py, *merge_cmd(a, b, out)]))
                out.unlink()

            def run_timed():
                timed.append(measured([py, "-c", CHILD, str(stage_json), *merge_cmd(a, b, out)[2:]]))
                out.unlink()
                stage_rows.append(json.loads(stage_json.read_text()))

            for step in ((run_floor, run_merge, run_timed) if i % 2 == 0 else (run_timed, run_merge, run_floor)):
                step()
            imports.append(measured([py, "-c", "import torch"]))
            print(f"round {i + 1}: floor {floors[-1]['wall']:.2f} s, merge {merges[-1]['wall']:.2f} s "
                  f"(user {merges[-1]['user']:.2f}, sys {merges[-1]['sys']:.2f}), timed {timed[-1]['wall']:.2f} s",
                  file=sys.stderr)
    report(floors, merges, timed, stage_rows, imports, size)
    if not args.no_perf and shutil.which("perf"):
        profile_with_perf(py, merge_cmd(a, b, out), out)
    if not args.keep:
        for p in WORK.glob("sd1_*.safetensors"):
            p.unlink()


def report(floors, merges, timed, stage_rows, imports, size) -> None:
    print(f"\nOutput {size / 1e9:.2f} GB; medians of {len(merges)} alternating rounds.\n")
    print("| run | wall (median) | wall (min) | user | sys | peak RSS | minor faults | major faults |\n"
          "|---|---|---|---|---|---|---|---|")
    def row(name: str, rows: list[dict]) -> None:
        rss = f"{med(rows, 'rss'):.2f} GB" if "rss" in rows[0] else "-"
        faults = f"{med(rows, 'minflt'):.0f} | {med(rows, 'majflt'):.0f}" if "minflt" in rows[0] else "- | -"
        print(f"| {name} | {med(rows, 'wall'):.2f} s | {min(r['wall'] for r in rows):.2f} s "
              f"| {med(rows, 'user'):.2f} s | {med(rows, 'sys'):.2f} s | {rss} | {faults} |")

    row("floor: cat A B > /dev/null", [f["read"] for f in floors])
    row("floor: dd of the output size, conv=fsync", [f["write"] for f in floors])
    row("floor total", floors)
    row("merge (plain)", merges)
    row("merge with stage timers", timed)
    row("`python -c 'import torch'` (part of the merge's startup)", imports)
    ratios = ", ".join(f"{m['wall'] / f['wall']:.2f}" for m, f in zip(merges, floors))
    print(f"\nmerge / floor: {med(merges, 'wall') / med(floors, 'wall'):.2f}x (per round: {ratios})")
    cpu = med(timed, "user") + med(timed, "sys")
    print(f"\nStages of the timed merge (medians; CPU shares of its {cpu:.2f} s user+sys; wall is the time the "
          "stage's threads spent in it, overlapping across threads):\n")
    print("| stage | threads | calls | wall | user | sys | share of CPU | minor faults |\n"
          "|---|---|---|---|---|---|---|---|")
    stages = sorted({s for r in stage_rows for s in r["stages"]},
                    key=lambda s: -statistics.median(r["stages"].get(s, {}).get("sys", 0) +
                                                     r["stages"].get(s, {}).get("user", 0) for r in stage_rows))
    attributed = 0.0
    for s in stages:
        rows = [r["stages"].get(s) or {"calls": 0, "wall": 0, "user": 0, "sys": 0, "minflt": 0, "threads": []}
                for r in stage_rows]
        u, k = med(rows, "user"), med(rows, "sys")
        attributed += u + k
        threads = ", ".join(sorted({t for r in rows for t in r["threads"]}))
        print(f"| {s} | {threads} | {med(rows, 'calls'):.0f} | {med(rows, 'wall'):.2f} s | {u:.2f} s | {k:.2f} s "
              f"| {(u + k) / cpu:.0%} | {med(rows, 'minflt'):.0f} |")
    print(f"| not in a wrapped stage (startup, Python, thread pools, exit) | - | - | - | - | - "
          f"| {(cpu - attributed) / cpu:.0%} | - |")
    print("\n| phase | wall | user | sys | minor faults |\n|---|---|---|---|---|")
    for p in stage_rows[0]["phases"]:
        vals = [statistics.median(r["phases"][p][j] for r in stage_rows) for j in range(4)]
        print(f"| {p} | {vals[0]:.2f} s | {vals[1]:.2f} s | {vals[2]:.2f} s | {vals[3]:.0f} |")
    start = med(timed, "wall") - statistics.median(r["total_wall"] for r in stage_rows)
    print(f"| interpreter start, until the first import (parent's wall minus the child's) | {start:.2f} s | - | - "
          "| - |")
    pools = [r["pool"] for r in stage_rows]
    print("\nBufferPool.take (read buffers and result buffers of merged keys): "
          f"{med(pools, 'hit'):.0f} reused ({med(pools, 'hit_bytes') / 1e9:.2f} GB), "
          f"{med(pools, 'miss'):.0f} fresh ({med(pools, 'miss_bytes') / 1e9:.2f} GB; a fresh buffer faults per 4 KiB "
          "page as it is first written)")
    gcs = [r["gc"] for r in stage_rows]
    print(f"\nPython garbage collection: {statistics.median(g[0] for g in gcs):.2f} s wall in "
          f"{statistics.median(g[1] for g in gcs):.0f} collections (median)")


def profile_with_perf(py: str, cmd: list[str], out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stat = subprocess.run(["perf", "stat", "-x", ",", "-e",
                               "task-clock,page-faults,minor-faults,major-faults,context-switches,cpu-migrations",
                               "--", py, *cmd], cwd=REPO, capture_output=True, text=True)
        out.unlink(missing_ok=True)
        print("\n`perf stat` of one plain merge:\n\n| event | count |\n|---|---|")
        for line in stat.stderr.splitlines():
            parts = line.split(",")
            if len(parts) > 3 and parts[0].replace(".", "").isdigit():
                print(f"| {parts[2]} | {float(parts[0]):.0f}{' ms' if parts[1] == 'msec' else ''} |")
        data = Path(tmp) / "perf.data"
        rec = subprocess.run(["perf", "record", "-F", "999", "-g", "-o", str(data), "--", py, *cmd], cwd=REPO,
                             capture_output=True, text=True)
        out.unlink(missing_ok=True)
        if rec.returncode != 0:
            print(f"\nperf record failed: {rec.stderr.strip()[-300:]}")
            return
        counts, total = perf_categories(data)
        print(f"\n`perf record -g -F 999` of one plain merge: {total} samples (about {total / 999:.2f} CPU s), "
              "by kernel path or user-space library (the main thread does the startup, the imports and the merge loop; "
              "the others read, write and take half of large keys):\n\n"
              "| where | samples | share | main thread | other threads |\n|---|---|---|---|---|")
        for name, (main_n, other_n) in sorted(counts.items(), key=lambda kv: -sum(kv[1])):
            n = main_n + other_n
            if n / total >= 0.005:
                print(f"| {name} | {n} | {n / total:.1%} | {main_n} | {other_n} |")


if __name__ == "__main__":
    main()
