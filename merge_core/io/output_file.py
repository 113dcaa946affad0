"""Every file this pack writes goes through ``OutputFile``: a user's files are never damaged.

- The target is resolved to its real path (symlinks followed) before anything is decided, and a
  target that is one of the writer's own inputs (same real path or same inode) is refused even
  when overwriting is allowed; an existing directory is refused too, and so is anything else that is not a
  regular file (a FIFO, a device, a socket, or a symlink to one): overwriting replaces regular files only.
- Data goes to a temporary file of our own pattern in the target folder,
  ``.<name>.merge-suite-<pid>-<token>.part``, created with ordinary permissions (0666 less umask),
  fsynced, then committed without clobbering: ``os.link`` fails if a file appeared at the target
  in the meantime (only ``overwrite`` uses ``os.replace``); the folder is fsynced after the rename.
- The temporary file is removed on every failure: an exception, a failed commit, and (through
  ``install_signal_cleanup``) SIGTERM/SIGHUP. Parts left by a killed process are swept by
  ``remove_stale_parts`` (our pattern only, only when their process is gone or they are idle).
- Disk errors (full, read-only, no permission) become one-line MergeInputErrors naming the option.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import MergeInputError

PART_RE = re.compile(r"^\..+\.merge-suite-(\d+)-[0-9a-f]{8}\.part$")
RENUMBER_TRIES = 1000  # automatic names tried after the first was taken meanwhile (OutputFile.renumber)
STALE_IDLE_S = 600.0  # a part untouched this long is stale even if its pid is alive (pid reuse)
WRITEBACK_STEP = 64 << 20  # start the kernel's writeback every 64 MiB written (see _start_writeback)
DEAD_PID_IDLE_S = 60.0  # grace for a part whose pid is not running here (another host or container)
DISK_ERRORS: dict[Optional[int], str] = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EFBIG: "the file is too large for this disk or limit", errno.EROFS: "the disk is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied"}

_live: set[str] = set()  # temporary files this process is writing right now
_live_lock = threading.Lock()


def _real(path) -> str:
    return os.path.realpath(os.fspath(path))


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_target(path, inputs: Iterable = (), overwrite: bool = False, input_name: str = "output") -> Path:
    """The real path to write, or a MergeInputError: an input, a directory, or an existing file."""
    if not os.fspath(path):
        raise MergeInputError(input_name, "is empty.", "give an output file name.")
    real = _real(path)
    for source in inputs:
        if source is None:
            continue
        if _real(source) == real or _same_file(source, real):
            raise MergeInputError(input_name, f"'{path}' is the input file '{source}'; writing it would destroy "
                                  "that input.", "choose another output name (inputs are never overwritten, "
                                  "even with --overwrite).")
    if os.path.isdir(real):
        raise MergeInputError(input_name, f"'{path}' is an existing directory.", "give a file name, e.g. "
                              f"'{os.path.join(os.fspath(path), 'merged.safetensors')}'.")
    special = special_kind(real)
    if special:
        shown = f"'{path}'" + (f" (a link to '{real}')" if real != os.path.abspath(os.fspath(path)) else "")
        raise MergeInputError(input_name, f"{shown} is {special}, not a regular file; only regular files are ever "
                              "replaced (even with --overwrite).", "give the name of a regular file.")
    if os.path.lexists(real) and not overwrite:
        raise MergeInputError(input_name, f"'{path}' already exists.", "choose another name (or allow overwriting, "
                              "e.g. --overwrite).")
    return Path(real)


SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(real: str) -> str:
    """What an existing non-regular, non-directory file is ('' for a regular file or nothing there):
    replacing a device node or a FIFO with a regular file would break whatever uses it (run as root on
    /dev/null, the system)."""
    try:
        mode = os.stat(real).st_mode
    except (OSError, ValueError):
        return ""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ""
    return next((what for test, what in SPECIAL_KINDS if test(mode)), "not a regular file")


NAME_BYTES = 255  # the longest file or folder name most file systems take (ext4, xfs, btrfs, NTFS, APFS)
# a saver appends to the prefix's last name up to '_<12-hex content key>' + '_00001_.safetensors', and the
# temporary file adds '.', '.merge-suite-<pid>-<8 hex>.part': 67 bytes with a 7-digit pid; 180 leaves a margin
PREFIX_NAME_BYTES = 180


def check_prefix(prefix: str, folder: str, input_name: str = "filename_prefix") -> str:
    """A save node's filename_prefix, stripped, or a MergeInputError, checked before any folder is made:
    no NUL byte or other control character, no backslash on POSIX (ComfyUI's prefixes take '/' for sub-folders;
    a backslash would become part of a name that the node could not report as a usable path), every folder name at most
    255 bytes and the file's name at most PREFIX_NAME_BYTES (room for the counter and the temporary name)."""
    prefix = (prefix or "").strip()
    if not prefix:
        raise MergeInputError(input_name, "is empty.", "give a name such as 'merge_suite/my_merge'.")
    control = next((c for c in prefix if ord(c) < 32 or c == "\x7f"), None)
    if control is not None:  # a NUL no file system takes; a new line or tab no user means in a file name
        what = "a NUL byte" if control == "\0" else f"the control character {control!r}"
        raise MergeInputError(input_name, f"{prefix!r} contains {what}.", "remove it; use letters, digits, "
                              "'-', '_' and '/' for sub-folders.")
    if os.sep == "/" and "\\" in prefix:
        raise MergeInputError(input_name, f"'{prefix}' contains a backslash; sub-folders are separated by '/' "
                              "here.", "use '/' for sub-folders (e.g. 'merge_suite/my_merge'), or leave the "
                              "backslash out.")
    parts = [p for p in prefix.replace(os.sep, "/").split("/") if p]
    for i, part in enumerate(parts):
        size = len(os.fsencode(part)) if part else 0
        limit = PREFIX_NAME_BYTES if i == len(parts) - 1 else NAME_BYTES
        if size > limit:
            what = "file name" if i == len(parts) - 1 else "folder name"
            raise MergeInputError(input_name, f"the {what} '{part[:24]}...' is {size} bytes long; at most {limit} "
                                  f"fit in the {folder} folder (file systems take {NAME_BYTES} bytes per name, and "
                                  "a counter and extension are added).", "choose a shorter name.")
    return prefix


