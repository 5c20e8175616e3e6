"""The alert history: every firing and resolution, bounded, and the alerts active now.

    STATE/alerts/history.jsonl   one JSON object a line, oldest first, at most KEEP lines after a trim
    STATE/alerts/active.json     the alerts firing now, by key (agent/metric/level)

Each alert's key says who owns it and alone raises and resolves it: the
threshold alerts (`agent/metric/level`) are the exporter's sampler's, the exit
alerts (`agent/exit/CRITICAL`, a manual-policy agent that exited) the restart
keeper's; each sends its own to the notifications (daemons.notify). They write
one transition at a time, holding the alerts lock.
Everyone else (`orchestrator alerts`, `status`, the web page) only reads. A line is one
`write` of a whole line to a file opened for appending, so a reader never sees
half of one; the history is trimmed to its newest KEEP lines by an atomic
rewrite once it holds twice that many, so it stays bounded without a rewrite
per alert.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.core.alerts import Transition
from orchestrator.state.files import exclusive, write_atomically

DIRECTORY = "alerts"
HISTORY = "history.jsonl"
ACTIVE = "active.json"
KEEP = 1000


@dataclass(frozen=True)
class AlertRecord:
    """One firing or resolution, as stored and as `orchestrator alerts --output json` prints it."""

    key: str             # agent/metric/level
    agent: str
    metric: str
    level: str           # WARNING, CRITICAL, EMERGENCY, PREDICTED
    kind: str            # firing, resolved
    value: float
    threshold: float
    at: float            # wall-clock time, seconds since the epoch
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, transition: Transition) -> AlertRecord:
        """The record of a transition whose `at` is wall-clock time."""
        rule = transition.rule
        return cls(key=rule.key, agent=rule.agent, metric=rule.metric, level=rule.level, kind=transition.kind,
                   value=transition.value, threshold=rule.fire_at if transition.kind == "firing" else rule.resolve_at,
                   at=transition.at, summary=transition.summary)


def _path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, DIRECTORY, name)


def record(state_dir: str, alert: AlertRecord, *, keep: int = KEEP) -> None:
    """Append `alert` to the history and update the active set (the writer's call; see the module's docstring)."""
    os.makedirs(os.path.join(state_dir, DIRECTORY), mode=0o700, exist_ok=True)
    with exclusive(_path(state_dir, "lock")):
        fd = os.open(_path(state_dir, HISTORY), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # private, whatever the umask
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(alert.as_dict(), sort_keys=True) + "\n")
        lines = _lines(state_dir)
        if len(lines) >= 2 * keep:
            write_atomically(_path(state_dir, HISTORY), "".join(line + "\n" for line in lines[-keep:]))
        current = {a.key: a for a in active(state_dir)}
        if alert.kind == "firing":
            current[alert.key] = alert
        else:
            current.pop(alert.key, None)
        write_atomically(_path(state_dir, ACTIVE),
                         json.dumps([a.as_dict() for a in sorted(current.values(), key=lambda a: a.key)], indent=1))


def recent(state_dir: str, limit: int = 50) -> list[AlertRecord]:
    """The newest `limit` firings and resolutions, oldest first."""
    return [record for line in _lines(state_dir)[-limit:] if (record := _parse(line)) is not None]


def active(state_dir: str) -> list[AlertRecord]:
    """The alerts firing now, by key; none when nothing was ever recorded."""
    try:
        with open(_path(state_dir, ACTIVE), encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return []  # being replaced, or damaged: the next record rewrites it from the history's writer
    return [record for item in data if isinstance(item, dict) and (record := _from(item)) is not None]


def _lines(state_dir: str) -> list[str]:
    try:
        with open(_path(state_dir, HISTORY), encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle if line.endswith("\n")]
    except FileNotFoundError:
        return []


def _parse(line: str) -> AlertRecord | None:
    try:
        item = json.loads(line)
    except ValueError:
        return None
    return _from(item) if isinstance(item, dict) else None


def _from(item: dict[str, Any]) -> AlertRecord | None:
    try:
        return AlertRecord(**{name: item[name] for name in AlertRecord.__dataclass_fields__})
    except (KeyError, TypeError):
        return None
