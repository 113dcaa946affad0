"""The file-merge node inside the real ComfyUI server: wall time against the I/O floor, server RSS above idle.

Starts demo/server.py's ComfyServer on a private base folder whose models folder holds synthetic
full-size files, queues Merge Diffusion Model Files (Flux.1-dev) or Merge Checkpoint Files (SD1.5)
over HTTP, merging two files (Weight sum) and three (Add difference), output "as A". Measured in
the same run:

- the I/O floor: one process reads every distinct input file once and writes one file of A's size
  with fsync (bench_flux.FLOOR); the floor and the merge both start with the inputs out of the page
  cache (bench_cli.evict);
- the node's wall time, from queueing the prompt to the merged file appearing (the merge) and to the
  prompt finishing (the merge plus ComfyUI's loader building the MODEL from the new file);
- the server's memory, sampled from /proc/PID/status every 50 ms: VmRSS and RssAnon (RSS minus the
  file pages it maps, which the page cache can drop) above the idle server's, and VmHWM, during the
  merge and during the load.

Inputs: flux1-dev: bench_flux.write_flux (the flux1-dev key inventory, fp8 e4m3fn weights and bf16
vectors, about 11.9 GB each); sd1: bench_cli's synthetic SD1.5 fp16 checkpoints (about 2.1 GB).
Free disk is checked first: A, B, C and one output; when a third distinct file does not fit, C is a
hard link to A (said in the table; the floor then reads A and B once, as the merge may); when not even
A, B and one output fit, the script refuses. Files are made in bench/_work and hard-linked into the
server's models folder.

    python bench/bench_file_node.py [--family flux1-dev|sd1] [--inputs 2,3] [--keep]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "demo"))

from bench_cli import WORK, evict, run_measured, synthetic_inputs  # noqa: E402
from bench_flux import FLOOR, flux_inputs  # noqa: E402
from server import ComfyServer  # noqa: E402

FAMILIES = {  # family: (node, models folder, file_name output slot, label)
    "flux1-dev": ("MergeSuite_DiffusionModelFileMerge", "diffusion_models", 1,
                  "Flux.1-dev diffusion models (fp8 e4m3fn weights, bf16 vectors)"),
    "sd1": ("MergeSuite_CheckpointFileMerge", "checkpoints", 3, "SD1.5 checkpoints (fp16)"),
}


def make_inputs(family: str, count: int) -> tuple[list[Path], bool]:
    """(A, B[, C]) in bench/_work and whether C is a hard link to A; refuses when the disk is short."""
    WORK.mkdir(exist_ok=True)
    if family == "sd1":  # about 2.1 GB each: three distinct files
        return [Path(p) for p in synthetic_inputs("sd1")], False  # all three, made together
    return flux_inputs(count)


def memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and VmHWM of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    return out


class Sampler(threading.Thread):
    """Samples the server's memory until stopped; notes when the merged file appears (the merge's end)."""

    def __init__(self, pid: int, folders: list[Path], prefix: str):
        super().__init__(daemon=True)
        self.pid, self.folders, self.prefix = pid, folders, prefix
        self.samples: list[tuple[float, dict]] = []
        self.merged_at = None
        self.done = threading.Event()
        self.start_time = time.perf_counter()

    def merged_file(self):
        return next((p for f in self.folders for p in f.glob(f"{self.prefix}_*_.safetensors")), None)

    def run(self):
        while not self.done.is_set():
            now = time.perf_counter() - self.start_time
            self.samples.append((now, memory(self.pid)))
            if self.merged_at is None and self.merged_file() is not None:
                self.merged_at = now
            time.sleep(0.05)

    def peak(self, name: str, until=None, after=None) -> int:
        values = [m[name] for t, m in self.samples
                  if (until is None or t <= until) and (after is None or t > after)]
        return max(values) if values else 0


def prompt(family: str, names: list[str], prefix: str) -> dict:
    node, _, slot, _ = FAMILIES[family]
    inputs = {"file_a": names[0], "file_b": names[1], "mode": "Add difference" if len(names) == 3 else "Weight sum",
              "alpha": 0.3, "beta": 0.25, "blocks_alpha_preset": "custom", "blocks_alpha": "",
              "blocks_beta_preset": "custom", "blocks_beta": "", "precision": "as A", "filename_prefix": prefix}
    if len(names) == 3:
        inputs["file_c"] = names[2]
    return {"1": {"class_type": node, "inputs": inputs},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", slot]}}}


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def run(family: str, counts: list[int], keep: bool) -> list[str]:
    node, kind, _, label = FAMILIES[family]
    inputs, link_c = make_inputs(family, max(counts))
    base = WORK / f"file_node_server_{family}"
    shutil.rmtree(base, ignore_errors=True)
    folder = base / "models" / kind
    folder.mkdir(parents=True)
    # where the node writes: the first folder ComfyUI lists for the kind (models/unet for diffusion_models)
    outputs = [base / "models" / k / "bench" for k in (kind, "unet")]
    names = []
    for path in inputs:  # hard links: the server sees the files without a copy
        os.link(path, folder / path.name)
        names.append(path.name)
    size = inputs[0].stat().st_size
    rows = [f"\n### {node} in the real server, synthetic full-size {label}, {size / 1e9:.2f} GB each\n",
            "| job | wall | vs I/O floor | server RSS above idle (peak) | RssAnon above idle (peak) | VmHWM |",
            "|---|---|---|---|---|---|"]
    idles = []
    try:
        for count in counts:
            distinct = list(dict.fromkeys(os.path.realpath(p) for p in inputs[:count]))
            floor_out = WORK / "floor_out.bin"
            evict(distinct)
            floor = run_measured([sys.executable, "-c", FLOOR, str(floor_out), str(size), *distinct])[0]
            os.remove(floor_out)
            with ComfyServer(base) as server:  # a fresh server per job: the last job's loaded model is not idle
                time.sleep(2)
                idle = memory(server.proc.pid)
                idles.append(idle)
                prefix = f"bench/merged_{count}"
                evict(distinct)  # cold, as the floor started
                sampler = Sampler(server.proc.pid, outputs, os.path.basename(prefix))
                sampler.start()
                try:
                    server.run_prompt(prompt(family, names[:count], prefix), timeout=7200)
                finally:
                    total = time.perf_counter() - sampler.start_time
                    sampler.done.set()
                    sampler.join()
            merged = sampler.merged_at or total
            what = "Add difference of 3" if count == 3 else "Weight sum of 2"
            if count == 3 and link_c:
                what += " (C a hard link to A: the disk holds no third file)"
            for phase, t, until, after in (("merge", merged, merged, None),
                                           ("merge + ComfyUI loading the result", total, None, merged)):
                rows.append(f"| {what}: {phase} | {t:.1f} s | {t / floor:.2f}x | "
                            f"{gb(sampler.peak('VmRSS', until, after) - idle['VmRSS'])} | "
                            f"{gb(sampler.peak('RssAnon', until, after) - idle['RssAnon'])} | "
                            f"{gb(sampler.peak('VmHWM', until, after))} |")
            rows.append(f"| I/O floor: read {len(distinct)} distinct input files, write {size / 1e9:.1f} GB, fsync | "
                        f"{floor:.1f} s | 1.00x | - | - | - |")
            for made in (p for out in outputs for p in out.glob("*")):
                made.unlink()  # the next job's disk
        rows.append("\nIdle server (fresh per job): " + "; ".join(
            f"VmRSS {gb(i['VmRSS'])}, RssAnon {gb(i['RssAnon'])}" for i in idles) + ". The load phase's peak is "
            "over the time after the merged file appeared; the floor's write and the merge's are both fsynced.")
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if not keep:
            for path in inputs:
                path.unlink(missing_ok=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="flux1-dev", choices=sorted(FAMILIES),
                        help="flux1-dev: ~11.9 GB files (36 GB of disk at least); sd1: ~2.1 GB checkpoints")
    parser.add_argument("--inputs", default="2,3", help="jobs: merge 2 and/or 3 files (comma-separated)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files in bench/_work")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.inputs.split(",")})
    if not set(counts) <= {2, 3}:
        raise SystemExit("--inputs: 2, 3 or 2,3")
    print("\n".join(run(args.family, counts, args.keep)), flush=True)


if __name__ == "__main__":
    main()