def disk_error(exc: OSError, path, input_name: str) -> MergeInputError:
    """A one-line error for a failed write (disk full, read-only, no permission, ...)."""
    why = DISK_ERRORS.get(exc.errno) or exc.strerror or str(exc)
    return MergeInputError(input_name, f"cannot write '{path}': {why}; nothing was written.",
                           "free disk space or choose a folder you can write to.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_parts(folder, now: Optional[float] = None, depth: int = 0) -> list[Path]:
    """Delete our own leftover temporary files in ``folder`` (and ``depth`` levels below): those whose
    process is gone, or idle for STALE_IDLE_S. Other files are never touched."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth > 0:
                    removed += remove_stale_parts(entry.path, now, depth - 1)
                continue
            match = PART_RE.match(entry.name)
            if not match or not entry.is_file(follow_symlinks=False):
                continue
            with _live_lock:
                if entry.path in _live:
                    continue
            pid, idle = int(match.group(1)), now - entry.stat(follow_symlinks=False).st_mtime
            gone = pid != os.getpid() and not _pid_alive(pid)
            if idle > STALE_IDLE_S or (gone and idle > DEAD_PID_IDLE_S):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def remove_live_parts() -> None:
    """Unlink every temporary file this process is writing (signal handlers call this)."""
    with _live_lock:
        paths = list(_live)
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not possible on every platform; the file itself was fsynced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def next_numbered(taken: Path) -> Path:
    """The first free '<name>_<n>_.safetensors' after ``taken`` in its folder: where an identical save (another
    queue, another server on the same folder) committed our automatic name first, we take the next one
    (ComfyUI's '<prefix>_00001_' save naming; OutputFile.renumber)."""
    match = re.fullmatch(r"(.*)_(\d+)_\.safetensors", taken.name)
    name, counter = (match.group(1), int(match.group(2)) + 1) if match else (taken.stem, 1)
    while os.path.lexists(candidate := taken.parent / f"{name}_{counter:05}_.safetensors"):
        counter += 1
    return candidate


class OutputFile:
    """``with OutputFile(path, inputs=[...]) as out: out.write(data)`` - the file appears complete or not at all.

    input_name: the option or node input that named the path, for error messages.
    """

    def __init__(self, path, inputs: Iterable = (), overwrite: bool = False, input_name: str = "output",
                 size: Optional[int] = None, renumber: Optional[Callable[[Path], Path]] = None):
        self.requested = os.fspath(path)
        # for an automatic numbered name (a save node's '<prefix>_00001_'): the next name to try when another
        # process committed this one first (two identical saves at once), instead of discarding the work
        self.renumber = renumber
        self.size = size  # bytes the file will take, when known: checked against the free space before any work
        self.inputs = [i for i in inputs if i is not None]
        self.overwrite, self.input_name = overwrite, input_name
        self.path: Optional[Path] = None
        self.tmp: Optional[str] = None
        self._fd = -1
        self._written = self._flushed = 0  # bytes written, and up to where writeback was started
        self._made: list[str] = []  # folders we created, removed again (when empty) if nothing is written

    def __enter__(self) -> "OutputFile":
        if self.renumber is not None and not self.overwrite and os.path.lexists(self.requested):
            self.requested = os.fspath(self.renumber(Path(self.requested)))  # taken since the name was chosen
        self.path = check_target(self.requested, self.inputs, self.overwrite, self.input_name)
        folder = str(self.path.parent)
        missing = folder
        while missing and not os.path.isdir(missing):
            self._made.append(missing)
            missing = os.path.dirname(missing)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            self._remove_made()
            raise disk_error(exc, self.requested, self.input_name) from None
        remove_stale_parts(folder)
        self._check_space(folder)
        self.tmp = os.path.join(folder, f".{self.path.name}.merge-suite-{os.getpid()}-{secrets.token_hex(4)}.part")
        with _live_lock:
            _live.add(self.tmp)
        try:
            self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            self._forget()
            self._remove_made()
            raise disk_error(exc, self.requested, self.input_name) from None
        return self

    def _check_space(self, folder: str) -> None:
        """A file that cannot fit is refused before the first byte (a merge would otherwise fail at the end)."""
        if not self.size:
            return
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return
        if free < self.size:
            self._remove_made()
            raise MergeInputError(self.input_name, f"'{self.requested}' needs {_gb(self.size)} but only {_gb(free)} "
                                  f"is free in '{folder}'; nothing was written.",
                                  "free disk space or choose a folder on another disk.")

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < view.nbytes:
                done += os.write(self._fd, view[done:done + (1 << 30)])
        except OSError as exc:
            raise disk_error(exc, self.requested, self.input_name) from None
        self._written += done
        if self._written - self._flushed >= WRITEBACK_STEP:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Ask the kernel to start writing what was written so far (posix_fadvise DONTNEED starts writeback of
        dirty pages; pages still being written stay cached). The commit's fsync then waits for the last step
        only, instead of for the whole file at the end (about 1.5 s per 2 GB here, all of it after the merge)."""
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self._fd, self._flushed, self._written - self._flushed, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass  # only a hint
        self._flushed = self._written

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            self._commit()
        except BaseException:
            self.discard()
            raise

    def _commit(self) -> None:
        tmp = self.tmp
        assert tmp is not None and self.path is not None, "committed before __enter__"
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        except OSError as exc:
            raise disk_error(exc, self.requested, self.input_name) from None
        target = str(self.path)
        if self.overwrite:
            check_target(self.requested, self.inputs, True, self.input_name)  # an input may have been moved here
            os.replace(tmp, target)
        else:
            self._link_no_clobber(tmp, target)
        self._forget()
        self._made = []
        _fsync_dir(str(self.path.parent))

    def _next_name(self, target: str) -> str:
        """The automatic name after ``target``, now the one this file is committed to (renumber is set)."""
        assert self.renumber is not None
        self.path = Path(self.renumber(Path(target)))
        self.requested = str(self.path)
        return self.requested

    def _link_no_clobber(self, tmp: str, target: str) -> None:
        for _ in range(RENUMBER_TRIES if self.renumber is not None else 0):
            try:
                os.link(tmp, target)
            except FileExistsError:  # another save took this automatic name first: take the next free one
                target = self._next_name(target)
                continue
            except OSError:
                break  # no hard links here (or another error): the plain path below says what it is
            os.unlink(tmp)
            return
        try:
            os.link(tmp, target)  # fails if anything exists at target now
        except FileExistsError:
            raise MergeInputError(self.input_name, f"'{self.requested}' appeared while it was being written; it was "
                                  "not replaced and this result was discarded.",
                                  "choose another name (or allow overwriting).") from None
        except FileNotFoundError:
            raise MergeInputError(self.input_name, f"the temporary file for '{self.requested}' was removed while "
                                  "writing (the process was stopped?).", "run again.") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise disk_error(exc, self.requested, self.input_name) from None
            # no hard links on this file system: check, then rename (a race window of microseconds)
            for _ in range(RENUMBER_TRIES if self.renumber is not None else 0):
                if not os.path.lexists(target):
                    break
                target = self._next_name(target)
            if os.path.lexists(target):
                raise MergeInputError(self.input_name, f"'{self.requested}' appeared while it was being written; "
                                      "it was not replaced.", "choose another name.") from None
            os.rename(tmp, target)
            return
        os.unlink(tmp)

    def discard(self) -> None:
        """Close and remove the temporary file (safe to call more than once)."""
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self._forget()
            self._remove_made()

    def _remove_made(self) -> None:
        for folder in self._made:  # deepest first; a folder something else wrote into stays
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._made = []

    def _forget(self) -> None:
        with _live_lock:
            _live.discard(self.tmp)


def write_bytes(path, data: bytes, inputs: Iterable = (), overwrite: bool = False, input_name: str = "output") -> Path:
    """A small file (CSV, PNG, cache) written through OutputFile."""
    with OutputFile(path, inputs, overwrite, input_name) as out:
        out.write(data)
    assert out.path is not None  # set on entering
    return out.path


_installed: dict[int, object] = {}


class Stopped(KeyboardInterrupt):
    """SIGTERM/SIGHUP in a process that asked to handle them like Ctrl+C (the CLI)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def install_signal_cleanup(then_raise: bool = False) -> None:
    """On SIGTERM/SIGHUP remove our live temporary files, then let the signal do what it did before
    (the previous handler, or the default: the process dies of it). then_raise (the CLI): raise
    KeyboardInterrupt instead, so the normal cleanup and exit message run. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)):
        if signum is None or signum in _installed:
            continue
        previous = signal.getsignal(signum)
        if previous == signal.SIG_IGN:
            continue  # the process ignores it: so do we

        def handler(sig, frame, previous=previous):
            remove_live_parts()
            if then_raise:
                raise Stopped(sig)
            if callable(previous):
                previous(sig, frame)
                return
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

        signal.signal(signum, handler)
        _installed[signum] = previous
