"""What the browser tests need on the machine (Debian's Chromium and Node.js), and why they skip without it."""
import os
import shutil
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def why_not_runnable():
    if not Path(CHROMIUM).is_file():
        return (f"no Chromium at {CHROMIUM}: scripts/setup_host.sh installs Debian's 'chromium' package "
                "when it runs as root with apt-get; otherwise install it or set CHROMIUM=/path")
    if shutil.which("node") is None:
        return "Node.js is not installed (needed to run playwright-core)"
    return None
