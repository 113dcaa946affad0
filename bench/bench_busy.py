"""Busy-machine benchmark: the same jobs on a quiet machine and with one core held by another process.

"Busy" = one CPU-bound process (``while True: pass``) pinned to core 0 with
os.sched_setaffinity for the whole job. Jobs, on the synthetic full-size SD1.5 fp16
checkpoints of bench_cli.py: CLI weight sum, CLI add difference, CLI smoothAdd
(``--include IN04-IN05``, 40 keys filtered, the rest copied), and LoRA extraction
(bench_lora.py's fine-tune-like pair, first N modules, rank 64, randomized SVD, in a
child process). "before" runs the same jobs with branch main's merge_core (a
``git archive`` copy under bench/_work/before), "after" with this checkout's.
Runs are interleaved (for each repeat: before quiet, before busy, after quiet,
after busy) and each cell is the median of the repeats; the load average is
recorded at the start and end of every run. A run past --cap seconds is stopped
and counted as the cap (a lower bound, marked >=).

    python bench/bench_busy.py [--repeat 3] [--cap 60] [--base main] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_cli import REPO, WORK, synthetic_inputs  # noqa: E402

LORA_CHILD = r"""
import resource, sys, time
sys.path.insert(0, sys.argv[1])
import merge_core  # the variant's copy, before bench_lora puts the checkout first on sys.path
sys.path.insert(1, sys.argv[2])
from bench_lora import end_to_end, synthetic_pair
shapes, a, b = synthetic_pair(int(sys.argv[3]))
start = time.perf_counter(); cpu = time.process_time()
end_to_end(shapes, a, b, 64, "randomized")
print(time.perf_counter() - start, time.process_time() - cpu)
"""

SPIN = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"


def jobs(paths: list[str], lora_modules: int) -> dict[str, list[str]]:
    out = str(WORK / "out_busy.safetensors")
    cli = [sys.executable, "-m", "merge_core", "merge"]
    tail = ["--alpha", "0.3", "-o", out, "--overwrite", "-q"]
    return {
        "CLI weight sum": cli + paths[:2] + ["--mode", "weight_sum"] + tail,
        "CLI smoothAdd (IN04-IN05)": cli + paths + ["--mode", "add_difference", "--calc", "smoothAdd",
                                                    "--include", "IN04-IN05"] + tail,
        f"LoRA extraction ({lora_modules} modules, rank 64)": [sys.executable, "-c", LORA_CHILD, "{root}", str(HERE),
                                                                str(lora_modules)],
        "CLI add difference": cli + paths + ["--mode", "add_difference"] + tail,
    }


def run_once(cmd: list[str], root: Path, cap: float) -> tuple[float, float, bool]:
    """(wall s, CPU s of the job, stopped at the cap). LoRA: the child's own timing of the extraction."""
    cmd = [c.replace("{root}", str(root)) for c in cmd]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=err)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - start > cap:
                    proc.kill()
                    _, _, usage = os.wait4(proc.pid, 0)
                    return cap, usage.ru_utime + usage.ru_stime, True  # the CPU it had used by then
                time.sleep(0.05)
        except BaseException:  # interrupted: leave no job running
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd[:5]} failed: {err.read().decode()[-2000:]}")
        out.seek(0)
        text = out.read().decode()
    if "-c" in cmd:
        wall, cpu = map(float, text.split()[-2:])
        return wall, cpu, False
    return wall, usage.ru_utime + usage.ru_stime, False


class Busy:
    """One spinning process pinned to core 0, for the duration of the block.

    In its own session, as another program would be: with the kernel's autogroup
    scheduling, processes of one session share one group's CPU time, so a spinner
    started in the benchmark's session would take half of the job's share instead
    of one core's worth."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SPIN], start_new_session=True)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def base_copy(ref: str) -> Path:
    """Branch ``ref``'s merge_core, as files under bench/_work/before (python -m runs it from there)."""
    root = WORK / "before"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref, "merge_core"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def capped_cell(runs) -> bool:
    """Most runs of the cell were stopped, so its median is the cap: a lower bound."""
    return sum(r[2] for r in runs) * 2 > len(runs)


