"""Finding versions and comparing them: what `show`, `diff` and `rollback` read.

Owned here: turning what an operator types (a number, or a tag) into a stored version, with an error
naming the versions there are; gathering one side of a comparison, a stored version or the manifests on
disk, as a `core.versions.Side` (agents, rendered programs, kept settings, manifest files); and the
`Comparison` of two sides, whose judgements (the plan, the per-agent field changes, the file diff) are
core.versions' pure functions. Called by interfaces.commands.versions and operations.rollback.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.errors import StateError
from orchestrator.core.model import ManifestSet, kept_settings
from orchestrator.core.plan import Plan
from orchestrator.core.versions import AgentChange, FileDiff, Side, agent_changes, between, file_diffs
from orchestrator.state.history import History, Version, read_manifest_files

DISK = "disk"   # the label of the manifests on disk in a comparison


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 5 -> '1-3, 5'."""
    parts: list[str] = []
    start = prev = None
    for n in [*numbers, None]:
        if n is not None and prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return ", ".join(parts)


def known(history: History) -> str:
    """The versions there are (and their tags), for an error message."""
    numbers = history.numbers()
    if not numbers:
        return "there are no versions yet (apply or up records one)"
    tags = history.tags()
    named = f"; tags: {', '.join(f'{t}={n}' for t, n in sorted(tags.items()))}" if tags else ""
    return f"the versions are {_ranges(numbers)}{named}"


def resolve(history: History, ref: str) -> Version:
    """The version `ref` names: its number (`3`, `0003`, `v3`) or a tag."""
    text = ref.strip()
    digits = text[1:] if text[:1] in ("v", "V") and text[1:].isdigit() else text
    if digits.isdigit():
        number = int(digits)
    else:
        tagged = history.tags().get(text)
        if tagged is None:
            raise StateError(f"no version or tag {ref!r}: {known(history)}")
        number = tagged
    if number not in history.numbers():
        raise StateError(f"no version {number}: {known(history)}")
    return history.get(number)


def live(history: History) -> Version:
    version = history.current()
    if version is None:
        raise StateError(f"no live version: {known(history)}")
    return version


def previous(history: History, version: Version) -> Version:
    """The version before `version` (the newest stored one with a smaller number)."""
    earlier = [n for n in history.numbers() if n < version.number]
    if not earlier:
        raise StateError(f"no version before {version.number}: {known(history)}")
    return history.get(earlier[-1])


def version_side(history: History, version: Version) -> Side:
    return Side(label=f"v{version.number}", agents=version.agents, programs=version.programs,
                settings=history.settings(version), files=history.stored_files(version))


def disk_side(manifests: ManifestSet) -> Side:
    """The manifests on disk (loaded and valid) as they would be applied."""
    from orchestrator.supervisord import render   # jinja2: only when the disk is compared (history and show need none)

    rendering = render.render(manifests)
    return Side(label=DISK, agents={a.name: a for a in manifests.agents},
                programs={a.name: rendering.program(a.name) for a in manifests.agents},
                settings=kept_settings(manifests), files=read_manifest_files(manifests.manifests_dir))


@dataclass(frozen=True)
class Comparison:
    old: Side
    new: Side
    plan: Plan                        # what going from old to new would do (core.versions.between)
    agents: tuple[AgentChange, ...]
    files: tuple[FileDiff, ...]

    @property
    def same(self) -> bool:
        return not self.agents and not self.files and not self.plan.settings

    def as_dict(self) -> dict[str, object]:
        return {"from": self.old.label, "to": self.new.label, "same": self.same,
                "agents": [a.as_dict() for a in self.agents], "settings": list(self.plan.settings),
                "files": [f.as_dict() for f in self.files]}


def compare(old: Side, new: Side) -> Comparison:
    result = between(old, new)
    return Comparison(old=old, new=new, plan=result, agents=agent_changes(old, new, result), files=file_diffs(old, new))
