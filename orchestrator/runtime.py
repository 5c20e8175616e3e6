"""Runtime state that must survive the listener's restart: per-agent restart history and the emergency latch.

Owned here: STATE/runtime.json, read and written whole under a file lock
(the listener and the command line both change it), each write atomic, so a
kill -9 at any moment leaves the old state or the new one. Called by the
listener (policies), the control commands and status.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from orchestrator.errors import OrchestratorError
from orchestrator.history import write_atomically
from orchestrator.policies import AgentHistory

FILE = "runtime.json"


@dataclass
class Latch:
    """The emergency stop: while set, nothing restarts or starts automatically, and apply and start refuse."""

    since: float
    reason: str


@dataclass
class RuntimeState:
    agents: dict[str, AgentHistory] = field(default_factory=dict)
    latch: Latch | None = None

    def agent(self, name: str) -> AgentHistory:
        return self.agents.get(name, AgentHistory())


class LatchedError(OrchestratorError):
    """The emergency stop is latched: nothing starts until it is cleared."""


def describe_latch(latch: Latch) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(latch.since))
    return f"emergency stop latched since {when} ({latch.reason or 'no reason given'})"


def refuse_if_latched(state_dir: str) -> None:
    latch = load(state_dir).latch
    if latch is not None:
        raise LatchedError(f"{describe_latch(latch)}: nothing starts until `orchestrator emergency-clear`")


def _decode(data: dict[str, object]) -> RuntimeState:
    agents = {}
    for name, raw in dict(data.get("agents", {})).items():  # type: ignore[call-overload]
        agents[name] = AgentHistory(**{**raw, "failures": tuple(raw.get("failures", ()))})
    latch = data.get("latch")
    return RuntimeState(agents=agents, latch=Latch(**latch) if isinstance(latch, dict) else None)


def load(state_dir: str) -> RuntimeState:
    path = os.path.join(state_dir, FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            return _decode(json.load(handle))
    except FileNotFoundError:
        return RuntimeState()
    except (ValueError, TypeError):
        # unreadable state must not stop restarts: start from scratch (the file is rewritten at the next change)
        return RuntimeState()


def save(state_dir: str, state: RuntimeState) -> None:
    data = {"agents": {n: {**asdict(h), "failures": list(h.failures)} for n, h in sorted(state.agents.items())},
            "latch": asdict(state.latch) if state.latch else None}
    write_atomically(os.path.join(state_dir, FILE), json.dumps(data, indent=1))


@contextmanager
def changing(state_dir: str) -> Iterator[RuntimeState]:
    """Read, let the caller change, and write back the runtime state, holding its lock throughout."""
    os.makedirs(state_dir, exist_ok=True)
    with open(os.path.join(state_dir, FILE + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = load(state_dir)
            yield state
            save(state_dir, state)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
