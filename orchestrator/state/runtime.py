"""Runtime state that must survive the listener's restart: per-agent restart history and the emergency latch.

Owned here: the state directory's runtime files.

    STATE/runtime.json          the emergency latch, and down's stand-down mark
    STATE/runtime/NAME.json     one agent's restart history (`policies.AgentHistory`)
    STATE/runtime.json.lock     held while any of them is read-modified-written

One small file per agent, so that the restart keeper records an exit with one
fsynced write of a few hundred bytes (about 0.5 ms here) instead of rewriting
every agent's history: with 200 agents crash-looping the whole-file rewrite
was the listener's bottleneck. Every write is atomic (temporary file, fsync,
rename), so a kill -9 at any moment leaves the old content or the new.

Fields this version does not know (written by a newer one, or by hand) are
ignored when read and kept when runtime.json is written back. The latch fails
closed: a runtime.json that cannot be read or parsed, or a latch in a form
this version does not understand, counts as latched (with a reason saying
why) until `orchestrator emergency-clear` writes a fresh one.

Called by the listener (restart keeper, liveness monitor, boot), the control
commands, apply, down and status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.core.errors import OrchestratorError
from orchestrator.core.names import EXITS_DIR, RUNTIME_DIR
from orchestrator.state.files import LockBusy, exclusive, write_atomically
from orchestrator.core.policies import AgentHistory

FILE = "runtime.json"
AGENTS_DIR = RUNTIME_DIR
_SUFFIX = ".json"


@dataclass
class Latch:
    """The emergency stop: while set, nothing restarts or starts automatically, and apply and start refuse."""

    since: float
    reason: str


@dataclass
class RuntimeState:
    agents: dict[str, AgentHistory] = field(default_factory=dict)
    latch: Latch | None = None
    # `down` is stopping the supervisord with this pid: its restart keeper fires no restart any more.
    stand_down: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # fields of runtime.json this version does not know

    def agent(self, name: str) -> AgentHistory:
        return self.agents.get(name, AgentHistory())


class LatchedError(OrchestratorError):
    """The emergency stop is latched: nothing starts until it is cleared."""


def describe_latch(latch: Latch) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(latch.since))
    return f"emergency stop latched since {when} ({latch.reason or 'no reason given'})"


def refuse_if_latched(state_dir: str) -> None:
    latch = load_global(state_dir).latch
    if latch is not None:
        raise LatchedError(f"{describe_latch(latch)}: nothing starts until `orchestrator emergency-clear`")


_HISTORY_FIELDS = frozenset(f.name for f in dataclasses.fields(AgentHistory))


def _history(raw: object) -> AgentHistory:
    if not isinstance(raw, dict):
        return AgentHistory()
    known = {k: v for k, v in raw.items() if k in _HISTORY_FIELDS}
    try:
        reasons = known.get("restart_reasons", {})
        reasons = {str(k): int(v) for k, v in reasons.items()} if isinstance(reasons, dict) else {}
        return AgentHistory(**{**known, "failures": tuple(known.get("failures", ())), "restart_reasons": reasons})
    except (TypeError, ValueError):
        return AgentHistory()


def _agent_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, AGENTS_DIR, name + _SUFFIX)


def load_agent(state_dir: str, name: str) -> AgentHistory:
    """One agent's history (no lock: every file is replaced whole, so a reader sees one version of it)."""
    try:
        with open(_agent_path(state_dir, name), encoding="utf-8") as handle:
            return _history(json.load(handle))
    except FileNotFoundError:
        return _legacy_agents(state_dir).get(name, AgentHistory())
    except (OSError, ValueError):
        return AgentHistory()


_UNREADABLE = "_unreadable"  # set by _read_global when runtime.json exists but cannot be read


