"""Versions as values: the semantic version of a change, what two versions differ by, which versions retention keeps.

Owned here, all pure:

    change_level(plan)     major (agents added or removed), minor (an agent restarts: a replace),
                           patch (nothing restarts: updates, settings, comments, or nothing at all)
    next_semver(prev, plan) the semantic version a change gets; the first version is 1.0.0
    between(old, new)      the plan of one version's agents against another's (core.plan's own
                           classification, as if every agent of `old` ran with its recorded configuration)
    agent_changes(...)     per agent: added, removed or changed, which fields old -> new, restart or update
    file_diffs(...)        the unified diff of two manifest sets' files (difflib)
    content_hash(files)    a hash of a version's stored manifests and rendered files
    to_prune(...)          the versions retention deletes: beyond the newest `keep`, never tagged ones,
                           the live one or the newest applied one

Called by apply and up (the semver of the version they record), history (hash, retention) and the
history, show, diff and rollback commands (through operations.compare).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from orchestrator.core.model import Agent, ManifestSet, Settings, to_plain
from orchestrator.core.plan import Kind, Observed, Plan, plan
from orchestrator.core.processes import ProcessInfo

Level = Literal["major", "minor", "patch"]
FIRST = "1.0.0"
SECRET_FIELDS = ("env",)   # their values are never shown in a summary (an `env('TOKEN')` resolves into them)
TAG_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")


def change_level(result: Plan, previous_agents: Collection[str] | None = None) -> Level:
    """How big the change `result` carries out is, for its semantic version.

    major: the set of agents changes (an agent added or removed). With `previous_agents` (the names of
    the version the change starts from), only a real change of that set counts: an agent supervisord lost
    by hand is planned as an add, but the versions hold the same agents. minor: an agent restarts (a
    replace). patch: nothing restarts (updates, settings, comments, or no change at all).
    """
    desired = set(result.names("add", "replace", "update", "start", "unchanged"))
    if previous_agents is not None:
        if desired != set(previous_agents):
            return "major"
    elif result.of_kind("add", "remove"):
        return "major"
    if result.of_kind("replace"):
        return "minor"
    return "patch"


def parse_semver(text: str) -> tuple[int, int, int] | None:
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text or "")
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def bump(previous: str | None, level: Level) -> str:
    """`previous` raised by `level` (a missing or unreadable previous counts as 1.0.0)."""
    major, minor, patch = parse_semver(previous or "") or (1, 0, 0)
    if level == "major":
        return f"{major + 1}.0.0"
    if level == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def next_semver(previous: str | None, result: Plan, previous_agents: Collection[str] | None) -> str:
    """The semantic version of the version that carries out `result`; 1.0.0 when there is no previous version
    (`previous_agents` None)."""
    if previous_agents is None:
        return FIRST
    return bump(previous, change_level(result, previous_agents))


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a version (or the manifests on disk) as agents, rendered programs, kept settings
    and manifest files."""

    label: str
    agents: Mapping[str, Agent]
    programs: Mapping[str, str]
    settings: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)


def between(old: Side, new: Side) -> Plan:
    """What carrying `new` out over `old` would do, classified as `core.plan` classifies an apply: as if every
    agent of `old` ran with its recorded configuration. Settings that differ are named in `settings`."""
    desired = ManifestSet(settings=Settings(), agents=tuple(new.agents[n] for n in sorted(new.agents)),
                          manifests_dir="", state_dir="")
    running = Observed(running=True, groups={
        name: (ProcessInfo(name=name, group=name, state="RUNNING", pid=0, start=0, now=0, exitstatus=0, spawnerr="",
                           description=""),) for name in old.agents})
    result = plan(desired, new.programs, running, old.agents, old.programs)
    settings = tuple(k for k in sorted(set(old.settings) | set(new.settings)) if old.settings.get(k) != new.settings.get(k))
    return replace(result, settings=settings, fingerprint="")


