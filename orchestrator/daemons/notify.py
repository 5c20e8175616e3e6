"""Sending alerts to the `notifications` of orchestrator.yaml, without ever holding up the sampler.

Owned here: the delivery of each firing and resolution to every target whose
`min_severity` it reaches, on a thread of its own behind a bounded queue, so
`submit` returns at once whatever the targets do; retries with backoff
(RETRY_DELAYS) when a target fails; and a log line for every failure and for
every alert dropped because the queue was full.

A webhook target gets one HTTP POST, `Content-Type: application/json`, whose
body is the alert (see `body`):

    {"project": "desk", "agent": "order-executor", "metric": "memory_mb",
     "level": "CRITICAL", "kind": "firing", "value": 412.0, "threshold": 400.0,
     "at": 1767225600.0, "summary": "order-executor CRITICAL firing: memory_mb 412 is at or above 400 for 10s"}

Any 2xx answer is delivered; anything else, or no answer within TIMEOUT, is a
failure. A command target runs with the same JSON on its stdin; exit status 0
is delivered.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.core.model import SEVERITIES, Notification
from orchestrator.state.alerts import AlertRecord

TIMEOUT = 5.0                       # seconds a target may take to answer one attempt
RETRY_DELAYS = (1.0, 2.0, 4.0)      # between the attempts after the first; then the alert is given up for that target
QUEUE_SIZE = 1000


def reaches(alert: AlertRecord, target: Notification) -> bool:
    """Whether the alert's level is at or above the target's `min_severity`."""
    return SEVERITIES.index(alert.level.lower()) >= SEVERITIES.index(target.min_severity)


def body(alert: AlertRecord, project: str) -> bytes:
    fields = {k: v for k, v in alert.as_dict().items() if k != "key"}
    return json.dumps({"project": project, **fields}, sort_keys=True).encode("utf-8")


class Notifier:
    """A thread that delivers alerts to their targets; `submit` never blocks."""

    def __init__(self, targets: Sequence[Notification], *, project: str, log: Callable[[str], None],
                 delays: Sequence[float] = RETRY_DELAYS, sleep: Callable[[float], None] = time.sleep) -> None:
        self.targets, self.project, self.log, self.delays, self.sleep = tuple(targets), project, log, tuple(delays), sleep
        self.pending: queue.Queue[AlertRecord | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self.thread = threading.Thread(target=self._run, name="notifier", daemon=True)
        self.thread.start()

    def submit(self, alert: AlertRecord) -> None:
        if not any(reaches(alert, t) for t in self.targets):
            return
        try:
            self.pending.put_nowait(alert)
        except queue.Full:
            self.log(f"notifications: queue full, not sent: {alert.summary}")

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (within `timeout`), then end the thread."""
        self.pending.put(None)
        self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            alert = self.pending.get()
            if alert is None:
                return
            for target in self.targets:
                if reaches(alert, target):
                    self._deliver(alert, target)

    def _deliver(self, alert: AlertRecord, target: Notification) -> None:
        payload = body(alert, self.project)
        for attempt, delay in enumerate((0.0, *self.delays), start=1):
            if delay:
                self.sleep(delay)
            problem = _send(target, payload)
            if problem is None:
                return
            self.log(f"notifications: {target.name}: attempt {attempt} failed: {problem}")
        self.log(f"notifications: {target.name}: given up after {1 + len(self.delays)} attempts: {alert.summary}")


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
