"""Test hook for tests/e2e/test_hostile_files.py, loaded through PYTHONPATH into a server process.

While the file named by MERGE_SUITE_PAUSE_FILE exists, os.fsync of one of our temporary .part files
sleeps as many seconds as that file says: two servers' identical merges then overlap deterministically.
"""
import os
import time

_real_fsync = os.fsync


def _fsync(fd):
    marker = os.environ.get("MERGE_SUITE_PAUSE_FILE", "")
    if marker and os.path.exists(marker):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name.endswith(".part") and ".merge-suite-" in name:
            try:
                with open(marker) as f:
                    time.sleep(float(f.read().strip() or 0))
            except (OSError, ValueError):
                pass
    return _real_fsync(fd)


if os.environ.get("MERGE_SUITE_PAUSE_FILE"):
    os.fsync = _fsync
