"""supervisord's process states and `ProcessInfo`, as every layer reads them.

Owned here: the names of supervisord's process states (supervisor/states.py),
the two sets orchestrator reasons with (up: starting or running; down:
stopped, exited or fatal), and `ProcessInfo`, one process as getProcessInfo
describes it. The client builds them from XML-RPC replies; plan, status, the
sequencer and the keeper read them, without loading the client's libraries.

Standard library only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# supervisord's process states (supervisor/states.py), by name.
STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN = (
    "STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")
UP_STATES = frozenset({STARTING, RUNNING})
DOWN_STATES = frozenset({STOPPED, EXITED, FATAL})


@dataclass(frozen=True)
class ProcessInfo:
    """One supervisord process, as getProcessInfo describes it."""

    name: str
    group: str
    state: str
    pid: int
    start: int
    now: int
    exitstatus: int
    spawnerr: str
    description: str

    @property
    def full_name(self) -> str:
        return f"{self.group}:{self.name}"

    @property
    def uptime(self) -> float:
        return float(self.now - self.start) if self.state in UP_STATES and self.start else 0.0

    @classmethod
    def from_rpc(cls, info: dict[str, Any]) -> ProcessInfo:
        return cls(name=info["name"], group=info["group"], state=info["statename"], pid=info["pid"],
                   start=info["start"], now=info["now"], exitstatus=info["exitstatus"],
                   spawnerr=info.get("spawnerr", ""), description=info.get("description", ""))
