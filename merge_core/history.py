"""Merge history: every merge the pack performs, one JSON line each, searchable and re-creatable.

SuperMerger keeps a numbered log of its merges and restores any entry's settings; in ComfyUI a merge's
settings otherwise live only in the workflow that made it. The log is append-only JSON lines (one
``os.write`` per entry, under an exclusive lock, so two processes appending at once lose nothing and
interleave no bytes). IDs are sequential: the next ID is read from the file's last valid line under the
lock. A damaged line (a crash mid-write, a hand edit) is skipped with one warning; the log never fails
a merge: a file that cannot be written is reported once and the merge goes on.

Searching 100,000 entries keeps the lower-cased lines in memory (refreshed by reading only what was
appended since) and parses only the page that is shown.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from .errors import MergeInputError

ENV = "MERGE_SUITE_HISTORY"
FILE_NAME = "history.jsonl"
PAGE_SIZES = (20, 50, 100)
MAX_ENTRY_BYTES = 4 << 20  # a recipe is bounded far below (recipe.MAX_RECIPE_CHARS); a bigger entry is refused
_ID = re.compile(r'^\{"id": (\d+),')
_LOG = logging.getLogger("merge_suite")


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """False when MERGE_SUITE_HISTORY is 0 / false / off / no."""
    return environ.get(ENV, "").strip().lower() not in ("0", "false", "off", "no")


def default_cli_path() -> Path:
    """The CLI's log, in the platform's user data directory."""
    if sys.platform == "win32":
        root = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Application Support"
    else:
        root = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return root / "merge-suite" / FILE_NAME


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# --- inputs: enough to tell, cheaply, that a file changed since the merge ---------------

def fingerprint(path: str | os.PathLike) -> str:
    """A quick content fingerprint: size, the first MiB (a safetensors header and more) and 16 samples of
    64 KiB spread over the file. Milliseconds where a full sha256 takes tens of seconds; any rewrite
    of a model (other weights, other dtype, pruned) changes it."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        for i in range(16 if size > 1 << 20 else 0):
            f.seek((size - (1 << 16)) * i // 15)
            digest.update(f.read(1 << 16))
    return digest.hexdigest()[:32]


def input_record(name: str, path: Optional[str | os.PathLike] = None, sha256: str = "",
                 folder: Optional[str] = None) -> dict:
    """One input model of an entry: its name (as the user picked it), where it was, its sha256 when already
    known, and a fingerprint when the file is there."""
    record: dict[str, Any] = {"name": name}
    if folder:
        record["folder"] = folder
    if path is not None:
        record["path"] = str(path)
        try:
            record["fingerprint"] = fingerprint(path)
        except OSError:
            pass
    if sha256:
        record["sha256"] = sha256
    return record


def check_input(record: Mapping[str, Any], path: Optional[str | os.PathLike], sha256_of=None,
                input_name: str = "history_id") -> None:
    """Raise unless ``path`` is the file the entry recorded: missing, or changed (sha256 when the entry has
    one and ``sha256_of`` is given, else the fingerprint)."""
    name = record.get("name", "?")
    if path is None or not os.path.isfile(path):
        raise MergeInputError(input_name, f"the entry's input '{name}' is missing"
                                          f"{'' if path is None else f' (no file at {path})'}.",
                              "put that file back where it was, then run again.")
    if record.get("sha256") and sha256_of is not None:
        if sha256_of(path) != record["sha256"]:
            raise MergeInputError(input_name, f"the entry's input '{name}' has changed since the merge "
                                              f"(its sha256 differs).", "restore the file the merge used.")
        return
    if record.get("fingerprint") and fingerprint(path) != record["fingerprint"]:
        raise MergeInputError(input_name, f"the entry's input '{name}' has changed since the merge "
                                          f"(its content differs).", "restore the file the merge used.")


def entry(kind: str, source: str, models: Sequence[Mapping], *, mode: str = "", settings: Optional[Mapping] = None,
          recipe: Optional[Mapping] = None, text: str = "", output: Optional[str] = None,
          prompt_id: Optional[str] = None, **extra: Any) -> dict:
    """An entry without its id and time (History.append adds them). kind: "merge", "combine", "file merge",
    "save", "lora merge", "lora extract"; source: the node's name or the CLI command; recipe: the merge tree
    ({"model": ..., "clip": ...}) a replay follows."""
    out: dict[str, Any] = {"kind": kind, "source": source, "models": [dict(m) for m in models], "mode": mode,
                           "settings": dict(settings or {}), "text": text}
    if recipe:
        out["recipe"] = dict(recipe)
    if output:
        out["output"] = str(output)
    if prompt_id:
        out["prompt_id"] = str(prompt_id)
    out.update(extra)
    return out


def digest(item: Mapping[str, Any]) -> str:
    """What makes two entries the same merge (all but id, time and prompt id): a re-run adds nothing."""
    same = {k: v for k, v in item.items() if k not in ("id", "time", "prompt_id")}
    return hashlib.sha256(json.dumps(same, sort_keys=True, default=str).encode()).hexdigest()


# --- the file -------------------------------------------------------------------------

@contextmanager
def _locked(fd: int, path: Path) -> Iterator[None]:
    """An exclusive lock between processes: flock on POSIX, a byte lock of a side file on Windows."""
    if os.name != "nt":
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return
    import msvcrt
    side = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                msvcrt.locking(side, msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined]
                break
            except OSError:
                continue  # LK_LOCK gives up after 10 s: keep waiting
        try:
            yield
        finally:
            os.lseek(side, 0, os.SEEK_SET)
            msvcrt.locking(side, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
    finally:
        os.close(side)


def _line_id(line: str) -> Optional[int]:
    """The id of a whole entry line, None for a damaged one."""
    found = _ID.match(line)
    return int(found.group(1)) if found and line.rstrip().endswith("}") else None


def _last_id(fd: int) -> tuple[int, bool]:
    """(the last valid entry's id or 0, whether the file ends with a newline), reading backwards."""
    end = os.lseek(fd, 0, os.SEEK_END)
    if end == 0:
        return 0, True
    ends_clean = os.pread(fd, 1, end - 1) == b"\n"
    tail, pos = b"", end
    while pos > 0:
        step = min(1 << 16, pos)
        pos -= step
        tail = os.pread(fd, step, pos) + tail
        lines = tail.split(b"\n")
        whole = lines if pos == 0 else lines[1:]  # the first piece may be cut
        for raw in reversed(whole):
            found = _line_id(raw.decode("utf-8", "replace"))
            if found is not None:
                return found, ends_clean
        tail = lines[0] if pos > 0 else b""
    return 0, ends_clean


def _parsed(raw: bytes) -> Optional[dict]:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _first_valid_line(f, pos: int, stop: int) -> Optional[tuple[int, bytes, int]]:
    """(offset, line with its newline, id) of the first whole valid line starting at or after ``pos`` (a line
    starting exactly at ``pos`` counts only when ``pos`` is 0 or follows a newline) and before ``stop``."""
    if pos > 0:
        f.seek(pos - 1)
        if f.read(1) != b"\n":
            f.readline()  # the rest of a cut line
    else:
        f.seek(0)
    while True:
        start = f.tell()
        if start >= stop:
            return None
        raw = f.readline()
        if not raw.endswith(b"\n"):
            return None
        found = _line_id(raw.decode("utf-8", "replace"))
        if found is not None:
            return start, raw, found


def _valid_lines_backwards(f, end: int, count: int) -> Iterator[bytes]:
    """Up to ``count`` whole valid lines, the last first."""
    tail, pos, given = b"", end, 0
    while pos > 0 and given < count:
        step = min(1 << 16, pos)
        pos -= step
        f.seek(pos)
        tail = f.read(step) + tail
        lines = tail.split(b"\n")
        for raw in reversed(lines[1:] if pos > 0 else lines):  # the first piece may be cut
            if raw and _line_id(raw.decode("utf-8", "replace")) is not None:
                yield raw
                given += 1
                if given == count:
                    return
        tail = lines[0] if pos > 0 else b""


class History:
    """One log file. Appends from any number of processes; reads keep an index refreshed incrementally."""

    def __init__(self, path: str | os.PathLike, warn=None):
        self.path = Path(path)
        self._warn = warn or (lambda text: _LOG.warning("merge_suite: %s", text))
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._stamp: Optional[tuple[int, int]] = None  # (inode, bytes read)
        self._ids: list[int] = []  # per valid line, in file order
        self._offsets: list[int] = []
        self._lower: list[str] = []
        self._damaged = 0

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warn(text)

    # writing
    def append(self, item: Mapping[str, Any]) -> Optional[dict]:
        """Append an entry with the next id and the time; returns it, or None (with one warning) when the log
        cannot be written. Never raises: the history must not fail a merge."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        except OSError as exc:
            self._warn_once("write", f"the merge history '{self.path}' cannot be written ({exc}); merges are "
                                     f"not recorded there.")
            return None
        try:
            with _locked(fd, self.path):
                rfd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                try:
                    last, ends_clean = _last_id(rfd)
                finally:
                    os.close(rfd)
                done = {"id": last + 1, "time": now(), **{k: v for k, v in item.items() if k not in ("id", "time")}}
                data = ("" if ends_clean else "\n") + json.dumps(done, ensure_ascii=False, default=str) + "\n"
                raw = data.encode("utf-8")
                if len(raw) > MAX_ENTRY_BYTES:
                    self._warn_once("size", f"a merge history entry of {len(raw)} bytes was not recorded (over "
                                            f"{MAX_ENTRY_BYTES} bytes).")
                    return None
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view):]
                return done
        except (OSError, ValueError, TypeError) as exc:
            self._warn_once("write", f"the merge history '{self.path}' cannot be written ({exc}); merges are "
                                     f"not recorded there.")
            return None
        finally:
            os.close(fd)

    # reading
    def _refresh(self) -> None:
        """Bring the index up to the file: only what was appended since the last read is read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._ids, self._offsets, self._lower, self._damaged = None, [], [], [], 0
            return
        if self._stamp is None or self._stamp[0] != st.st_ino or st.st_size < self._stamp[1]:
            self._stamp, self._ids, self._offsets, self._lower, self._damaged = (st.st_ino, 0), [], [], [], 0
        start = self._stamp[1]
        if st.st_size == start:
            return
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(st.st_size - start)
        cut = data.rfind(b"\n") + 1  # a line still being written is read next time
        # in bulk: one decode and one lower() of the whole chunk (a newline never changes under either)
        whole = data[:cut]
        if whole.isascii():  # the usual case: a line's length in bytes is its length in characters
            lows = whole.lower().decode("ascii").split("\n")[:-1]
            lengths: Sequence[int] = [len(low) for low in lows]
        else:
            lengths = [len(raw) for raw in whole.split(b"\n")[:-1]]
            lows = whole.decode("utf-8", "replace").lower().split("\n")[:-1]
        offset = start
        for length, low in zip(lengths, lows):
            found = _line_id(low)
            if found is None:
                if low.strip():
                    self._damaged += 1
            else:
                self._ids.append(found)
                self._offsets.append(offset)
                self._lower.append(low)
            offset += length + 1
        self._stamp = (st.st_ino, start + cut)
        if self._damaged:
            self._warn_once("damaged", f"the merge history '{self.path}' has {self._damaged} damaged line(s); "
                                       f"they are skipped.")

    def _read(self, index: int) -> Optional[dict]:
        with open(self.path, "rb") as f:
            f.seek(self._offsets[index])
            line = f.readline()
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self._warn_once(f"line{self._offsets[index]}", f"the merge history '{self.path}' has a damaged "
                                                           f"entry (id {self._ids[index]}); it is skipped.")
            return None
        return value

    def count(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._ids)

    def get(self, ref: int, input_name: str = "history_id") -> dict:
        """Entry ``ref``: -1 the last, -2 the one before, ..., n > 0 the entry with id n."""
        with self._lock:
            if self._stamp is None:  # a fresh process (the CLI): look near the end or bisect, without an index
                quick = self._find_without_index(ref)
                if quick is not None:
                    return quick
            self._refresh()
            total = len(self._ids)
            where = (f"the merge history ({self.path}) has {total} entr{'y' if total == 1 else 'ies'}"
                     + (f" (ids {self._ids[0]} to {self._ids[-1]})" if total else ""))
            index: Optional[int] = None
            if ref < 0 and -ref <= total:
                index = total + ref
            elif ref > 0:
                index = next((i for i in range(total - 1, -1, -1) if self._ids[i] == ref), None)
            if index is None:
                raise MergeInputError(input_name, f"there is no entry {ref}: {where}.",
                                      "use -1 for the last merge, -2 for the one before, or an id the history "
                                      "lists.")
            found = self._read(index)
            if found is None:
                raise MergeInputError(input_name, f"entry {ref} of the merge history is damaged.",
                                      "choose another entry.")
            return found

    def _find_without_index(self, ref: int) -> Optional[dict]:
        """Entry ``ref`` read straight from the file: -k among the last lines, id n by bisecting on the byte
        offset (ids grow along the file). None when that does not find it: the caller builds the index."""
        try:
            with open(self.path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                if ref < 0:
                    found = list(_valid_lines_backwards(f, end, -ref))
                    return _parsed(found[-1]) if len(found) == -ref else None
                lo, hi = 0, end
                while hi - lo > 1 << 16:
                    mid = (lo + hi) // 2
                    at = _first_valid_line(f, mid, hi)
                    if at is None or at[2] > ref:
                        hi = mid
                    elif at[2] < ref:
                        lo = at[0] + len(at[1])
                    else:
                        return _parsed(at[1])
                at = _first_valid_line(f, lo, hi)
                while at is not None and at[2] < ref:
                    at = _first_valid_line(f, at[0] + len(at[1]), hi)
                return _parsed(at[1]) if at is not None and at[2] == ref else None
        except OSError:
            return None

    def search(self, text: str = "", mode: str = "and", offset: int = 0, limit: int = 20) -> tuple[int, list[dict]]:
        """(number of matches, the entries offset..offset+limit of them, newest first). Words match anywhere
        in an entry (case-insensitive): all of them in "and" mode, any in "or" mode."""
        if mode not in ("and", "or"):
            raise MergeInputError("mode", f"'{mode}' is not a search mode.", "use 'and' or 'or'.")
        words = text.lower().split()
        with self._lock:
            self._refresh()
            picked: Sequence[int]
            if not words:
                picked = range(len(self._ids) - 1, -1, -1)
            elif mode == "and":  # narrowed word by word: each pass is a comprehension over what is left
                lower = self._lower
                left: Sequence[int] = range(len(lower))
                for word in words:
                    left = [i for i in left if word in lower[i]]
                picked = left[::-1]
            else:
                hits: set[int] = set()
                for word in words:
                    hits.update([i for i, line in enumerate(self._lower) if word in line])
                picked = sorted(hits, reverse=True)
            total = len(picked)
            page = [found for i in picked[max(0, offset):max(0, offset) + max(0, limit)]
                    if (found := self._read(i)) is not None]
            return total, page
