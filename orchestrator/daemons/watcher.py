"""watch: the manifests directory followed; each burst of saves validated, planned and applied.

Owned here: the one use of watchfiles in orchestrator, and what a round does
with a change. Called by `orchestrator watch` (interfaces.commands.watch),
which shows what it is told through a `View` and sets `stop` on Ctrl-C or
SIGTERM.

Why watchfiles: it is maintained, its watching is done by Rust's `notify`
(inotify on Linux: the kernel says what changed, nothing polls the
directory), and it debounces itself: changes are gathered until the directory
has been quiet for QUIET_MS (at most LONGEST_MS), so an editor's save (write a
temporary file, rename it over the old one, remove a backup) or a checkout of
several files is one round, not several, and the changes made while a round
applies are kept for the next one. It also ends at once when `stop` is set.

A round, after the directory went quiet:

    load and validate (as every command does)
      -> invalid: every error with its FILE:LINE:COL shown; nothing touched; logged and sent as "rejected"
    compute the plan and show it
      -> nothing to do: said and logged (nothing is sent)
      -> --plan-only: that is all
    operations.apply(manifests, the plan shown, confirm=None), under the apply lock
      -> the plan changed before the lock was taken: computed again at once (REPLANS times), else the next round
      -> the lock stayed held by another apply (its PID, command and start named): tried again every RETRY_MS
      -> applied (version N) or failed: logged and sent

Every outcome is a line of STATE/logs/watch.log, and the applied, rejected and
failed ones are sent to the `notifications` of the live version (after an
apply, the new one's) through daemons.notify, as a ConfigNotice.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import watchfiles

from orchestrator.core.errors import Diagnostic, LockHeldError, ManifestError, OrchestratorError
from orchestrator.core.events import Emit
from orchestrator.core.model import ManifestSet
from orchestrator.core.names import LOGS_DIR
from orchestrator.core.plan import Plan
from orchestrator.daemons.notify import Notifications
from orchestrator.operations.apply import ApplyError, PlanChangedError, apply, client_for, compute
from orchestrator.state.history import LOCK_TIMEOUT, History

QUIET_MS = 200      # a burst of saves is over once nothing changed for this long (an editor's save takes a few ms)
LONGEST_MS = 1600   # ... or this long after its first change, however long the burst goes on
RETRY_MS = 2000     # how soon a round that found the apply lock held is tried again
REPLANS = 3         # rounds computed again at once when the plan changed before apply took the lock
LOG = "watch.log"
WATCHED_DIRS = ("agents", "templates", "env")
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ConfigNotice:
    """A change of the manifests that watch applied, rejected (invalid) or failed to apply: logged and notified.

    Its notification body (`as_dict`, with `project` added by notify.body):

        {"project": "desk", "kind": "config", "outcome": "applied", "version": 7, "level": "WARNING",
         "files": ["agents/calc.yaml"], "changes": ["replace calc (env)"], "errors": [],
         "at": 1767225600.0, "summary": "applied as version 7: replace calc (env)"}

    `outcome` is applied, rejected or failed; `version` the version recorded (null when none was);
    `errors` each error as FILE:LINE:COL: message (rejected) or the failure (failed). `level` decides which
    targets get it (their min_severity): WARNING when applied, CRITICAL when rejected or failed.
    """

    outcome: str
    summary: str
    version: int | None = None
    files: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    at: float = field(default_factory=time.time)

    @property
    def level(self) -> str:
        return "WARNING" if self.outcome == "applied" else "CRITICAL"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "config", "outcome": self.outcome, "version": self.version, "level": self.level,
                "files": list(self.files), "changes": list(self.changes), "errors": list(self.errors),
                "at": self.at, "summary": self.summary}


class View(Protocol):
    """How the interface shows a round."""

    def say(self, line: str) -> None: ...                                  # a line of watch's own

    def rejected(self, diagnostics: Sequence[Diagnostic]) -> None: ...     # the manifests' problems, located

    def planned(self, plan: Plan) -> None: ...                             # the plan about to be carried out

    def progress(self, manifests: ManifestSet) -> Emit: ...                # the apply's progress


def changes_of(plan: Plan) -> tuple[str, ...]:
    """The plan's changes, one short phrase each: `replace calc (env)`, `settings (notifications)`."""
    found = [f"settings ({', '.join(plan.settings)})"] if plan.settings else []
    for action in plan.actions:
        if action.kind != "unchanged":
            found.append(f"{action.kind} {action.agent}" + (f" ({', '.join(action.fields)})" if action.fields else ""))
    return tuple(found)


