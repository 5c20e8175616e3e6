"""apply: make the running system match the manifests, changing only what changed.

Owned here: carrying out a `Plan` against supervisord, in supervisorctl
update's safe order (removed, then changed, then added), then starting what
should run through the `sequencer`. The caller computes a plan (`compute`),
shows it, and hands it to `apply`, which carries out that plan and no other.
Under the state directory's lock:

    render and plan again -> the fingerprint differs from the plan shown? ask `confirm`
                             (the plan shown, the new plan): carry out the new one, or
                             raise PlanChangedError, touching nothing
      -> archive the live version in STATE/backups (operations.backups; a failure is a note, never fatal)
      -> record a version (atomic swap of `current`) -> reloadConfig
      -> stop and remove removed agents, dependents first (a group that fails to stop is not removed)
      -> replace changed agents: stop, remove, add (nothing else restarts: each agent is its own group)
      -> add new agents
      -> start every agent that should run, each once its dependencies are ready
      -> mark the version applied or failed

Unchanged agents are never touched and keep their PID. Called by the cli
(apply, and up through `converge`) with a valid manifest set; rollback
(operations.rollback) and, later, a file watcher call `apply` with the plan they
computed: rollback is apply of an older version's stored manifests, which load
as the live set did (see ManifestSet.project_dir), so only what differs restarts.
Each version recorded carries the semver of the plan carried out (core.versions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from orchestrator.core.events import Emit, Note, StopEvent, ignore
from orchestrator.core.names import is_internal
from orchestrator.state import runtime
from orchestrator.host import controls
from orchestrator.supervisord import launching, render
from orchestrator.supervisord.client import Client, NotRunningError
from orchestrator.core.errors import OrchestratorError, RenderError, not_running_message
from orchestrator.state.history import LOCK_TIMEOUT, History, Version, read_manifest_files
from orchestrator.core.model import Agent, ManifestSet
from orchestrator.core.plan import Observed, Plan, plan
from orchestrator.operations import backups
from orchestrator.core.versions import next_semver
from orchestrator.operations import drift
from orchestrator.operations.sequencer import Result, Sequencer
from orchestrator.supervisord.reports import report_removed
from orchestrator.operations.stopping import stop_in_order

Confirm = Callable[[Plan, Plan], bool]
"""Asked by apply, under its lock, when the plan changed since it was shown: (the plan shown, the new
plan) -> whether to carry out the new plan. The interface shows the new plan and asks again (or, told
not to ask, says that the plan changed and returns True)."""


class PlanChangedError(OrchestratorError):
    """The plan changed between the plan shown and apply's lock, and the new one was not confirmed.

    Nothing was touched. `shown` is the plan the caller handed to apply, `plan` the one it would carry out now.
    """

    def __init__(self, shown: Plan, plan: Plan) -> None:
        super().__init__("the plan changed since it was shown (the manifests, the live version or the running agents changed); "
                         "nothing was done: review the new plan and apply again")
        self.shown = shown
        self.plan = plan


class ApplyError(OrchestratorError):
    """apply could not bring every agent up; `report` says which and why."""

    def __init__(self, message: str, report: ApplyReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ApplyReport:
    plan: Plan                      # the plan carried out
    replanned: bool = False         # it is not the plan shown: that one changed under the lock, and `confirm` accepted this one
    version: Version | None = None
    start: Result | None = None
    stop_failures: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.stop_failures and (self.start is None or self.start.ok)


def client_for(manifests: ManifestSet, *, timeout: float = 10.0) -> Client:
    return Client(render.socket_path(manifests), timeout=timeout)


def observe(client: Client) -> Observed:
    try:
        return Observed.of(client.processes(), client.config_hashes())
    except NotRunningError:
        return Observed(running=False)


def _change_live_controls(manifests: ManifestSet, updated: Iterable[str], previous: Version | None, client: Client,
                          emit: Emit) -> None:
    """Niceness, affinity and cgroup limits an update changed, set on the agent's running processes (the same
    PIDs: no restart). Its controls file, which the next start reads, is already written (history.record)."""
    before = previous.agents if previous is not None else {}
    changed = [a for a in manifests.agents if a.name in set(updated) and a.name in before
               and launching.controls(before[a.name]) != launching.controls(a)]
    if not changed:
        return
    running = client.processes()
    for agent in changed:
        pids = [p.pid for p in running if p.group == agent.name and p.pid]
        problems = controls.apply_live(launching.scope(manifests.state_dir), agent.name, launching.controls(agent), pids)
        wanted = ", ".join(f"{k} {v}" for k, v in sorted(launching.controls(agent).items())) or "none"
        emit(Note(f"{agent.name}: controls changed on its running processes ({wanted})"
                  + (f"; not all of them: {'; '.join(problems)}" if problems else "")))


def compute(manifests: ManifestSet, client: Client) -> tuple[Plan, render.Rendering]:
    """The plan for `manifests` against what supervisord runs now and the live version."""
    rendering = render.render(manifests)
    history = History(manifests.state_dir)
    current = history.current()
    programs = {a.name: rendering.program(a.name) for a in manifests.agents}
    observed = observe(client)
    found = drift.detect(manifests.state_dir, current, client, groups=observed.groups, running=observed.running,
                         wanted=set(manifests.names))
    edited: tuple[str, ...] = ()
    if current is not None:
        on_disk, stored = read_manifest_files(manifests.manifests_dir), history.stored_files(current)
        edited = tuple(sorted(rel for rel in set(on_disk) | set(stored) if on_disk.get(rel) != stored.get(rel)))
    return (plan(manifests, programs, observed, current.agents if current else None,
                 drift.as_applied(programs, current, found) if current else None, hashes=rendering.hashes,
                 last_settings=history.settings(current) if current else None, drift=found, edited=edited), rendering)


def apply(manifests: ManifestSet, shown: Plan, *, confirm: Confirm | None = None, message: str = "",
          emit: Emit = ignore, client: Client | None = None, command: str = "apply",
          rollback_of: int | None = None,
          lock_timeout: float | None = LOCK_TIMEOUT) -> ApplyReport:
    """Carry out `shown`, the plan computed (by `compute`) for `manifests` and shown to the operator.

    Under the apply lock the plan is computed again; when its fingerprint
    differs from `shown`'s, the new plan is carried out only if `confirm`
    accepts it, else PlanChangedError is raised and nothing is touched
    (without `confirm`, always). Raises ApplyError unless every agent ends ready.
    `command` is recorded with the version (see converge); `rollback_of`: this apply is a rollback to that
    version, recorded as a version even when nothing changes.
    Waits at most `lock_timeout` for another holder of the lock (saying whom it
    waits for), then raises LockHeldError naming it.
    """
    client = client or client_for(manifests)
    history = History(manifests.state_dir)
    with history.lock(timeout=lock_timeout, say=lambda line: emit(Note(line))):
        if not client.is_running():
            raise NotRunningError(not_running_message(manifests.state_dir))
        return converge(manifests, client, history, shown=shown, confirm=confirm, message=message, emit=emit,
                        command=command, rollback_of=rollback_of)


def converge(manifests: ManifestSet, client: Client, history: History, *, shown: Plan | None = None,
             confirm: Confirm | None = None, message: str = "", emit: Emit = ignore, command: str = "apply",
             rollback_of: int | None = None) -> ApplyReport:
    """apply's work, for a caller that holds the state directory's lock and knows supervisord runs.

    With `shown`, the plan computed here must have its fingerprint, or `confirm` accept the new plan
    (see `apply`); without, the plan computed here is carried out (up, which shows no plan)."""
    result, rendering = compute(manifests, client)
    if rendering.problems:   # before anything changes: a launch without its secrets must not be written
        raise RenderError("cannot write the agents' launch files:\n  " + "\n  ".join(rendering.problems))
    replanned = shown is not None and result.fingerprint != shown.fingerprint
    if shown is not None and replanned and (confirm is None or not confirm(shown, result)):
        raise PlanChangedError(shown, result)
    report = ApplyReport(plan=result, replanned=replanned)
    if result.of_kind("add", "replace", "start"):
        runtime.refuse_if_latched(manifests.state_dir)
    edited = result.names("add", "replace", "update")
    if edited:  # a changed manifest clears a given-up agent
        with runtime.changing(manifests.state_dir) as live:
            for name in edited:
                live.agents[name] = live.agent(name).cleared()
    previous = history.current()
    left: list[str] = []
    if result.drift and previous is not None:  # the live version's files as it rendered them, before reloadConfig
        left = drift.put_back_files(manifests.state_dir, previous, result.drift, rendering.files, emit=emit)
    if result.changes_config or previous is None or rollback_of is not None:
        backups.before_record(history, previous, emit=emit)  # the version that stops being live, kept in STATE/backups
        semver = next_semver(previous.semver if previous else None, result, previous.agents if previous else None)
        report.version = history.record(manifests, rendering, message=message, command=command, semver=semver,
                                        rollback_of=rollback_of)
    version = report.version
    _change_live_controls(manifests, result.names("update"), previous, client, emit)
    if not result.pending:
        drift.keep_held(manifests.state_dir, client, first=True)
        if version is not None:
            history.mark(version, "applied")
        emit(Note("Nothing to do: every agent is unchanged and running."))
        return report
    added, changed, removed = client.reload_config()
    _refresh_internal(client, added, changed, removed, emit)
    old_deps = {n: a.depends_on for n, a in (previous.agents if previous else {}).items()}
    removing = result.names("remove")
    if removing or result.names("replace"):
        mark_stopping(manifests.state_dir, [*removing, *result.names("replace")])
    if removing:
        report.stop_failures.update(stop_in_order(client, removing, old_deps, emit=emit,
                                                  state_dir=manifests.state_dir))
        for name in removing:
            if name not in report.stop_failures:
                client.remove_group(name)
                emit(StopEvent(name, "removed"))
        report_removed(client, [n for n in removing if n not in report.stop_failures])
    replacing = result.names("replace")
    if replacing:
        deps = {a.name: a.depends_on for a in manifests.agents}
        report.stop_failures.update(stop_in_order(client, replacing, deps, emit=emit,
                                                  state_dir=manifests.state_dir))
        for name in replacing:
            if name not in report.stop_failures:
                client.remove_group(name)
                client.add_group(name)
    for name in result.names("add"):
        client.add_group(name)
    if not report.stop_failures:   # no agent runs from an older launch file: those (and their secrets) go
        history.prune_launches()
    _, stop_again = drift.put_back_records(manifests.state_dir, result.drift,
                                           latched=runtime.load_global(manifests.state_dir).latch is not None)
    if stop_again:
        report.stop_failures.update(stop_in_order(client, stop_again, {}, emit=emit,
                                                  state_dir=manifests.state_dir))
    drift.keep_held(manifests.state_dir, client, keep=set(report.stop_failures))
    to_start = set(result.names("add", "replace", "start")) - set(report.stop_failures)
    agents = {a.name: a for a in manifests.agents}
    verify = _running_dependencies(to_start, agents)
    if to_start:
        mark_starting(manifests.state_dir, to_start)
        sequencer = Sequencer(client, agents, state_dir=manifests.state_dir, progress=emit, cwd=manifests.project_dir)
        report.start = sequencer.run(to_start, verify=verify)
    live_version = history.current()
    if version is None and report.ok and live_version is not None and live_version.status != "applied":
        version = live_version  # an interrupted apply's version, finished now
    if version is not None:
        history.mark(version, "applied" if report.ok else "failed")
    drift.report(result.drift, ok=report.ok, left=left, emit=emit)
    if not report.ok:
        raise ApplyError(_failure_message(report), report)
    return report


def mark_starting(state_dir: str, names: Iterable[str]) -> None:
    """Agents about to be started on request are no longer stopped by the operator."""
    with runtime.changing(state_dir) as live:
        for name in names:
            live.agents[name] = live.agent(name).starting()


def mark_stopping(state_dir: str, names: Iterable[str]) -> None:
    """Agents being stopped on request: their pending restarts are cancelled and nothing restarts them."""
    with runtime.changing(state_dir) as live:
        for name in names:
            live.agents[name] = live.agent(name).stopping()


def _running_dependencies(to_start: set[str], agents: Mapping[str, Agent]) -> set[str]:
    """Dependencies (direct or not) of what starts, that are not started themselves: check they are ready first."""
    found: set[str] = set()
    pending = [d for n in to_start for d in agents[n].depends_on]
    while pending:
        dep = pending.pop()
        if dep not in found and dep not in to_start and dep in agents:
            found.add(dep)
            pending.extend(agents[dep].depends_on)
    return found


def _refresh_internal(client: Client, added: list[str], changed: list[str], removed: list[str],
                      emit: Emit) -> None:
    """orchestrator's own programs (names starting with '_') follow their configuration at once."""
    for name in removed:
        if is_internal(name):
            client.stop_group(name)
            client.remove_group(name)
    for name in changed:
        if is_internal(name):
            client.stop_group(name)
            client.remove_group(name)
            client.add_group(name)
            client.start_group(name)
            emit(Note(f"  {name}: restarted with its new configuration"))
    for name in added:
        if is_internal(name):
            client.add_group(name)
            client.start_group(name)


def _failure_message(report: ApplyReport) -> str:
    lines = []
    start = report.start
    for name, why in sorted(report.stop_failures.items()):
        lines.append(f"{name} could not be stopped: {why}")
    if start is not None:
        for outcome in start.failed:
            what = "is not ready" if outcome.verified_only else "did not become ready"
            lines.append(f"{outcome.agent} {what}: {outcome.detail}")
            if outcome.exitstatus is not None:
                lines.append(f"  exit status: {outcome.exitstatus}")
            if outcome.stderr:
                lines.append("  last lines of its stderr:")
                lines.extend(f"    {line}" for line in outcome.stderr.splitlines())
            if not outcome.verified_only and outcome.attempts > 1:
                lines.append(f"  after {outcome.attempts} attempts")
        if start.blocked:
            lines.append(f"not started: {', '.join(start.blocked)}")
    return "\n".join(lines)
