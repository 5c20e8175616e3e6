"""Drift observed and put back: what was changed outside orchestrator since the last apply.

Owned here: gathering what `core.drift.detect` decides from (the live
version and the hashes it recorded, the rendered files on disk, supervisord's
processes and configuration digests, the runtime state) for plan, apply and
status; and apply's part of putting drift back that no plan action carries
out: rewriting the rendered files from the version, forgetting an operator's
stop of an agent started outside orchestrator, stopping again what runs under
the emergency latch, and keeping the digests of what supervisord holds once
apply has set its groups up. The rest is the plan's: a group added outside
is removed, a removed agent added, a stopped one started, an agent whose
configuration supervisord holds edited replaced.

Called by apply (compute, converge) and the status command.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from orchestrator.core.drift import Drift, detect as detect_drift, program_file
from orchestrator.core.events import Emit, Note, ignore
from orchestrator.core.names import is_internal
from orchestrator.core.processes import ProcessInfo
from orchestrator.state import rendered, runtime
from orchestrator.state.history import Version
from orchestrator.supervisord.client import Client, NotRunningError


def detect(state_dir: str, version: Version | None, client: Client, *,
           groups: Mapping[str, tuple[ProcessInfo, ...]] | None = None, running: bool = True,
           wanted: set[str] | None = None, live: runtime.RuntimeState | None = None) -> tuple[Drift, ...]:
    """The drift since `version` (the live one) was applied; () before anything was applied.

    `groups`: supervisord's processes by group when the caller has them (`running` False: it does not answer);
    `live`: the runtime state when the caller has read it."""
    if version is None:
        return ()
    held: dict[str, str] | None = None
    standing_down = False
    live = runtime.load(state_dir) if live is None else live
    try:
        if running and groups is None:
            grouped: dict[str, list[ProcessInfo]] = {}
            for process in client.processes():
                grouped.setdefault(process.group, []).append(process)
            groups = {g: tuple(p) for g, p in grouped.items()}
        if running:
            held = client.config_digests()
            standing_down = live.stand_down is not None and live.stand_down == client.pid()
    except NotRunningError:
        running = False
    return detect_drift(version=version.number, agents=version.agents, recorded=rendered.recorded(version.path),
                        on_disk=rendered.on_disk(state_dir), groups=groups if running else None, held=held,
                        applied=rendered.held(state_dir), histories=live.agents, latched=live.latch is not None,
                        standing_down=standing_down, wanted=wanted)


def as_applied(programs: Mapping[str, str], version: Version, found: tuple[Drift, ...]) -> dict[str, str]:
    """The live version's program sections as it rendered them: a file edited by hand is taken to be `programs`'
    section (the manifests' rendering) when that has the hash the version recorded, so plan compares the manifests
    with what was applied, not with the edit (the edit is drift, put back by rewriting the file)."""
    live = dict(version.programs)
    recorded = rendered.recorded(version.path) or {}
    for item in found:
        name = item.agent
        # when the manifests render it differently from the version, the plan replaces it anyway
        if (item.kind == "file" and name in programs and name in version.agents
                and recorded.get(program_file(name)) == rendered.digest(programs[name])):
            live[name] = programs[name]
    return live


def put_back_files(state_dir: str, version: Version, found: tuple[Drift, ...], files: Mapping[str, str],
                   *, emit: Emit = ignore) -> list[str]:
    """Rewrite (or delete) the live version's rendered files that drifted, from `files`, a rendering of the
    manifests, where it renders them as the version did; the files left as they are, each said: the manifests
    render it differently, so the plan replaces what it configures from a new version's files."""
    paths = [d.subject for d in found if d.kind == "file"]
    if not paths:
        return []
    _, left = rendered.put_back(state_dir, version.path, paths, files, rendered.recorded(version.path) or {})
    for rel in left:
        emit(Note(f"  {rel} is left as edited in version {version.number}: the manifests now render it differently, "
                  "and supervisord reads the new version's file"))
    return left


def put_back_records(state_dir: str, found: tuple[Drift, ...], *, latched: bool) -> tuple[list[str], list[str]]:
    """Agents started outside orchestrator: (the ones whose operator stop is forgotten, so their restart policy
    applies again; the ones to stop again because the emergency stop is latched)."""
    started = [d.agent for d in found if d.kind == "started"]
    if latched:
        return [], started
    if started:
        with runtime.changing(state_dir) as live:
            for name in started:
                live.agents[name] = live.agent(name).starting()
    return started, []


def keep_held(state_dir: str, client: Client, *, keep: Collection[str] = (), first: bool = False) -> None:
    """Note what supervisord holds for every agent group now, as what apply gave it; for the groups in `keep`
    (apply could not set them up) the digest noted before stays. `first`: only when nothing was noted yet (an
    apply with nothing to do, in a state directory from before the digests were kept)."""
    noted = rendered.held(state_dir)
    if first and noted is not None:
        return
    digests = client.config_digests()
    if digests is None:
        return
    before = noted or {}
    now = {g: d for g, d in digests.items() if not is_internal(g) and g not in keep}
    now.update({g: before[g] for g in keep if g in before and g in digests})
    if now != before:
        rendered.keep_held(state_dir, now)


def report(found: tuple[Drift, ...], *, ok: bool, left: Collection[str] = (), emit: Emit = ignore) -> None:
    """Say what apply put back of what was changed outside orchestrator (`left`: files it could not rewrite)."""
    items = [d for d in found if not (d.kind == "file" and d.subject in left)]
    if not items:
        return
    emit(Note("Put back what was changed outside orchestrator:" if ok
              else "What was changed outside orchestrator, put back as far as apply got (see below):"))
    for item in items:
        emit(Note(f"  {item.put_back()}"))
