"""Files of the state directory, written so a crash never leaves half of one, and the one lock primitive.

Owned here: the atomic write (a temporary file in the same directory, flushed
and fsynced, renamed over the old one, the directory fsynced: a reader sees
the old file or the new one, whole), the atomic
symlink swap, writing a tree of files, and advisory locks (flock) with an
optional bound on the wait. Every other module of the state layer (history,
runtime) and every writer above it (`render --out`) goes through these.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO

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


class LockBusy(Exception):
    """The lock stayed taken for the whole bounded wait (see `exclusive`)."""


@contextmanager
def exclusive(path: str, *, wait: bool = True, timeout: float | None = None) -> Iterator[bool]:
    """Hold an exclusive advisory lock on the file at `path` (created if missing).

    Yields True while held. `wait=False`: yields False at once when another process holds it.
    `timeout`: waits at most that long, then raises LockBusy. The lock ends with the process,
    so a killed holder never leaves it taken.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a+") as handle:
        if not _acquire(handle, wait=wait, timeout=timeout):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle: IO[str], *, wait: bool, timeout: float | None) -> bool:
    if wait and timeout is None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + (timeout or 0.0)
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not wait:
                return False
            if time.monotonic() > deadline:
                raise LockBusy(path_of(handle)) from None
            time.sleep(LOCK_POLL)


def path_of(handle: IO[str]) -> str:
    return str(getattr(handle, "name", "?"))
