"""Run the real ComfyUI server headless on a private base directory, and drive it over HTTP.

Nothing is written into the ComfyUI tree: models, outputs, custom_nodes links
and the database all live under the base directory.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "merge_suite"


def comfy_path() -> Path:
    return Path(os.environ.get("COMFYUI_PATH") or REPO / ".host" / "ComfyUI").resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base: Path) -> Path:
    """custom_nodes (this pack + tiny_registry), models/checkpoints, output."""
    nodes = base / "custom_nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    for name, target in ((PACK_NAME, REPO), ("tiny_registry", REPO / "demo" / "tiny_registry")):
        link = nodes / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    (base / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (base / "output").mkdir(parents=True, exist_ok=True)
    return base


class ComfyServer:
    def __init__(self, base: Path, port: int | None = None, python: str = sys.executable, extra_args=(),
                 extra_env=None):
        self.base = prepare_base(Path(base))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python = python
        self.proc = None
        self.extra_args = list(extra_args)  # more ComfyUI flags, e.g. --fp16-unet for a benchmark
        self.extra_env = dict(extra_env or {})  # for this server only (a test's fault hooks), never os.environ
        self.log_path = self.base / "server.log"

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base),
               "--database-url", f"sqlite:///{self.base / 'comfyui.db'}", "--preview-method", "none",
               "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME, "tiny_registry"] + self.extra_args
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1", **self.extra_env)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=comfy_path(), env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start; see {self.log_path}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer in {timeout} s; see {self.log_path}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run_prompt(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Queue a prompt and wait for its history entry; raises with the server's message on failure."""
        status, answer = self.post("/prompt", {"prompt": prompt, "client_id": "merge-suite"})
        if status != 200:
            raise RuntimeError(f"/prompt refused the workflow ({status}): {json.dumps(answer)[:2000]}")
        prompt_id = answer["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                st = entry["status"]
                if st.get("status_str") == "error" or not st.get("completed"):
                    errors = [m for m in st.get("messages", []) if m[0] == "execution_error"]
                    raise RuntimeError(f"workflow failed: {json.dumps(errors)[:3000]}")
                return entry
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def output_images(self, entry: dict) -> list[Path]:
        paths = []
        for out in entry.get("outputs", {}).values():
            for img in out.get("images", []):
                if img.get("type") == "output":
                    paths.append(self.base / "output" / img.get("subfolder", "") / img["filename"])
        return paths