def _read_global(state_dir: str) -> dict[str, Any]:
    """runtime.json as a mapping; {} when there is none; {_UNREADABLE: why} when it cannot be read or parsed."""
    path = os.path.join(state_dir, FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        return {_UNREADABLE: f"{type(exc).__name__}: {exc}"}
    return data if isinstance(data, dict) else {_UNREADABLE: f"a JSON {type(data).__name__}, not an object"}


def _legacy_agents(state_dir: str) -> dict[str, AgentHistory]:
    """Agents recorded inside runtime.json by an earlier version (read, never written back there)."""
    raw = _read_global(state_dir).get("agents")
    return {n: _history(h) for n, h in raw.items()} if isinstance(raw, dict) else {}


def load_global(state_dir: str) -> RuntimeState:
    """The latch and the stand-down mark, without the agents."""
    data = _read_global(state_dir)
    if _UNREADABLE in data:
        # Fail closed: an emergency stop may be recorded in what cannot be read. Latched until cleared.
        since = _mtime(os.path.join(state_dir, FILE))
        why = f"{FILE} is unreadable ({data[_UNREADABLE]}); treated as latched until `orchestrator emergency-clear`"
        return RuntimeState(latch=Latch(since=since, reason=why))
    latch_raw = data.get("latch")
    latch = None
    if isinstance(latch_raw, dict):
        try:
            latch = Latch(since=float(latch_raw.get("since", 0.0)), reason=str(latch_raw.get("reason", "")))
        except (TypeError, ValueError):
            latch = Latch(since=0.0, reason=f"a latch recorded in a form this version cannot read: {latch_raw!r}")
    elif latch_raw is not None:
        latch = Latch(since=0.0, reason=f"a latch recorded in a form this version cannot read: {latch_raw!r}")
    stand_down = data.get("stand_down")
    extra = {k: v for k, v in data.items() if k not in ("latch", "stand_down", "format")}
    return RuntimeState(latch=latch, stand_down=stand_down if isinstance(stand_down, int) else None, extra=extra)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return time.time()


def load(state_dir: str) -> RuntimeState:
    state = load_global(state_dir)
    agents = _legacy_agents(state_dir)
    directory = os.path.join(state_dir, AGENTS_DIR)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(directory):
            if entry.endswith(_SUFFIX) and not entry.startswith("."):
                agents[entry.removesuffix(_SUFFIX)] = load_agent(state_dir, entry.removesuffix(_SUFFIX))
    state.agents = agents
    return state


def read_exit(state_dir: str, process: str, pid: int) -> tuple[float, float, int | None] | None:
    """(start, stop, exit status) of process `group:name` as supervisord's extension noted its exit with
    `pid`; None when there is no such note (another pid, an older supervisord, an unwritable disk)."""
    try:
        with open(os.path.join(state_dir, AGENTS_DIR, EXITS_DIR, process), encoding="utf-8") as handle:
            noted_pid, start, stop, status = handle.read(200).split()
        if int(noted_pid) != pid:
            return None
        return float(start), float(stop), None if int(status) == -1 else int(status)
    except (OSError, ValueError):
        return None


def save_agent(state_dir: str, name: str, history: AgentHistory) -> None:
    os.makedirs(os.path.join(state_dir, AGENTS_DIR), exist_ok=True)
    data = {**asdict(history), "failures": list(history.failures)}
    write_atomically(_agent_path(state_dir, name), json.dumps(data, indent=1))


def _save_global(state_dir: str, state: RuntimeState) -> None:
    data = {**state.extra, "format": 2, "latch": asdict(state.latch) if state.latch else None,
            "stand_down": state.stand_down}
    write_atomically(os.path.join(state_dir, FILE), json.dumps(data, indent=1))


class LockTimeout(OrchestratorError):
    """Another process held the runtime lock for longer than the caller could wait."""


@contextmanager
def locked(state_dir: str, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the runtime lock (every read-modify-write of the runtime files holds it); at most `timeout` s of waiting."""
    try:
        with exclusive(os.path.join(state_dir, FILE + ".lock"), timeout=timeout):
            yield
    except LockBusy:
        raise LockTimeout(f"the runtime state in {state_dir} stayed locked by another process for {timeout:g}s") from None


@contextmanager
def changing(state_dir: str, *, timeout: float | None = None) -> Iterator[RuntimeState]:
    """Read, let the caller change, and write back the runtime state, holding its lock throughout.

    Only what changed is written: the agents whose history differs, and runtime.json when
    the latch or the stand-down mark did.
    """
    with locked(state_dir, timeout=timeout):
        state = load(state_dir)
        before_agents = dict(state.agents)
        before = (state.latch, state.stand_down)
        yield state
        for name, history in state.agents.items():
            if before_agents.get(name) != history:
                save_agent(state_dir, name, history)
        if (state.latch, state.stand_down) != before:
            _save_global(state_dir, state)


def update_agent(state_dir: str, name: str,
                 change: Callable[[AgentHistory, RuntimeState], AgentHistory | None]) -> AgentHistory:
    """Change one agent's history under the lock: `change(history, global_state)` returns the new one (None: no change).

    The restart keeper's path: it reads and writes one small file, not every agent's.
    """
    with locked(state_dir):
        current = load_agent(state_dir, name)
        new = change(current, load_global(state_dir))
        if new is None or new == current:
            return current
        save_agent(state_dir, name, new)
        return new


def forget(state_dir: str, names: list[str]) -> None:
    """Drop the histories of agents that no longer exist."""
    with locked(state_dir):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_agent_path(state_dir, name))
