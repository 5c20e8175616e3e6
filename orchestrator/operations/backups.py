"""Backups as operations: the backup and restore commands' work under the apply lock, and apply's automatic backup.

Owned here: when a backup is taken and what it holds. `backup` archives the manifest set and the whole
history; `prepare_restore` verifies an archive and plans its restore (nothing written); `restore` carries
the plan out under the apply lock, after a safety backup of what it overwrites, and never applies:
the caller applies (restore --apply) through operations.apply. `before_record` is apply's hook: the
version about to stop being live, archived alone in STATE/backups (the last ten kept), never failing
the apply. The file work is state.backup's.
"""

from __future__ import annotations

import os

from orchestrator import __version__
from orchestrator.core.events import Emit, Note
from orchestrator.state import backup as archive
from orchestrator.state.backup import Backup, BackupError, RestorePlan
from orchestrator.state.history import LOCK_TIMEOUT, History, Version


def backup(path: str, *, manifests_dir: str, state_dir: str, force: bool = False) -> Backup:
    """The manifest set in `manifests_dir` and every version in `state_dir`, written to `path` (see state.backup).
    Taken under the apply lock, so no apply records or marks a version meanwhile."""
    def take() -> Backup:
        current = archive.live_number(state_dir)
        files = archive.sources(manifests_dir=manifests_dir, state_dir=state_dir, versions=archive.stored_numbers(state_dir))
        if not files:
            raise BackupError(f"nothing to back up: no manifests in {manifests_dir} and no history in {state_dir}")
        return archive.write(path, files, project=archive.project_of(state_dir, current), current=current,
                             version=__version__, force=force)

    if not os.path.isdir(state_dir):  # nothing applied yet: the manifests alone, and no state directory made for it
        return take()
    with History(state_dir).lock():
        return take()


def before_record(history: History, previous: Version | None, *, emit: Emit) -> None:
    """apply's hook, called under its lock right before it records a new version: the live version (`previous`)
    archived alone in STATE/backups, the oldest beyond the last ten deleted. Cheap (one version directory).
    A failure (a full disk, a permission) is said as a note and never fails the apply: the apply that frees a
    disk must not be blocked by the backup that needs it."""
    if previous is None:
        return
    try:
        archive.auto_backup(history.state_dir, previous.number, version=__version__)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the apply goes on; the operator is told
        emit(Note(f"warning: the automatic backup of version {previous.number} before this apply failed "
                  f"({type(exc).__name__}: {exc}); the apply goes on without it"))


def prepare_restore(path: str, *, manifests_dir: str, state_dir: str, force: bool = False) -> RestorePlan:
    """The backup at `path` verified whole, and what restoring it would change; BackupError, with nothing
    changed, when the archive is not sound or its versions clash (see state.backup.plan_restore)."""
    return archive.plan_restore(archive.verify(path), manifests_dir=manifests_dir, state_dir=state_dir, force=force)


def restore(plan: RestorePlan, *, force: bool = False, lock_timeout: float | None = LOCK_TIMEOUT,
            emit: Emit | None = None) -> Backup | None:
    """Carry out `plan` under the apply lock: planned again there (a plan that changed meanwhile is refused,
    nothing written), then what it overwrites (the manifest set and the whole history) archived in
    STATE/backups/pre-restore-*.tar.gz, then the versions and the manifests written. The safety backup made
    (None when the plan changed nothing). Nothing running is touched, and the live version stays live."""
    say = (lambda line: emit(Note(line))) if emit is not None else None   # whom it waits for, a dead holder taken over
    with History(plan.state_dir).lock(timeout=lock_timeout, say=say):
        again = archive.plan_restore(plan.backup, manifests_dir=plan.manifests_dir, state_dir=plan.state_dir, force=force)
        if again != plan:
            raise BackupError("the manifests or the history changed since the restore was planned (an apply ran?); "
                              "nothing was changed: run restore again")
        if not plan.changes:
            return None
        safety = None
        if archive.manifest_files(plan.manifests_dir) or archive.stored_numbers(plan.state_dir):
            safety = archive.full_backup_into_state(plan.state_dir, plan.manifests_dir, version=__version__)
        archive.restore(plan)
        return safety
