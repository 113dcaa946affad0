"""Fault injection for tests/e2e/test_faults_files.py, loaded through PYTHONPATH into a CLI or server process.

It wraps os.fsync, which merge_core.io.output_file calls on a complete temporary file just before the
rename: "slow" sleeps there (so a signal lands while the .part file exists, deterministically),
"appear" creates the target file there (another program saving to the same name mid-merge).
The mode comes from MERGE_SUITE_FAULT, or from the file named by MERGE_SUITE_FAULT_FILE (read at
each call, so one server can save normally, then slowly).
"""
import os
import time

_real_fsync = os.fsync


def _mode() -> str:
    mode = os.environ.get("MERGE_SUITE_FAULT", "")
    marker = os.environ.get("MERGE_SUITE_FAULT_FILE")
    if not mode and marker and os.path.exists(marker):
        with open(marker) as f:
            mode = f.read().strip()
    return mode


def _fsync(fd):
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        name = ""
    folder, base = os.path.split(name)
    if base.endswith(".part") and ".merge-suite-" in base:
        mode = _mode()
        if mode == "slow":
            time.sleep(60)
        elif mode == "appear":
            with open(os.path.join(folder, base[1:base.index(".merge-suite-")]), "wb") as f:
                f.write(b"written by another program")
    return _real_fsync(fd)


if os.environ.get("MERGE_SUITE_FAULT") or os.environ.get("MERGE_SUITE_FAULT_FILE"):
    os.fsync = _fsync
