"""rollback: an older version's manifests put back on disk, byte for byte, and applied as any manifests are.

Owned here: `prepare` (find the version, load and validate its stored manifests, compute the plan of
applying them against the running supervisord, and the diff of what is written onto disk), `carry_out`
(write the stored files over the manifests directory, each atomically, remove the manifest files the
version did not have, then `apply.apply` with the plan shown, recorded as a rollback of that version),
and what `apply --rollback-on-failure` needs: which changed agents failed, and the last applied version.

There is no special path: the files written are the operator's own text (comments, formatting), the
manifests directory then holds exactly what was applied then, and apply restarts only what differs from
what runs, so an agent unchanged between the two versions keeps its PID. A rollback restores
configuration, never data: what the agents wrote (positions, files, databases) stays as it is.

Called by interfaces.commands.versions (rollback) and interfaces.commands.changes (apply).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.core.errors import LockHeldError, ManifestError, StateError, display_path, not_running_message
from orchestrator.core.events import Emit, Note, ignore
from orchestrator.core.model import ManifestSet
from orchestrator.core.plan import Plan
from orchestrator.core.versions import FileDiff, Side, file_diffs
from orchestrator.operations.apply import ApplyError, ApplyReport, Confirm, PlanChangedError, apply, compute
from orchestrator.operations.compare import DISK, Comparison, compare, live, previous, resolve, version_side
from orchestrator.operations.reach import socket_of
from orchestrator.state import runtime
from orchestrator.state.history import LOCK_TIMEOUT, History, Version, read_manifest_files
from orchestrator.supervisord import render
from orchestrator.supervisord.client import Client, NotRunningError

NOT_DATA = ("A rollback restores configuration, not data: positions, files and databases the agents wrote "
            "stay as they are.")
MANIFEST_DIRS = ("agents", "templates", "env")   # where files the version did not have are removed
MANIFEST_SUFFIXES = (".yaml", ".yml")            # the files the loader reads there; others are left alone


@dataclass(frozen=True)
class Prepared:
    """A rollback computed and not yet carried out: what `carry_out` does, for the operator to see first."""

    target: Version                 # the version returned to
    live: Version                   # the live version now
    state_dir: str
    manifests_dir: str              # where the stored files are written
    env: str | None
    plan: Plan                      # applying the target's manifests now (against what runs)
    changes: Comparison             # the live version -> the target: agents and fields
    files: tuple[FileDiff, ...]     # the manifests on disk -> the target's: what is written and removed
    stored: Mapping[str, bytes]     # the target's manifest files
    removed: tuple[str, ...]        # manifest files on disk the target did not have
    left: tuple[str, ...]           # other files there the target did not have: left alone
    client: Client


def _load(manifests_dir: str, env: str | None, state_dir: str) -> ManifestSet:
    """A manifest set loaded and checked as apply needs it (every problem at once, or a ManifestError)."""
    manifests = load(LoadOptions(manifests_dir, env=env, state_dir=state_dir))
    problems = render.check(manifests)
    if problems:
        raise ManifestError([*problems, *manifests.warnings])
    return manifests


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def prepare(state_dir: str, *, manifests_dir: str, env: str | None, version: str | None = None,
            target: Version | None = None) -> Prepared:
    """The rollback of the manifests in `manifests_dir` to `version` (a number or a tag; default: the version
    before the live one), or to `target`. Nothing is touched: the stored set is loaded and validated, the plan
    computed against the running supervisord."""
    history = History(state_dir)
    current = live(history)
    chosen = target or (resolve(history, version) if version is not None else previous(history, current))
    if (chosen.env or None) != (env or None):
        flag = f"--env {chosen.env}" if chosen.env else "no --env"
        raise StateError(f"version {chosen.number} was applied with {flag}; roll it back with the same")
    stored_dir = os.path.join(chosen.path, "manifests")
    stored = _load(stored_dir, env, state_dir)   # validated before anything is written
    if not _same_dir(stored.origin_dir, manifests_dir):
        raise StateError(f"version {chosen.number} was applied from {display_path(stored.origin_dir)}, "
                         f"not from {display_path(manifests_dir)}: choose it with -m")
    client = Client(socket_of(state_dir))
    if not client.is_running():
        raise NotRunningError(not_running_message(state_dir))
    result, _ = compute(stored, client)
    files = history.stored_files(chosen)
    on_disk = read_manifest_files(manifests_dir)
    extra = sorted(set(on_disk) - set(files))
    removed = tuple(p for p in extra if _removable(p))
    shown = {p: d for p, d in on_disk.items() if p in files or p in removed}
    return Prepared(target=chosen, live=current, state_dir=state_dir, manifests_dir=manifests_dir, env=env, plan=result,
                    changes=compare(version_side(history, current), version_side(history, chosen)),
                    files=file_diffs(Side(DISK, {}, {}, files=shown), Side(f"v{chosen.number}", {}, {}, files=files)),
                    stored=files, removed=removed, left=tuple(p for p in extra if p not in removed), client=client)


def _removable(path: str) -> bool:
    parts = path.split(os.sep)
    return len(parts) > 1 and parts[0] in MANIFEST_DIRS and path.endswith(MANIFEST_SUFFIXES)


def carry_out(prepared: Prepared, *, confirm: Confirm | None = None, message: str = "",
              emit: Emit = ignore, lock_timeout: float | None = LOCK_TIMEOUT) -> ApplyReport:
    """Write the target's manifest files over the manifests directory and apply them with the plan shown
    (`confirm`: asked when it changed since, as apply asks). Raises ApplyError as apply does; the version
    recorded is a rollback of the target either way."""
    if prepared.plan.of_kind("add", "replace", "start"):
        runtime.refuse_if_latched(prepared.state_dir)   # before a file is written
    before = read_manifest_files(prepared.manifests_dir)
    written = restore(prepared.manifests_dir, prepared.stored, prepared.removed)
    number = prepared.target.number
    emit(Note(f"Wrote version {number}'s manifests to {display_path(prepared.manifests_dir)} "
              f"({len(written)} file{'s' if len(written) != 1 else ''} written, {len(prepared.removed)} removed)."))
    manifests = _load(prepared.manifests_dir, prepared.env, prepared.state_dir)   # the very bytes validated above
    try:
        return apply(manifests, prepared.plan, confirm=confirm, message=message or f"rollback to version {number}",
                     emit=emit, client=prepared.client, command="rollback", rollback_of=number, lock_timeout=lock_timeout)
    except (LockHeldError, PlanChangedError, NotRunningError):
        # nothing was applied (another apply holds the lock, the new plan was refused, supervisord went away):
        # the manifests on disk go back to what they were, so the disk never says what does not run
        restore(prepared.manifests_dir, before, tuple(sorted(set(prepared.stored) - set(before))))
        emit(Note(f"Nothing was applied: the manifests in {display_path(prepared.manifests_dir)} are as they were."))
        raise


def restore(manifests_dir: str, files: Mapping[str, bytes], removed: tuple[str, ...] = ()) -> list[str]:
    """Put `files` (relative path -> bytes) into `manifests_dir`, each one atomically and only where it differs,
    then remove `removed`; the paths written."""
    written = []
    fallback = _mode(os.path.join(manifests_dir, "orchestrator.yaml"), 0o644)
    for rel, data in sorted(files.items()):
        path = os.path.join(manifests_dir, rel)
        try:
            with open(path, "rb") as handle:
                if handle.read() == data:
                    continue
        except OSError:
            pass
        _replace(path, data, mode=_mode(path, fallback))
        written.append(rel)
    for rel in removed:
        os.unlink(os.path.join(manifests_dir, rel))
    return written


def _mode(path: str, default: int) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return default


def _replace(path: str, data: bytes, *, mode: int) -> None:
    """`path` replaced by `data` whole (a temporary file beside it, fsynced, renamed over it)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-rollback-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- apply --rollback-on-failure ------------------------------------------------------

def failed_changes(error: ApplyError) -> list[str]:
    """The agents the failed apply changed (added, replaced, updated) that did not become ready: a reason to roll
    back. Empty when the failure is elsewhere (an unchanged agent, a stop that failed)."""
    report = error.report
    if report.start is None or report.version is None:
        return []
    changed = set(report.plan.names("add", "replace", "update"))
    return sorted({o.agent for o in report.start.failed if o.agent in changed})


def last_good(state_dir: str, before: int) -> Version | None:
    """The newest version before `before` that was applied (every agent ready), or None."""
    history = History(state_dir)
    for number in reversed([n for n in history.numbers() if n < before]):
        try:
            if history.meta(number).get("status") == "applied":
                return history.get(number)
        except StateError:
            continue
    return None
