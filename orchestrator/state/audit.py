"""The control room's audit log: who did what, when, and how it ended, one JSON object a line.

    STATE/web/audit.jsonl    {"at": seconds since the epoch, "user", "role", "action", "target", "result", "detail"}

Owned here: appending an entry (one write of one line, with O_APPEND, fsynced: a kill -9 leaves whole
lines, and at worst a last line cut short, which `recent` skips) and reading the latest ones. Written by
the web server for every action it is asked to carry out, accepted or refused; read by its page and API.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

DIR = "web"
FILE = "audit.jsonl"
TAIL_BYTES = 256 * 1024   # `recent` reads no more than the end of the file: a long-lived log stays cheap to show


@dataclass(frozen=True)
class Entry:
    at: float
    user: str
    role: str
    action: str          # "start", "stop", "restart", "start-all", "stop-all", "restart-all", "emergency-stop", ...
    target: str          # an agent, "all", a version; "" when the action has none
    result: str          # "ok", "failed", "refused"
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def path(state_dir: str) -> str:
    return os.path.join(state_dir, DIR, FILE)


def append(state_dir: str, entry: Entry) -> None:
    os.makedirs(os.path.join(state_dir, DIR), mode=0o700, exist_ok=True)
    line = (json.dumps(entry.as_dict(), separators=(",", ":")) + "\n").encode()
    fd = os.open(path(state_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def recent(state_dir: str, limit: int = 50) -> list[Entry]:
    """The newest `limit` entries, newest first; lines that do not parse (a cut-short last line) are skipped."""
    try:
        with open(path(state_dir), "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - TAIL_BYTES))
            lines = handle.read().decode("utf-8", "replace").split("\n")
    except FileNotFoundError:
        return []
    found: list[Entry] = []
    for line in reversed(lines):
        if len(found) >= limit:
            break
        try:
            found.append(Entry(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return found
