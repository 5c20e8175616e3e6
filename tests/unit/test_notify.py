"""Alerts reach their targets: a real local webhook server and a real command, retried with backoff, filtered by
severity, and never holding up the caller; the targets are the live version's, followed from one version to the
next; the alert history stays bounded and knows what is active."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.core.alerts import Rule, Transition
from orchestrator.core.model import Notification
from orchestrator.daemons.notify import Notifications, Notifier, notifier_targets
from orchestrator.state import alerts
from orchestrator.state.history import History
from orchestrator.supervisord import render


def _alert(level: str = "CRITICAL", kind: str = "firing", at: float = 1000.0, agent: str = "leaky") -> alerts.AlertRecord:
    rule = Rule(agent=agent, metric="memory_mb", level=level, fire_at=400, resolve_at=360, for_seconds=10)  # type: ignore[arg-type]
    return alerts.AlertRecord.of(Transition(rule, kind, 412.0 if kind == "firing" else 300.0, at))  # type: ignore[arg-type]


class _Hook:
    """A webhook server on 127.0.0.1 that answers `failures` 500s, then 200s, and keeps every body it got."""

    def __init__(self, failures: int = 0) -> None:
        self.bodies: list[dict[str, object]] = []
        self.failures = failures
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if hook.failures > 0:
                    hook.failures -= 1
                    self.send_response(500)
                else:
                    hook.bodies.append(data)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    servers: list[_Hook] = []

    def make(failures: int = 0) -> _Hook:
        servers.append(_Hook(failures))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.01)


def test_a_webhook_gets_the_documented_json_body(hook):
    server = hook()
    notifier = Notifier([Notification(name="desk", url=server.url)], project="desk", log=lambda line: None)
    notifier.submit(_alert())
    _until(lambda: server.bodies)
    notifier.close()
    assert server.bodies == [{"project": "desk", "agent": "leaky", "metric": "memory_mb", "level": "CRITICAL",
                              "kind": "firing", "value": 412.0, "threshold": 400.0, "at": 1000.0,
                              "summary": "leaky CRITICAL firing: memory_mb 412 is at or above 400 for 10s"}]


def test_a_failing_webhook_is_retried_with_backoff_and_each_failure_logged(hook):
    server, lines = hook(failures=2), []
    notifier = Notifier([Notification(name="desk", url=server.url)], project="p", log=lines.append, delays=(0.05, 0.1, 0.2))
    notifier.submit(_alert())
    _until(lambda: server.bodies)
    notifier.close()
    assert len(server.bodies) == 1
    assert lines == ["notifications: desk: attempt 1 failed: HTTP 500", "notifications: desk: attempt 2 failed: HTTP 500"]


def test_a_target_that_never_answers_costs_the_caller_nothing_and_is_given_up_with_a_log_line(tmp_path):
    lines: list[str] = []
    dead = Notification(name="gone", url="http://127.0.0.1:9/alerts")  # the discard port: nothing listens
    notifier = Notifier([dead], project="p", log=lines.append, delays=(0.01, 0.01))
    began = time.monotonic()
    for index in range(50):
        notifier.submit(_alert(at=float(index)))
    assert time.monotonic() - began < 1.0
    _until(lambda: any("given up after 3 attempts" in line for line in lines))


def test_a_command_target_gets_the_alert_on_stdin(tmp_path):
    out = tmp_path / "alert.json"
    target = Notification(name="pager", type="command", command=("sh", "-c", f"cat > {out}"))
    notifier = Notifier([target], project="p", log=lambda line: None)
    notifier.submit(_alert(level="EMERGENCY"))
    _until(lambda: out.exists() and out.read_text().endswith("}"))
    notifier.close()
    assert json.loads(out.read_text())["level"] == "EMERGENCY"


def test_each_target_gets_only_alerts_at_or_above_its_minimum_severity(hook):
    every, urgent = hook(), hook()
    notifier = Notifier([Notification(name="all", url=every.url),
                         Notification(name="urgent", url=urgent.url, min_severity="critical")],
                        project="p", log=lambda line: None)
    for level in ("WARNING", "PREDICTED", "CRITICAL", "EMERGENCY"):
        notifier.submit(_alert(level=level))
    _until(lambda: len(every.bodies) == 4 and len(urgent.bodies) == 2)
    notifier.close()
    assert [b["level"] for b in urgent.bodies] == ["CRITICAL", "EMERGENCY"]


def test_retiring_a_notifier_never_waits_even_with_its_queue_full_and_it_ends_once_emptied(tmp_path, monkeypatch):
    gate, out, lines = tmp_path / "gate", tmp_path / "alerts.jsonl", []
    monkeypatch.setattr("orchestrator.daemons.notify.QUEUE_SIZE", 3)
    target = Notification(name="slow", type="command",   # answers only once the gate exists
                          command=("sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.01; done; cat >> "{out}"; echo >> "{out}"'))
    notifier = Notifier([target], project="p", log=lines.append)
    notifier.submit(_alert(at=0.0))
    _until(lambda: notifier.pending.empty())   # the thread holds it, waiting on the gate
    for index in range(1, 5):
        notifier.submit(_alert(at=float(index)))   # three fill the queue, the fourth is dropped and said
    began = time.monotonic()
    notifier.retire()
    assert time.monotonic() - began < 0.1
    gate.touch()
    notifier.thread.join(10)
    assert not notifier.thread.is_alive()
    assert [json.loads(line)["at"] for line in out.read_text().splitlines() if line] == [0.0, 1.0, 2.0, 3.0]
    assert lines == [f"notifications: queue full, not sent: {_alert(at=4.0).summary}"]


def test_notification_targets_come_from_the_versions_kept_settings():
    project, targets = notifier_targets({"project": "desk", "notifications": [
        {"name": "hook", "url": "http://127.0.0.1:1/", "type": "webhook", "command": [], "min_severity": "critical"}]})
    assert project == "desk" and targets[0].min_severity == "critical" and targets[0].command == ()
    assert notifier_targets({}) == ("orchestrator", ())


def test_notifications_go_to_the_targets_of_the_version_live_when_each_alert_is_sent(hook, manifest_set, tmp_path):
    first, second = hook(), hook()
    state = str(tmp_path / "state")
    history = History(state)
    notifications = Notifications(history, log=lambda line: None)
    notifications.submit(_alert(at=1.0))   # nothing applied yet: no targets, nothing sent

    def apply(project: str, url: str) -> None:
        manifests = load(LoadOptions(str(manifest_set({
            "orchestrator.yaml": f"project: {project}\nnotifications:\n  - {{name: hook, url: '{url}'}}\n",
            "agents/idle.yaml": "name: idle\ncommand: [sleep, '60']\n"})), state_dir=state, check_commands=False))
        history.record(manifests, render.render(manifests))

    apply("desk", first.url)
    notifications.submit(_alert(at=2.0))
    _until(lambda: first.bodies)
    apply("floor", second.url)
    notifications.submit(_alert(at=3.0))
    _until(lambda: second.bodies)
    notifications.close()
    assert [(b["project"], b["at"]) for b in first.bodies] == [("desk", 2.0)]
    assert [(b["project"], b["at"]) for b in second.bodies] == [("floor", 3.0)]


def test_the_history_keeps_every_transition_in_order_and_knows_what_is_active(tmp_path):
    state = str(tmp_path)
    alerts.record(state, _alert("WARNING", at=1))
    alerts.record(state, _alert("CRITICAL", at=2))
    alerts.record(state, _alert("WARNING", kind="resolved", at=3))
    assert [(a.level, a.kind) for a in alerts.recent(state)] == [("WARNING", "firing"), ("CRITICAL", "firing"),
                                                                ("WARNING", "resolved")]
    assert [a.key for a in alerts.active(state)] == ["leaky/memory_mb/CRITICAL"]
    assert Path(state, "alerts", "history.jsonl").stat().st_mode & 0o077 == 0  # private, whatever the umask


def test_the_history_stays_bounded(tmp_path):
    state = str(tmp_path)
    for index in range(45):
        alerts.record(state, _alert(at=float(index), agent=f"a{index}"), keep=10)
    kept = alerts.recent(state, limit=1000)
    assert 10 <= len(kept) < 20
    assert kept[-1].agent == "a44" and [a.at for a in kept] == sorted(a.at for a in kept)
    assert len(alerts.active(state)) == 45  # every agent's alert still fires: active is not trimmed
