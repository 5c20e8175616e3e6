"""Files of the state directory, written so a crash never leaves half of one, and the one lock primitive.

Owned here: the atomic write (a temporary file in the same directory, flushed
and fsynced, renamed over the old one, the directory fsynced: a reader sees
the old file or the new one, whole), the atomic
symlink swap, writing a tree of files, and advisory locks (flock) with an
optional bound on the wait. Every other module of the state layer (history,
runtime) and every writer above it (`render --out`) goes through these.

A lock taken with `record` says who holds it: once the flock is taken, the
holder writes its PID, argv, process start time and the time it took the lock
into the lock file itself (in place: the flock is on the file's inode, so the
file is never replaced), and empties it before letting go. A waiter reads it to
say whom it waits for. The kernel ends a dead holder's flock, but not its
record: a record found on taking the lock is a dead holder's (its PID gone, a
zombie, or reused by a process started at another time), and is said so.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

LOCK_POLL = 0.02  # seconds between attempts while a bounded wait for a lock lasts


def write_atomically(path: str, text: str | bytes, *, durable: bool = True) -> None:
    """Replace the file at `path` with `text` (bytes are written as they are): a reader sees the old file or the
    new one, whole.

    `durable`: on disk before the rename (fsync), so a crash of the machine leaves one or the other too; off for
    a file rewritten every few seconds that nothing needs after a crash (a cache)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8") if isinstance(text, str) else text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_tree(out_dir: str, files: Mapping[str, str]) -> list[str]:
    """Write each `relative path -> text` below `out_dir`, each atomically; the paths written, in order."""
    written = []
    for rel, text in sorted(files.items()):
        path = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomically(path, text)
        written.append(path)
    return written


def point(link: str, target: str) -> None:
    """Make `link` a symlink to `target`, atomically (a new link renamed over the old one)."""
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def make_private(root: str) -> None:
    """Files 0600 and directories 0700 below `root` (copytree copies each directory's mode)."""
    for directory, _dirs, names in os.walk(root):
        os.chmod(directory, 0o700)
        for name in names:
            os.chmod(os.path.join(directory, name), 0o600)


@dataclass(frozen=True)
class Holder:
    """Who holds a lock taken with `record`, as it wrote itself into the lock file."""

    pid: int
    argv: tuple[str, ...]
    started: int    # the process's start, in clock ticks since boot (/proc/PID/stat): a reused PID has another
    since: float    # when it took the lock, seconds since the epoch

    @property
    def command(self) -> str:
        """Its argv, the program by its base name (`orchestrator apply`, not the venv's path)."""
        return " ".join([os.path.basename(self.argv[0]), *self.argv[1:]] if self.argv else ["?"])

    def alive(self) -> bool:
        """Whether this very process still runs (not a zombie, and its PID not reused since)."""
        state, started = _process_start(self.pid)
        return state is not None and state not in "ZX" and (started is None or started == self.started)

    def __str__(self) -> str:
        return f"PID {self.pid} ({self.command}), since {clock(self.since)}"


class LockBusy(Exception):
    """The lock stayed taken for the whole bounded wait (see `exclusive`); `holder`, when it said who it is."""

    def __init__(self, path: str, holder: Holder | None = None) -> None:
        super().__init__(path)
        self.path, self.holder = path, holder


@contextmanager
def exclusive(path: str, *, wait: bool = True, timeout: float | None = None, record: bool = False,
              say: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive advisory lock on the file at `path` (created if missing).

    Yields True while held. `wait=False`: yields False at once when another process holds it.
    `timeout`: waits at most that long, then raises LockBusy. The lock ends with the process,
    so a killed holder never leaves it taken. `record`: the holder writes who it is into the
    file (see the module's docstring). `say` is told whom a wait is for, and of a dead holder's
    record taken over.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not _acquire(fd, path, wait=wait, timeout=timeout, say=say):
            yield False
            return
        if record:
            _take_over(fd, say)
        try:
            yield True
        finally:
            if record:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def holder_of(path: str) -> Holder | None:
    """The holder recorded in the lock file at `path` (None: none, or a record being written)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return _parse(handle.read(65536))
    except OSError:
        return None


def _acquire(fd: int, path: str, *, wait: bool, timeout: float | None, say: Callable[[str], None] | None) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        if not wait:
            return False
    if say is None and timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = None if timeout is None else time.monotonic() + timeout
    told: Holder | None = None
    while True:
        holder = _recorded(fd)
        if say is not None and holder is not None and holder != told:
            told = holder
            limit = "" if timeout is None else f" (at most {timeout:g}s)"
            say(f"waiting for the lock{limit}: held by {holder}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if deadline is not None and time.monotonic() > deadline:
                raise LockBusy(path, holder) from None
            time.sleep(LOCK_POLL)


def _take_over(fd: int, say: Callable[[str], None] | None) -> None:
    """Write this process into the lock file, saying so when a dead holder's record was there."""
    previous = _recorded(fd)
    me = Holder(pid=os.getpid(), argv=tuple(sys.argv), started=_process_start(os.getpid())[1] or 0, since=time.time())
    if previous is not None and previous.pid != me.pid and say is not None:
        taken = clock(previous.since)
        if previous.alive():  # it let go without emptying the file (it cannot hold the flock we hold)
            say(f"taken over the lock from PID {previous.pid} (command {previous.command}), which no longer held it")
        else:
            say(f"taken over from dead holder PID {previous.pid} (command {previous.command}), which took the lock at {taken}")
    data = json.dumps({"pid": me.pid, "argv": list(me.argv), "started": me.started, "since": me.since}).encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def clock(when: float) -> str:
    """A time of day as people read it: HH:MM:SS today, with the date on another day."""
    same_day = time.localtime(when)[:3] == time.localtime()[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", time.localtime(when))


def _recorded(fd: int) -> Holder | None:
    try:
        return _parse(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
    except OSError:
        return None


def _parse(text: str) -> Holder | None:
    try:
        data = json.loads(text)
        return Holder(pid=int(data["pid"]), argv=tuple(str(a) for a in data["argv"]), started=int(data["started"]),
                      since=float(data["since"]))
    except (ValueError, KeyError, TypeError):
        return None


def _process_start(pid: int) -> tuple[str | None, int | None]:
    """(state letter, start time in clock ticks since boot) of the process `pid`; (None, None) when there is none.

    Read from /proc/PID/stat; without /proc (not Linux), whether the PID exists, and no start time."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            fields = handle.read().rpartition(")")[2].split()
        return fields[0], int(fields[19])   # fields 3 and 22 of proc(5), after the command's parentheses
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None, None
    except (OSError, ValueError, IndexError):
        return None, None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None, None
    except PermissionError:
        pass
    return "?", None
