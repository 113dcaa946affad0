"""Merge and save two full-size SDXL (or SD1.5) checkpoints through the real ComfyUI server: peak RSS and time,
ours (Merge Checkpoints + streamed Save Checkpoint) against ModelMergeSimple + CLIPMergeSimple +
CheckpointSave, in the same run, each in a fresh server.

Each run first loads both checkpoints (a prompt ending in Preview Any), records the
server's RSS ("loaded"), then queues the merge + save with the same loader nodes
(cached, not reloaded) and samples the RSS every 0.1 s. A watchdog stops a server
whose RSS passes --cap GB or when the machine has less than 1.5 GB available, so a
baseline that would be killed out of memory does not take the shared machine down.
Synthetic fp16 checkpoints with the real SDXL key set are written to bench/_work.

    python bench/bench_save.py [--cap 19] [--keep]
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "demo"))
sys.path.insert(0, str(HERE))
from server import ComfyServer  # noqa: E402
from synth import write_synthetic  # noqa: E402

GB = 1024 ** 3


class Watch:
    """Samples a process's RSS; stops its process group past the cap or when the machine runs low."""

    def __init__(self, pid: int, cap_gb: float):
        self.proc, self.cap, self.peak, self.killed_at = psutil.Process(pid), cap_gb * GB, 0, None
        self.pgid = os.getpgid(pid)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def rss(self) -> int:
        """Anonymous resident memory (RssAnon): what the process holds, without the checkpoint files'
        memory-mapped pages, which are page cache the kernel can drop."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self):
        while self.running:
            rss = self.rss()
            self.peak = max(self.peak, rss)
            if self.killed_at is None and (rss > self.cap or psutil.virtual_memory().available < 1.5 * GB):
                self.killed_at = rss
                os.killpg(self.pgid, signal.SIGKILL)
            time.sleep(0.1)

    def reset_peak(self):
        self.peak = self.rss()

    def stop(self):
        self.running = False
        self.thread.join()


def loaders(names):
    return {str(i + 1): {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": n}}
            for i, n in enumerate(names)}


def load_prompt(names):
    p = loaders(names)
    for i in range(len(names)):
        p[f"p{i}"] = {"class_type": "PreviewAny", "inputs": {"source": [str(i + 1), 0]}}
    return p


def ours_prompt(names):
    p = loaders(names)
    p["m"] = {"class_type": "MergeSuite_CheckpointMerge", "inputs": {
        "model_a": ["1", 0], "clip_a": ["1", 1], "model_b": ["2", 0], "clip_b": ["2", 1], "mode": "Weight sum",
        "alpha": 0.5, "beta": 0.25, "blocks_alpha_preset": "custom", "blocks_alpha": "",
        "blocks_beta_preset": "custom", "blocks_beta": ""}}
    p["s"] = {"class_type": "MergeSuite_SaveCheckpoint", "inputs": {
        "model": ["m", 0], "clip": ["m", 1], "vae": ["1", 2], "filename_prefix": "bench/ours", "precision": "fp16",
        "prune": False, "save_workflow": True, "hash_inputs": False}}
    return p


def comfy_prompt(names):
    p = loaders(names)
    p["m"] = {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.5}}
    p["c"] = {"class_type": "CLIPMergeSimple", "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "ratio": 0.5}}
    p["s"] = {"class_type": "CheckpointSave", "inputs": {"model": ["m", 0], "clip": ["c", 0], "vae": ["1", 2],
                                                         "filename_prefix": "checkpoints/bench_comfy"}}
    return p


def run(label, base: Path, names, prompt, cap, extra_args=()):
    srv = ComfyServer(base, extra_args=extra_args).start()
    watch = Watch(srv.proc.pid, cap)
    row = {"label": label}
    row.update(loaded_gb=float("nan"), load_peak_gb=float("nan"), merge_save_s=float("nan"))
    try:
        start = time.perf_counter()
        srv.run_prompt(load_prompt(names), timeout=1800)
        row["load_s"] = time.perf_counter() - start
        time.sleep(1.0)
        row["loaded_gb"], row["load_peak_gb"] = watch.rss() / GB, watch.peak / GB
        watch.reset_peak()
        start = time.perf_counter()
        srv.run_prompt(prompt(names), timeout=3600)
        row["merge_save_s"] = time.perf_counter() - start
        row["status"] = "completed"
    except Exception as exc:  # killed by the watchdog, or failed
        row["merge_save_s"] = time.perf_counter() - start  # until it stopped
        row["status"] = (f"stopped by the watchdog at {watch.killed_at / GB:.1f} GB" if watch.killed_at
                         else f"failed: {str(exc)[:200]}")
    finally:
        row["peak_gb"] = watch.peak / GB
        watch.stop()
        srv.stop()
    row["over_loaded_gb"] = row["peak_gb"] - row["loaded_gb"]
    print(row, flush=True)
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cap", type=float, default=19.0, help="stop a server past this RSS (GB)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints and outputs")
    parser.add_argument("--only", choices=["ours", "comfy"], default=None)
    parser.add_argument("--arch", choices=["sdxl", "sd1"], default="sdxl", help="sd1: a quick check of the script")
    args = parser.parse_args()
    work = HERE / "_work"
    base = work / "save_base"
    ckpts = base / "models" / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    names = []
    for tag, seed in (("a", 11), ("b", 12)):
        path = work / f"{args.arch}_{tag}.safetensors"
        if not path.exists():
            print("writing", path, flush=True)
            write_synthetic(args.arch, path, seed)
        link = ckpts / path.name
        if not link.exists():
            link.symlink_to(path)
        names.append(path.name)
    print(f"machine: {psutil.virtual_memory().total / GB:.1f} GB total, "
          f"{psutil.virtual_memory().available / GB:.1f} GB available, {os.cpu_count()} cores", flush=True)
    # On a CPU ComfyUI keeps U-Nets in fp32 by default (2 x 10 GB for SDXL: no room to merge on 24 GB);
    # --fp16-unet keeps them as stored in the fp16 files, as on a GPU machine.
    extra = ["--fp16-unet"] if args.arch == "sdxl" else []
    print("server flags:", extra, flush=True)
    rows = []
    if args.only in (None, "ours"):
        rows.append(run("ours: Merge Checkpoints + Save Checkpoint (streamed, fp16)", base, names, ours_prompt,
                        args.cap, extra))
    if args.only in (None, "comfy"):
        rows.append(run("ComfyUI: ModelMergeSimple + CLIPMergeSimple + CheckpointSave", base, names, comfy_prompt,
                        args.cap, extra))
    print("\n| run | loaded (RssAnon GB) | peak while merging + saving | peak - loaded | merge+save s | result |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['loaded_gb']:.2f} | {r['peak_gb']:.2f} | {r['over_loaded_gb']:+.2f} | "
              f"{r['merge_save_s']:.0f} | {r['status']} |")
    if not args.keep:
        for out in list((ckpts / "bench").glob("*.safetensors")) + list((base / "output" / "checkpoints").glob("*")):
            out.unlink()


if __name__ == "__main__":
    main()