def fmt(values: list[float], capped: list[bool]) -> str:
    med = statistics.median(values)
    return (">=" if sum(capped) * 2 > len(capped) else "") + f"{med:.1f} s"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cap", type=float, default=60.0, help="stop a run after this many seconds")
    p.add_argument("--base", default="main", help="git ref for the 'before' code")
    p.add_argument("--lora-modules", type=int, default=32)
    p.add_argument("--only", default="", help="run only jobs whose name contains one of these (comma-separated)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    paths = synthetic_inputs("sd1", warm=True)
    variants = {"before": base_copy(args.base), "after": REPO}
    cells: dict[tuple[str, str, str], list[tuple[float, float, bool]]] = {}
    log = []
    began = time.time()
    chosen = [(n, c) for n, c in jobs(paths, args.lora_modules).items()
              if not args.only or any(w.strip() and w.strip() in n for w in args.only.split(","))]
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill PID: as Ctrl-C (ignored in background jobs)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        measure(chosen, variants, args, cells, log)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: report the runs done so far
        print("interrupted: the tables cover the runs done so far", file=sys.stderr)
    report(cells, log, variants, args, time.time() - began)


def measure(chosen, variants, args, cells, log) -> None:
    for name, cmd in chosen:
        for rep in range(args.repeat):
            for variant, root in variants.items():
                for cond in ("quiet", "busy"):
                    load0 = os.getloadavg()[0]
                    if cond == "busy":
                        with Busy():
                            res = run_once(cmd, root, args.cap)
                    else:
                        res = run_once(cmd, root, args.cap)
                    load1 = os.getloadavg()[0]
                    cells.setdefault((name, variant, cond), []).append(res)
                    log.append((name, rep + 1, variant, cond, res, load0, load1))
                    print(f"{name} #{rep + 1} {variant} {cond}: {res[0]:.1f} s wall, {res[1]:.1f} s CPU"
                          f"{' (capped)' if res[2] else ''}, load {load0:.1f} -> {load1:.1f}", file=sys.stderr)


def report(cells, log, variants, args, seconds: float) -> None:
    for leftover in WORK.glob("*out_busy.safetensors*"):
        leftover.unlink()
    print(f"\n### Busy machine: one core held by another process (`python bench/bench_busy.py`, "
          f"median of up to {args.repeat}, {seconds:.0f} s in all)\n")
    print("| job | before quiet | before busy | before busy/quiet | after quiet | after busy | after busy/quiet "
          "| after/before quiet |\n|---|---|---|---|---|---|---|---|")
    names = [n for n in dict.fromkeys(k[0] for k in cells) if all((n, v, c) in cells for v in variants
                                                                   for c in ("quiet", "busy"))]
    for name in names:
        row = [name]
        med = {}
        for variant in variants:
            for cond in ("quiet", "busy"):
                runs = cells[(name, variant, cond)]
                med[(variant, cond)] = statistics.median(r[0] for r in runs)
                row.append(fmt([r[0] for r in runs], [r[2] for r in runs]))
            busy_capped, quiet_capped = (capped_cell(cells[(name, variant, c)]) for c in ("busy", "quiet"))
            ratio = f"{med[(variant, 'busy')] / med[(variant, 'quiet')]:.2f}x"
            row.append("unknown (both stopped)" if busy_capped and quiet_capped else
                       "<=" + ratio if quiet_capped else ">=" + ratio if busy_capped else ratio)
        before_capped = capped_cell(cells[(name, "before", "quiet")])
        row.append(("<=" if before_capped else "") + f"{med[('after', 'quiet')] / med[('before', 'quiet')]:.2f}x")
        print("| " + " | ".join(row) + " |")
    print("\nCPU time of the job (user + system, median; what spinning costs; a stopped run: what it had used):\n")
    print("| job | before quiet | before busy | after quiet | after busy |\n|---|---|---|---|---|")
    for name in names:
        row = [name]
        for variant in variants:
            for cond in ("quiet", "busy"):
                runs = cells[(name, variant, cond)]
                row.append(fmt([r[1] for r in runs], [r[2] for r in runs]))
        print("| " + " | ".join(row) + " |")
    print("\n<details><summary>Every run, with the 1-minute load average at its start and end</summary>\n")
    print("| job | repeat | code | machine | wall | CPU | load start | load end |\n|---|---|---|---|---|---|---|---|")
    for name, rep, variant, cond, (wall, cpu, capped), l0, l1 in log:
        print(f"| {name} | {rep} | {variant} | {cond} | {'>=' if capped else ''}{wall:.1f} s | "
              f"{'>=' if capped else ''}{cpu:.1f} s | {l0:.1f} | {l1:.1f} |")
    print("\n</details>")
    if not args.keep:
        shutil.rmtree(WORK / "before", ignore_errors=True)


if __name__ == "__main__":
    main()