@dataclass(frozen=True)
class FieldChange:
    path: str          # dotted: `env.MODE`, `readiness.timeout`
    old: Any           # None: absent
    new: Any
    secret: bool = False   # the values are not to be shown (see SECRET_FIELDS)

    def as_dict(self) -> dict[str, Any]:
        if self.secret:
            return {"field": self.path, "old": None, "new": None, "hidden": True}
        return {"field": self.path, "old": self.old, "new": self.new}

    def text(self) -> str:
        if self.secret:
            what = "added" if self.old is None else "removed" if self.new is None else "changed"
            return f"{self.path}: {what} (value not shown)"
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() else value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def field_changes(old: Agent, new: Agent) -> tuple[FieldChange, ...]:
    """Every leaf field that differs between two versions of an agent (where it was read from aside)."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    _flatten({k: v for k, v in to_plain(old).items() if k != "source"}, "", before)
    _flatten({k: v for k, v in to_plain(new).items() if k != "source"}, "", after)
    changes = []
    for path in sorted(set(before) | set(after)):
        was, now = before.get(path), after.get(path)
        if was != now and not (was in (None, {}) and now in (None, {})):
            changes.append(FieldChange(path, was, now, secret=path.split(".")[0] in SECRET_FIELDS and "." in path))
    return tuple(changes)


ChangeKind = Literal["added", "removed", "changed"]
_EFFECT = {"add": "starts", "remove": "stops", "replace": "restarts", "update": "updated, no restart"}


@dataclass(frozen=True)
class AgentChange:
    agent: str
    change: ChangeKind
    action: Kind                 # core.plan's: add, remove, replace, update
    fields: tuple[FieldChange, ...] = ()
    why: tuple[str, ...] = ()    # the plan's field names (a replace with no field changed: supervisord settings)

    @property
    def restarts(self) -> bool:
        return self.action == "replace"

    @property
    def effect(self) -> str:
        return _EFFECT.get(self.action, self.action)

    def as_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "change": self.change, "action": self.action, "restart": self.restarts,
                "effect": self.effect, "fields": [f.as_dict() for f in self.fields], "plan_fields": list(self.why)}


def agent_changes(old: Side, new: Side, result: Plan | None = None) -> tuple[AgentChange, ...]:
    """Per agent that differs between `old` and `new`: what changed and whether it restarts (`result`: their plan,
    `between(old, new)` when not given)."""
    result = result or between(old, new)
    changes = []
    for action in result.actions:
        name = action.agent
        if action.kind == "add":
            changes.append(AgentChange(name, "added", "add"))
        elif action.kind == "remove":
            changes.append(AgentChange(name, "removed", "remove"))
        elif action.kind in ("replace", "update"):
            fields = field_changes(old.agents[name], new.agents[name]) if name in old.agents and name in new.agents else ()
            changes.append(AgentChange(name, "changed", action.kind, fields, action.fields))
    return tuple(sorted(changes, key=lambda c: c.agent))


@dataclass(frozen=True)
class FileDiff:
    path: str
    status: Literal["added", "removed", "changed"]
    lines: tuple[str, ...]    # the unified diff, without line ends

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status, "diff": list(self.lines)}


def _text(data: bytes) -> list[str]:
    return data.decode("utf-8", errors="replace").splitlines()


def file_diffs(old: Side, new: Side) -> tuple[FileDiff, ...]:
    """The unified diff of each manifest file that differs, by path (a missing side diffs against /dev/null)."""
    diffs = []
    for path in sorted(set(old.files) | set(new.files)):
        before, after = old.files.get(path), new.files.get(path)
        if before == after:
            continue
        status: Literal["added", "removed", "changed"] = "added" if before is None else "removed" if after is None else "changed"
        lines = difflib.unified_diff(_text(before or b""), _text(after or b""),
                                     fromfile=f"{old.label}/{path}" if before is not None else "/dev/null",
                                     tofile=f"{new.label}/{path}" if after is not None else "/dev/null", lineterm="")
        diffs.append(FileDiff(path, status, tuple(lines)))
    return tuple(diffs)


def content_hash(files: Mapping[str, bytes]) -> str:
    """A hash of a version's content (relative path -> bytes): its stored manifests and rendered files."""
    digest = hashlib.sha256()
    for path in sorted(files):
        data = files[path]
        digest.update(f"{path}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def to_prune(numbers: Sequence[int], *, keep: int, protected: Iterable[int]) -> list[int]:
    """The versions retention deletes, oldest first: all but the newest `keep`, except `protected` ones (tagged,
    the live one, the newest applied one)."""
    kept = set(sorted(numbers)[-keep:]) if keep > 0 else set()
    spared = kept | set(protected)
    return [n for n in sorted(numbers) if n not in spared]


def check_tag(name: str) -> str | None:
    """Why `name` cannot be a tag, or None. A tag names a version wherever a number does, so it is never a number."""
    if not TAG_PATTERN.match(name):
        return "a tag is a letter followed by up to 63 letters, digits, '.', '_' or '-'"
    return None
