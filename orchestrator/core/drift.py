"""Drift: what was changed outside orchestrator since the last apply, as a value.

Owned here: `detect`, a pure function from what the live version recorded,
what supervisord holds and runs, what the runtime state says the operator
and the restart keeper did, and what the rendered files on disk hash to,
to a tuple of `Drift` items, each saying how apply puts it back:

    file      a rendered file of the live version (supervisord.conf, programs/NAME.conf)
              was edited, deleted or added by hand           -> rewritten from the version, or deleted
    config    supervisord holds for an agent a configuration other than the one apply gave
              it (an edited file loaded with `supervisorctl update`)   -> the agent is replaced
    added     supervisord runs a group the live version does not declare -> stopped and removed
    removed   a declared agent is missing from supervisord (`supervisorctl remove`) -> added and started
    stopped   an agent is STOPPED and nobody in orchestrator stopped it (`supervisorctl stop`) -> started
    started   an agent the operator stopped through orchestrator runs again (`supervisorctl start`)
              -> kept running, the operator's stop forgotten; under the emergency latch, stopped again

Not drift: an agent stopped through orchestrator (stop, stop-all, down,
emergency-stop, the keeper's `on_limit: stop`), and whatever the restart
keeper handles (an exit or a crash, a pending restart, a given-up agent, a
dependent waiting for its dependency): `status` reports those itself. A
manual-policy agent with a failed attempt recorded stays down by its policy,
so its STOPPED state is the keeper's record, not drift.

Called by operations.drift, for plan, apply and status. Standard library only, no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from orchestrator.core.model import Agent
from orchestrator.core.names import PROGRAMS_DIR, is_internal
from orchestrator.core.policies import AgentHistory
from orchestrator.core.processes import STOPPED, ProcessInfo, UP_STATES

DriftKind = Literal["file", "config", "added", "removed", "stopped", "started"]
KINDS: tuple[DriftKind, ...] = ("file", "config", "added", "removed", "stopped", "started")
_ALIVE = UP_STATES | {"BACKOFF"}   # a process supervisord is starting or runs


@dataclass(frozen=True)
class Drift:
    kind: DriftKind
    subject: str        # the agent or group, or the file (relative to the version) for kind `file`
    detail: str         # what changed, in words
    fix: str            # what apply does about it, in words
    agent: str = ""     # the agent concerned ('' for supervisord.conf)
    done: str = ""      # what apply did about it, in words (said once it has)

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "agent": self.agent, "detail": self.detail, "fix": self.fix}

    def line(self) -> str:
        return f"{self.subject}: {self.detail} ({self.fix})"

    def put_back(self) -> str:
        return f"{self.subject}: {self.detail}; {self.done or self.fix}"


def program_file(name: str) -> str:
    """The path of an agent's rendered program file, relative to a version (as `Rendering.files` names it)."""
    return f"{PROGRAMS_DIR}/{name}.conf"


def _agent_of(path: str) -> str:
    prefix = PROGRAMS_DIR + "/"
    return path[len(prefix):].removesuffix(".conf") if path.startswith(prefix) else ""


def _files(version: int, recorded: Mapping[str, str], on_disk: Mapping[str, str]) -> list[Drift]:
    found = []
    for path in sorted(set(recorded) | set(on_disk)):
        agent = _agent_of(path)
        if path not in on_disk:
            found.append(Drift("file", path, f"deleted since version {version} was applied",
                               f"apply writes it again from version {version}", agent, f"written again from version {version}"))
        elif path not in recorded:
            found.append(Drift("file", path, f"added by hand; version {version} has no such file", "apply deletes it", agent,
                               "deleted"))
        elif on_disk[path] != recorded[path]:
            found.append(Drift("file", path, f"edited since version {version} was applied",
                               f"apply rewrites it from version {version}", agent, f"rewritten from version {version}"))
    return found


def _laid_off(history: AgentHistory, agent: Agent | None) -> bool:
    """Down because someone in orchestrator decided so: the operator, or the restart keeper."""
    return (history.stopped or history.given_up or history.next_restart_at is not None or bool(history.waiting_for)
            or (agent is not None and agent.restart.policy == "manual" and bool(history.failures)))


def detect(*, version: int, agents: Mapping[str, Agent], recorded: Mapping[str, str] | None,
           on_disk: Mapping[str, str], groups: Mapping[str, tuple[ProcessInfo, ...]] | None,
           held: Mapping[str, str] | None, applied: Mapping[str, str] | None,
           histories: Mapping[str, AgentHistory], latched: bool = False, standing_down: bool = False,
           wanted: Collection[str] | None = None) -> tuple[Drift, ...]:
    """What changed outside orchestrator since live version `version` was applied.

    `agents`: the live version's agents. `recorded`: the hash of each file it rendered, as recorded with it
    (None: recorded before hashes were kept, so edits cannot be told); `on_disk`: the hashes of the files there
    now (supervisord.conf and programs/*.conf). `groups`: supervisord's processes by group (None: supervisord does
    not answer). `held`: the digest of each group's configuration as supervisord holds it now, `applied`: as it
    held it when apply last set the group up (either None: unknown). `histories`: the runtime state's agents;
    `latched`, `standing_down`: the emergency latch and down's stand-down mark. `wanted`: the agents apply
    will run (the manifests'; default the live version's), which decides the fix said for added and removed groups.
    """
    wanted = set(agents if wanted is None else wanted)
    found = _files(version, recorded, on_disk) if recorded is not None else []
    if groups is None:
        return tuple(found)
    for group in sorted(groups):
        if is_internal(group) or group in agents:
            continue
        fix, done = (("apply replaces it with the manifests' agent", "replaced with the manifests' agent") if group in wanted
                     else ("apply stops and removes it", "stopped and removed"))
        found.append(Drift("added", group, f"supervisord runs it, but version {version} does not declare it", fix, group,
                           done))
    for name in sorted(agents):
        processes = groups.get(name)
        if processes is None:
            fix, done = (("apply adds it back and starts it", "added back and started") if name in wanted
                         else ("nothing: the manifests no longer declare it", "left out: the manifests no longer declare it"))
            found.append(Drift("removed", name, "declared, but missing from supervisord (removed outside orchestrator)",
                               fix, name, done))
            continue
        if held is not None and applied is not None and name in held and name in applied and held[name] != applied[name]:
            found.append(Drift("config", name, "supervisord holds a configuration for it that apply did not give it",
                               "apply restarts it with the live configuration", name,
                               "restarted with the live configuration"))
        history = histories.get(name, AgentHistory())
        alive = sorted(p.name for p in processes if p.state in _ALIVE)
        stopped = sorted(p.name for p in processes if p.state == STOPPED)
        if alive and latched:
            found.append(Drift("started", name, f"running ({', '.join(alive)}) while the emergency stop is latched",
                               "apply stops it again", name, "stopped again"))
        elif alive and history.stopped:
            found.append(Drift("started", name, f"running ({', '.join(alive)}), but it was stopped through orchestrator",
                               "apply keeps it running and forgets that stop, so its restart policy applies again", name,
                               "kept running; that stop is forgotten and its restart policy applies again"))
        elif stopped and not latched and not standing_down and not _laid_off(history, agents.get(name)):
            what = "stopped" if len(stopped) == len(processes) else f"{', '.join(stopped)} stopped"
            fix, done = (("apply starts it", "started") if name in wanted
                         else ("nothing: the manifests no longer declare it", "removed with it"))
            found.append(Drift("stopped", name, f"{what} outside orchestrator", fix, name, done))
    return tuple(found)

