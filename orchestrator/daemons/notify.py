"""Sending alerts to the `notifications` of orchestrator.yaml, without ever holding up the one who raised them.

Owned here: the targets of the live version (`notifier_targets`, from the
settings apply keeps with each version; `Notifications` follows the live
version, so a new one takes effect without a restart); the delivery of each
firing and resolution to every target whose `min_severity` it reaches, on a
thread of its own behind a bounded queue, so `submit` returns at once whatever
the targets do; retries with backoff (RETRY_DELAYS) when a target fails; and a
log line for every failure and for every alert dropped because the queue was full.

Whoever raises an alert sends it, through a `Notifications` of its own: the
exporter's thresholds their threshold and PREDICTED alerts (keys
agent/metric/level), the restart keeper, in the listener, its exit alerts
(agent/exit/CRITICAL: a manual-policy agent that exited, and their resolution
once it runs again). Each alert is sent once, by the one who records it
(state.alerts).

A webhook target gets one HTTP POST, `Content-Type: application/json`, whose
body is the alert (see `body`):

    {"project": "desk", "agent": "order-executor", "metric": "memory_mb",
     "level": "CRITICAL", "kind": "firing", "value": 412.0, "threshold": 400.0,
     "at": 1767225600.0, "summary": "order-executor CRITICAL firing: memory_mb 412 is at or above 400 for 10s"}

An exit alert has the same fields: `metric` "exit", `level` CRITICAL, `value`
the exit status (-1 after a signal or a failed start), `threshold` 0. `watch`
sends each change of the manifests it applied or rejected through the same
Notifier: `kind` "config" (see daemons.watcher.ConfigNotice for its fields).

Any 2xx answer is delivered; anything else, or no answer within TIMEOUT, is a
failure. A command target runs with the same JSON on its stdin; exit status 0
is delivered.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from orchestrator.core.errors import OrchestratorError
from orchestrator.core.model import SEVERITIES, Notification
from orchestrator.state.history import History

TIMEOUT = 5.0                       # seconds a target may take to answer one attempt
RETRY_DELAYS = (1.0, 2.0, 4.0)      # between the attempts after the first; then the alert is given up for that target
QUEUE_SIZE = 1000


class Notice(Protocol):
    """What a Notifier sends: an alert (state.alerts.AlertRecord), or a change of the manifests (watcher.ConfigNotice)."""

    @property
    def level(self) -> str: ...

    @property
    def summary(self) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


def reaches(alert: Notice, target: Notification) -> bool:
    """Whether the alert's level is at or above the target's `min_severity`."""
    return SEVERITIES.index(alert.level.lower()) >= SEVERITIES.index(target.min_severity)


def body(alert: Notice, project: str) -> bytes:
    fields = {k: v for k, v in alert.as_dict().items() if k != "key"}
    return json.dumps({"project": project, **fields}, sort_keys=True).encode("utf-8")


class Notifier:
    """A thread that delivers alerts to their targets; `submit` never blocks."""

    def __init__(self, targets: Sequence[Notification], *, project: str, log: Callable[[str], None],
                 delays: Sequence[float] = RETRY_DELAYS, sleep: Callable[[float], None] = time.sleep) -> None:
        self.targets, self.project, self.log, self.delays, self.sleep = tuple(targets), project, log, tuple(delays), sleep
        self.pending: queue.Queue[Notice | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._retired = threading.Event()
        self.thread = threading.Thread(target=self._run, name="notifier", daemon=True)
        self.thread.start()

    def submit(self, alert: Notice) -> None:
        if not any(reaches(alert, t) for t in self.targets):
            return
        try:
            self.pending.put_nowait(alert)
        except queue.Full:
            self.log(f"notifications: queue full, not sent: {alert.summary}")

    def retire(self) -> None:
        """Deliver what is queued, then end the thread; returns at once, even with the queue full."""
        self._retired.set()
        with contextlib.suppress(queue.Full):   # full: the thread ends once it has emptied the queue
            self.pending.put_nowait(None)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (within `timeout`), then end the thread."""
        self.retire()
        self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            alert = self.pending.get()
            if alert is None:
                return
            for target in self.targets:
                if reaches(alert, target):
                    self._deliver(alert, target)
            if self._retired.is_set() and self.pending.empty():
                return

    def _deliver(self, alert: Notice, target: Notification) -> None:
        payload = body(alert, self.project)
        for attempt, delay in enumerate((0.0, *self.delays), start=1):
            if delay:
                self.sleep(delay)
            problem = _send(target, payload)
            if problem is None:
                return
            self.log(f"notifications: {target.name}: attempt {attempt} failed: {problem}")
        self.log(f"notifications: {target.name}: given up after {1 + len(self.delays)} attempts: {alert.summary}")


class Notifications:
    """The live version's notifier: `submit` sends to the targets of the version live when it is called.

    A new live version (an apply) gets a new Notifier, built from the settings
    kept with it; the previous one delivers what it holds, then ends. Safe to
    call from several threads; never waits on a target.
    """

    def __init__(self, history: History, *, log: Callable[[str], None]) -> None:
        self.history, self.log = history, log
        self.notifier: Notifier | None = None
        self._followed = False
        self._version: int | None = None
        self._lock = threading.Lock()

    def submit(self, alert: Notice) -> None:
        with self._lock:
            self._follow()
            if self.notifier is not None:
                self.notifier.submit(alert)

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self.notifier is not None:
                self.notifier.close(timeout)
            self.notifier, self._followed = None, False

    def _follow(self) -> None:
        """Build the notifier anew when the live version changed (a version unreadable now: keep the one there is)."""
        try:
            version = self.history.current()
        except (OrchestratorError, OSError) as exc:
            self.log(f"notifications: live version: {exc}")
            return
        number = version.number if version else None
        if self._followed and number == self._version:
            return
        self._followed, self._version = True, number
        project, targets = notifier_targets(self.history.settings(version) if version else {})
        if self.notifier is not None:
            self.notifier.retire()
        self.notifier = Notifier(targets, project=project, log=self.log) if targets else None


def notifier_targets(settings: Mapping[str, object]) -> tuple[str, tuple[Notification, ...]]:
    """The project and notification targets of a version's kept settings (state.history.settings)."""
    items = settings.get("notifications") or ()
    targets = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            targets.append(Notification(**{**item, "command": tuple(item.get("command", ()))}))
    return str(settings.get("project", "orchestrator")), tuple(targets)


def _send(target: Notification, payload: bytes) -> str | None:
    """None when delivered, else what went wrong."""
    if target.type == "command":
        try:
            done = subprocess.run(list(target.command), input=payload, capture_output=True, timeout=TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        return None if done.returncode == 0 else f"exit status {done.returncode}: {done.stderr.decode(errors='replace')[-200:]}"
    request = urllib.request.Request(target.url, data=payload, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "orchestrator"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310 - the operator's own URL
            status: Any = answer.status
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None if 200 <= int(status) < 300 else f"HTTP {status}"