class Watcher:
    """Follows the manifests directory until `stop` is set; one round per burst of saves (see the module's docstring)."""

    def __init__(self, *, manifests_dir: str, state_dir: str, load: Callable[[], ManifestSet], view: View,
                 stop: threading.Event, plan_only: bool = False, lock_timeout: float | None = LOCK_TIMEOUT) -> None:
        self.manifests_dir, self.state_dir = os.path.abspath(manifests_dir), state_dir
        self.load, self.view, self.stop = load, view, stop
        self.plan_only, self.lock_timeout = plan_only, lock_timeout
        self.notifications = Notifications(History(state_dir), log=self.log)
        self.retrying: tuple[str, ...] | None = None   # the files of a round that found the lock held

    def run(self) -> None:
        """A round for the manifests as they are now, then one per burst of saves, until `stop` is set."""
        if not os.path.isdir(self.manifests_dir):
            raise OrchestratorError(f"manifests directory not found: {self.manifests_dir} (choose it with -m/--manifests)")
        self.view.say(f"watching {self.manifests_dir}" + (" (plan only)" if self.plan_only else "") + "; Ctrl-C ends")
        try:
            self.round(())
            for changes in watchfiles.watch(self.manifests_dir, watch_filter=self.relevant, debounce=LONGEST_MS,
                                            step=QUIET_MS, stop_event=self.stop, rust_timeout=RETRY_MS,
                                            yield_on_timeout=True):
                files = tuple(sorted({os.path.relpath(path, self.manifests_dir) for _, path in changes}))
                if files:
                    self.view.say(f"changed: {', '.join(files)}")
                    self.round(files)
                elif self.retrying is not None:
                    self.round(self.retrying)
        finally:
            self.notifications.close(timeout=5.0)

    def relevant(self, change: watchfiles.Change, path: str) -> bool:
        """A manifest: orchestrator.yaml, or a YAML file below agents/, templates/ or env/ (not an editor's dotfile)."""
        name = os.path.basename(path)
        if name.startswith(".") or not name.endswith(SUFFIXES):
            return False
        rel = os.path.relpath(path, self.manifests_dir)
        return rel in ("orchestrator.yaml", "orchestrator.yml") or rel.split(os.sep)[0] in WATCHED_DIRS

    def round(self, files: tuple[str, ...]) -> None:
        """Validate, plan and (unless plan-only) apply the manifests as they are now."""
        self.retrying = None
        for _ in range(REPLANS):
            if not self._attempt(files):
                return
            self.view.say("the plan changed before apply took the lock: computing it again")
        self.log(f"the plan kept changing under the lock ({REPLANS} times): left for the next round")
        self.view.say("the plan kept changing: the next save (or a restart of watch) tries again")

    def _attempt(self, files: tuple[str, ...]) -> bool:
        """One try of a round; True when the plan changed before the lock was taken (to be computed again)."""
        try:
            manifests = self.load()
        except ManifestError as exc:
            self.view.rejected(exc.diagnostics)
            errors = tuple(str(d) for d in exc.errors)
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            self._tell(ConfigNotice("rejected", f"rejected, nothing changed: {errors[0] if errors else exc}{more}",
                                    files=files, errors=errors))
            return False
        except (OrchestratorError, OSError) as exc:
            self._tell(ConfigNotice("rejected", f"rejected, nothing changed: {exc}", files=files, errors=(str(exc),)))
            return False
        client = client_for(manifests)
        try:
            shown, _ = compute(manifests, client)
        except OrchestratorError as exc:
            self._tell(ConfigNotice("failed", f"not applied: {exc}", files=files, errors=(str(exc),)))
            return False
        self.view.planned(shown)
        changes = changes_of(shown)
        if not shown.pending:
            self.log(f"{_files(files)}: nothing to do")
            return False
        if self.plan_only:
            self.log(f"{_files(files)}: planned (plan only): {'; '.join(changes)}")
            return False
        try:
            report = apply(manifests, shown, message=f"watch: {_files(files)}", emit=self.view.progress(manifests),
                           client=client, lock_timeout=self.lock_timeout)
        except PlanChangedError:
            return True
        except LockHeldError as exc:
            self.retrying = files
            self.log(f"{_files(files)}: not applied yet: {exc}")
            self.view.say(f"not applied yet ({exc}); trying again in {RETRY_MS / 1000:g}s")
            return False
        except ApplyError as exc:
            number = exc.report.version.number if exc.report.version else None
            self._tell(ConfigNotice("failed", f"apply failed{_as(number)}: {str(exc).splitlines()[0]}", version=number,
                                    files=files, changes=changes, errors=tuple(str(exc).splitlines())))
            return False
        except OrchestratorError as exc:
            self._tell(ConfigNotice("failed", f"not applied: {exc}", files=files, changes=changes, errors=(str(exc),)))
            return False
        number = report.version.number if report.version else None
        self._tell(ConfigNotice("applied", f"applied{_as(number)}: {'; '.join(changes)}", version=number, files=files,
                                changes=changes))
        return False

    def _tell(self, notice: ConfigNotice) -> None:
        self.view.say(notice.summary)
        self.log(f"{_files(notice.files)}: {notice.summary}" + "".join(f"\n    {e}" for e in notice.errors[1:]))
        self.notifications.submit(notice)

    def log(self, line: str) -> None:
        """A line of STATE/logs/watch.log (the file private to the operator, as the whole state directory is)."""
        directory = os.path.join(self.state_dir, LOGS_DIR)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(directory, LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def _files(files: Iterable[str]) -> str:
    return ", ".join(files) or "at start"


def _as(number: int | None) -> str:
    return f" as version {number}" if number is not None else ""
