"""The plan: what apply would change, as a value computed from what is desired and what is there.

Owned here: `plan(desired, programs, observed, last)`, a pure function that
returns immutable actions, and its text and JSON forms for `orchestrator plan`.

    add        the agent is new to supervisord
    remove     supervisord runs an agent the manifests no longer have
    replace    its supervisord configuration changed: it must restart (the fields say why)
    update     only orchestrator-side fields changed (probes, thresholds, dependencies...): no restart
    start      nothing changed, but it is not running
    unchanged  nothing to do; its process keeps its PID

and, beside the agents, `settings`: which of the settings a version keeps
(project, notifications, exporter; `model.kept_settings`) changed since the
live version. Such a change restarts no agent, but it is pending: apply
records a version, so the daemons that read the settings see it, and
restarts the exporter when its own program changed.

Whether the supervisord side changed is decided on the rendered program
section (comments aside), so a change that renders the same is never a
restart. Called by apply (which consumes a plan) and by the cli.

A plan carries the `fingerprint` of exactly what it was computed from (see
`fingerprint`): apply recomputes the plan under the state directory's lock
and carries out the plan the operator saw only if the fingerprint still
matches; otherwise the new plan is shown again. The fingerprint covers what
decides actions (the desired agents and their rendered sections and hashes,
the live version's, and per agent whether its processes are up or down and
which configuration supervisord holds for it), never what does not (pids,
uptimes, exit statuses).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.core.drift import Drift
from orchestrator.core.names import CONFIG_MARKER, is_internal
from orchestrator.core.processes import DOWN_STATES, ProcessInfo
from orchestrator.core.model import Agent, ManifestSet, kept_settings, to_plain

# an agent's launch file's digest (supervisord.launching), and the section's own hash, which changes with it
_LAUNCH_FILE = re.compile(r"-[0-9a-f]{16}\.launch|" + CONFIG_MARKER + r"=[\"']?[0-9a-f]{16}")
Kind = Literal["add", "remove", "replace", "update", "start", "unchanged"]
KINDS: tuple[Kind, ...] = ("remove", "replace", "add", "update", "start", "unchanged")
CHANGES = frozenset({"add", "remove", "replace", "update"})  # these record a new version


@dataclass(frozen=True)
class Observed:
    """What supervisord reports: whether it answers, and each group's processes."""

    running: bool
    groups: Mapping[str, tuple[ProcessInfo, ...]] = field(default_factory=dict)
    configs: Mapping[str, str] = field(default_factory=dict)   # group -> the configuration hash supervisord holds for it

    @classmethod
    def of(cls, processes: list[ProcessInfo], configs: Mapping[str, str] | None = None) -> Observed:
        groups: dict[str, list[ProcessInfo]] = {}
        for process in processes:
            groups.setdefault(process.group, []).append(process)
        return cls(running=True, groups={g: tuple(p) for g, p in groups.items()}, configs=configs or {})


@dataclass(frozen=True)
class Action:
    kind: Kind
    agent: str
    fields: tuple[str, ...] = ()
    reason: str = ""
    outside: bool = False   # a replace that puts back drift (core.drift): the live version stays, none is recorded

    def as_dict(self) -> dict[str, object]:
        return {"action": self.kind, "agent": self.agent, "fields": list(self.fields), "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    supervisord_running: bool = True
    fingerprint: str = ""   # of the desired and observed state the plan was computed from; see `fingerprint`
    settings: tuple[str, ...] = ()   # the kept settings that changed since the live version (no agent restarts)
    drift: tuple[Drift, ...] = ()    # what was changed outside orchestrator since the last apply (core.drift)
    edited: tuple[str, ...] = ()     # manifest files whose text differs from the live version's copy (comments too)

    def of_kind(self, *kinds: Kind) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind in kinds)

    def names(self, *kinds: Kind) -> tuple[str, ...]:
        return tuple(a.agent for a in self.of_kind(*kinds))

    @property
    def pending(self) -> bool:
        """Something to do: exit status 2 for `orchestrator plan`."""
        return bool(self.settings or self.drift or self.edited) or any(a.kind != "unchanged" for a in self.actions)

    @property
    def changes_config(self) -> bool:
        return bool(self.settings or self.edited) or any(a.kind in CHANGES and not a.outside for a in self.actions)

    @property
    def text_only(self) -> bool:
        """Manifest files were edited, and no change of an agent or a setting came of it (a comment, formatting)."""
        return bool(self.edited) and not self.settings and all(a.kind == "unchanged" for a in self.actions)

    def summary(self) -> str:
        counts = [f"{len(self.of_kind(k))} to {k}" if k != "unchanged" else f"{len(self.of_kind(k))} unchanged"
                  for k in KINDS if self.of_kind(k)]
        if self.settings:
            counts.append(f"settings changed ({', '.join(self.settings)})")
        if self.drift:
            counts.append(f"{len(self.drift)} changed outside orchestrator")
        if self.text_only:
            counts.append(f"{len(self.edited)} manifest file{'s' if len(self.edited) != 1 else ''} edited")
        return ", ".join(counts) or "no agents"

    def to_json(self) -> str:
        return json.dumps({"pending": self.pending, "supervisord_running": self.supervisord_running,
                           "summary": self.summary(), "fingerprint": self.fingerprint,
                           "settings": list(self.settings), "drift": [d.as_dict() for d in self.drift],
                           "edited": list(self.edited),
                           "actions": [a.as_dict() for a in self.actions]}, indent=2)


def _significant(program: str) -> str:
    """A rendered program section without its comments: what supervisord compares."""
    return "\n".join(line for line in program.splitlines() if line.strip() and not line.lstrip().startswith(";"))


def _down(state: str) -> bool:
    """A process the plan would start: stopped, exited, fatal, or backing off after a failed start."""
    return state in DOWN_STATES or state == "BACKOFF"


def _agent_fields(agent: Agent) -> dict[str, object]:
    """The fields of an agent the plan compares (where it was read from is not one)."""
    plain: dict[str, object] = to_plain(agent)
    plain.pop("source", None)
    return plain


def fingerprint(desired: ManifestSet, programs: Mapping[str, str], observed: Observed,
                last_agents: Mapping[str, Agent] | None, last_programs: Mapping[str, str] | None,
                *, hashes: Mapping[str, str] | None = None, last_settings: Mapping[str, object] | None = None,
                drift: tuple[Drift, ...] = (), edited: tuple[str, ...] = ()) -> str:
    """A stable hash of exactly what `plan` decides from, given the same arguments (the drift found included).

    Desired: each agent's fields (its source location aside), its rendered
    program section (comments aside) and its configuration hash. The live
    version: each agent's fields and rendered section. Observed: whether
    supervisord answers, each agent group's processes by name with whether
    each is up or down (the `start` rule), and the configuration hash
    supervisord holds for each desired agent. Internal groups (names starting
    with '_'), pids, uptimes, exit statuses and descriptions are left out: a
    restart of the listener or a clock tick is not a change of plan. A change
    of a down process between stopped, exited, fatal and backing off is not
    either: the plan starts it all the same.
    """
    hashes = hashes or {}
    last_agents = last_agents or {}
    last_programs = last_programs or {}
    wanted = set(desired.names)
    state = {
        "desired": {a.name: {"fields": _agent_fields(a), "program": _significant(programs.get(a.name, "")),
                             "hash": hashes.get(a.name)} for a in desired.agents},
        "settings": kept_settings(desired),
        "edited": list(edited),
        "live": {"agents": {n: _agent_fields(a) for n, a in last_agents.items()},
                 "programs": {n: _significant(p) for n, p in last_programs.items()},
                 "settings": last_settings},
        "observed": {"running": observed.running,
                     "groups": {g: sorted([p.name, "down" if _down(p.state) else "up"] for p in processes)
                                for g, processes in observed.groups.items() if not g.startswith("_")},
                     "configs": {g: h for g, h in observed.configs.items() if g in wanted}},
        "drift": [[d.kind, d.subject, d.fix] for d in drift],
    }
    text = json.dumps(state, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _changed_fields(old: Agent, new: Agent) -> tuple[str, ...]:
    before, after = to_plain(old), to_plain(new)
    return tuple(k for k in after if k != "source" and before.get(k) != after.get(k))


def changed_settings(desired: ManifestSet, last_settings: Mapping[str, object] | None) -> tuple[str, ...]:
    """The kept settings whose value differs from the live version's (none without a live version)."""
    if last_settings is None:
        return ()
    kept = kept_settings(desired)

    def same(key: str) -> bool:
        return json.dumps(kept[key], sort_keys=True) == json.dumps(last_settings.get(key), sort_keys=True)

    return tuple(key for key in sorted(kept) if not same(key))


def plan(desired: ManifestSet, programs: Mapping[str, str], observed: Observed,
         last_agents: Mapping[str, Agent] | None, last_programs: Mapping[str, str] | None,
         *, hashes: Mapping[str, str] | None = None, last_settings: Mapping[str, object] | None = None,
         drift: tuple[Drift, ...] = (), edited: tuple[str, ...] = ()) -> Plan:
    """The actions that make supervisord match `desired`.

    `edited`: the manifest files whose text differs from the live version's stored copy; alone (a comment, the
    formatting) they restart nothing, but apply records them as a version, so history holds what is on disk.

    `programs` are the desired rendered program sections by agent, `hashes`
    their configuration hashes; `last_*` what the live version recorded (None
    when nothing was applied yet), `last_settings` what it kept of the settings
    (None: nothing applied yet). A group whose configuration hash in
    supervisord differs from the desired one is replaced, whatever the live
    version says: an apply was interrupted between recording the version and
    replacing the agent. Internal groups (names starting with '_') are not
    agents and never planned. `drift` (core.drift) is carried in the plan
    and makes it pending; an agent whose configuration supervisord holds as
    edited outside orchestrator (drift of kind `config`) is replaced.
    """
    hashes = hashes or {}
    last_agents = last_agents or {}
    last_programs = last_programs or {}
    actions: list[Action] = []
    for agent in desired.agents:
        name = agent.name
        processes = observed.groups.get(name)
        if processes is None:
            reason = "new agent" if name not in last_agents else "not known to supervisord"
            if not observed.running:
                reason = "supervisord is not running"
            actions.append(Action("add", name, reason=reason))
            continue
        previous = last_agents.get(name)
        if previous is None or name not in last_programs:
            actions.append(Action("replace", name, reason="not applied by orchestrator before"))
            continue
        fields = _changed_fields(previous, agent)
        if _significant(last_programs[name]) != _significant(programs[name]):
            if not fields and _LAUNCH_FILE.sub("", last_programs[name]) == _LAUNCH_FILE.sub("", programs[name]):
                # nothing of the manifest changed, yet its launch file did: what it holds beyond the manifest, a
                # secret's value (said, never shown)
                fields = ("env (a secret's value)",)
            actions.append(Action("replace", name, fields or ("supervisord settings",), "configuration changed"))
            continue
        if any(d.kind == "config" and d.agent == name for d in drift):
            actions.append(Action("replace", name, ("supervisord settings",), "configuration changed outside orchestrator",
                                  outside=True))
            continue
        held = observed.configs.get(name)
        if held is not None and name in hashes and held != hashes[name]:
            actions.append(Action("replace", name, ("supervisord settings",), "running an older configuration"))
            continue
        if fields:
            actions.append(Action("update", name, fields, "no restart needed"))
            continue
        down = [p for p in processes if _down(p.state)]
        if down:
            states = sorted({p.state for p in down})
            actions.append(Action("start", name, reason=f"{', '.join(states).lower()}"))
            continue
        actions.append(Action("unchanged", name))
    wanted = set(desired.names)
    for group in sorted(observed.groups):
        if group not in wanted and not is_internal(group):
            actions.append(Action("remove", group, reason="no longer in the manifests"))
    order = {k: i for i, k in enumerate(KINDS)}
    return Plan(tuple(sorted(actions, key=lambda a: (order[a.kind], a.agent))), supervisord_running=observed.running,
                fingerprint=fingerprint(desired, programs, observed, last_agents, last_programs, hashes=hashes,
                                        last_settings=last_settings, drift=drift, edited=edited),
                settings=changed_settings(desired, last_settings) if last_agents else (), drift=drift,
                edited=edited if last_agents else ())


_SYMBOLS = {"add": ("+", "green"), "remove": ("-", "red"), "replace": ("-/+", "yellow"), "update": ("~", "cyan"),
            "start": (">", "green"), "unchanged": (" ", None)}


def to_lines(result: Plan) -> list[tuple[str, str | None]]:
    """The plan as (line, color) pairs, like `terraform plan`; unchanged agents are counted, not listed."""
    lines: list[tuple[str, str | None]] = []
    if not result.supervisord_running:
        lines.append(("supervisord is not running: `orchestrator up` starts it and applies.", "yellow"))
    if result.drift:
        lines.append(("Drift (changed outside orchestrator):", "magenta"))
        lines.extend((f"    ! {d.line()}", "magenta") for d in result.drift)
    if result.text_only:
        lines.append((f"    ~ text of {', '.join(result.edited)}: recorded as a version (alone, nothing restarts)", "cyan"))
    if result.settings:
        lines.append((f"    ~ settings ({', '.join(result.settings)}): orchestrator.yaml changed; no agent restarts", "cyan"))
    for action in result.actions:
        if action.kind == "unchanged":
            continue
        symbol, color = _SYMBOLS[action.kind]
        detail = f" ({', '.join(action.fields)})" if action.fields else ""
        why = f": {action.reason}" if action.reason else ""
        lines.append((f"  {symbol:>3} {action.kind:<8} {action.agent}{detail}{why}", color))
    verdict = f"Plan: {result.summary()}." if result.pending else f"Nothing to do: {result.summary()}."
    lines.append((verdict, None))
    return lines
