"""The metrics issue's acceptance: a leaking agent raises WARNING, then PREDICTED before its limit, then CRITICAL,
and is acted on at its limit within its `for` plus 1 s; the alerts, the restart's reason and the notification are
seen in `alerts`, `status`, the metrics, the exporter's log and by a webhook. A spike that falls back sooner raises
nothing."""

from __future__ import annotations

import json
import sys
import urllib.request

import pytest

from tests.integration.conftest import free_ports, logged, wait_until

pytestmark = pytest.mark.integration

# Grows by 1 MB every 0.1 s (10 MB/s) in the process that leaks: itself, or (with --child) a child process, so the
# memory belongs to the tree, not to the agent's own process. It logs, with its own clock, the tree's RSS in MiB
# (as the exporter counts memory_mb) at each step, and when SIGTERM reaches it. Once it has been stopped (a marker
# file), a new start stays idle: the test sees one enforcement, not a sawtooth.
LEAKER = r'''
import os, signal, subprocess, sys, time
log, marker, mode = sys.argv[1], sys.argv[2], sys.argv[3]

def write(line):
    with open(log, "a") as handle:
        handle.write(f"{line}\n")

def rss(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    return 0.0

def ended(*_):
    write(f"term {time.time()} {os.getpid()}")
    sys.exit(0)

signal.signal(signal.SIGTERM, ended)
if mode == "parent":
    write(f"start {time.time()} {os.getpid()}")
    if os.path.exists(marker):
        while True:
            time.sleep(1)
    child = subprocess.Popen([sys.executable, __file__, log, marker, "child"])
    while True:
        time.sleep(1)
held = []
if mode == "self":
    write(f"start {time.time()} {os.getpid()}")
    if os.path.exists(marker):
        while True:
            time.sleep(1)
open(marker, "w").close()
if mode == "spike":   # 150 MB for half a second, then back down, then quiet
    held.append(b"\x01" * 150_000_000)
    write(f"rss {time.time()} {rss(os.getpid()):.1f}")
    time.sleep(0.5)
    held.clear()
    write(f"rss {time.time()} {rss(os.getpid()):.1f}")
    while True:
        time.sleep(1)
while True:
    held.append(b"\x01" * 1_000_000)
    tree = rss(os.getpid()) + (rss(os.getppid()) if mode == "child" else 0.0)
    write(f"rss {time.time()} {tree:.1f}")
    time.sleep(0.1)
'''

FOR = 1.0
LIMIT = 200.0
RESOURCES = f"""
resources:
  memory_mb: {{warning: 60, critical: 180, limit: {LIMIT:g}, for: {FOR:g}s}}
  warmup: 0s
  cooldown: 60s
restart: {{policy: delayed, delay: 0.5s, max_attempts: 5}}
stop_timeout: 5s
"""


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The scrape's samples: (name, sorted labels) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()  # noqa: S310 - loopback
    found = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, _, rest = name_labels.partition("{")
        labels = tuple(sorted(tuple(item.split("=", 1)) for item in rest.rstrip("}").split('",') if item)) if rest else ()
        found[(name, tuple((k, v.strip('"')) for k, v in labels))] = float(value)
    return found


def _series(metrics: dict, name: str, **labels: str) -> list[float]:
    return [v for (n, ls), v in metrics.items() if n == name and all((k, val) in ls for k, val in labels.items())]


def test_a_leaking_agent_warns_predicts_goes_critical_and_is_restarted_at_its_limit_and_a_spike_raises_nothing(
        project, webhook):
    port = free_ports(1)[0]
    script = project.root / "leaker.py"
    script.write_text(LEAKER)
    project.write("orchestrator.yaml", f"""
        project: test
        exporter: {{listen: "127.0.0.1:{port}", interval: 0.5s, horizon: 20s}}
        notifications:
          - {{name: hook, url: "{webhook.url()}"}}
    """)
    logs = {}
    for name, mode in (("leak", "self"), ("heap", "parent"), ("spike", "spike")):
        logs[name] = project.root / f"{name}.log"
        command = json.dumps([sys.executable, str(script), str(logs[name]), str(project.root / f"{name}.stopped"), mode])
        resources = RESOURCES if name != "spike" else RESOURCES.replace("warning: 60", "warning: 100").replace(
            f"for: {FOR:g}s", "for: 3s")
        project.write(f"agents/{name}.yaml", f"name: {name}\ncommand: {command}\n" + resources)
    project.run("up", check=True)
    seen: dict[str, set[str]] = {"leak": set(), "heap": set()}
    exhaustion: list[float] = []
    health: list[float] = []

    def acted_on() -> bool:
        try:
            metrics = _metrics(port)
        except OSError:
            return False
        for agent in seen:
            for (name, labels), value in metrics.items():
                if name == "orchestrator_agent_alert" and ("agent", agent) in labels and value == 1:
                    seen[agent].add(dict(labels)["level"])
        exhaustion.extend(_series(metrics, "orchestrator_agent_exhaustion_seconds", agent="leak", resource="memory"))
        health.extend(_series(metrics, "orchestrator_agent_health_score", agent="leak"))
        return all(len(logged(logs[a], "start")) >= 2 for a in ("leak", "heap"))

    wait_until(acted_on, 90, interval=0.2, message="both leaking agents restarted at their limit")

    for agent in ("leak", "heap"):
        # enforced within `for` + 1 s of the tree reaching its limit, by the agent's own clock
        crossed = min(t for t, mb in logged(logs[agent], "rss") if float(mb) >= LIMIT)
        termed = min(t for t, _ in logged(logs[agent], "term"))
        assert crossed < termed <= crossed + FOR + 1.0, (agent, termed - crossed)
        # the alerts, in the order they fired, in `alerts`
        recent = json.loads(project.run("alerts", "--output", "json", check=True).stdout)["recent"]
        fired = [a["level"] for a in sorted(recent, key=lambda a: a["at"]) if a["agent"] == agent and a["kind"] == "firing"]
        assert fired[:4] == ["WARNING", "PREDICTED", "CRITICAL", "EMERGENCY"], fired
        predicted = next(a for a in recent if a["agent"] == agent and a["level"] == "PREDICTED")
        assert predicted["value"] < LIMIT
        assert {"WARNING", "CRITICAL"} <= seen[agent]   # exported while firing
    assert exhaustion and min(exhaustion) < 20.0 and health and min(health) < 100

    # the restart's reason: in status, in the keeper's counts and the metrics
    rows = {r["agent"]: r for r in json.loads(project.run("status", "--output", "json").stdout)}
    assert rows["leak"]["restarts"] >= 1 and rows["heap"]["restarts"] >= 1
    assert project.runtime("leak")["restart_reasons"] == {"memory_limit": 1}
    assert "memory_limit" in rows["leak"]["reason"]

    def restarts_counted() -> bool:
        metrics = _metrics(port)
        return all(_series(metrics, "orchestrator_agent_restarts_total", agent=a, reason="memory_limit") == [1.0]
                   for a in ("leak", "heap"))

    wait_until(restarts_counted, 10, message="restarts by reason memory_limit in the metrics")
    # the exporter's log
    log = (project.state / "logs" / "_exporter.log").read_text()
    assert "leak EMERGENCY firing" in log and "leak PREDICTED firing" in log and "memory_limit" in log
    # the notifications
    wait_until(lambda: {("leak", "EMERGENCY"), ("heap", "EMERGENCY")} <= {(b["agent"], b["level"]) for b in webhook.received()},
               15, message="the webhook to receive the limit alerts")
    body = next(b for b in webhook.received() if b["agent"] == "leak" and b["level"] == "EMERGENCY")
    assert body["project"] == "test" and body["kind"] == "firing" and body["metric"] == "memory_mb"
    # the spike, 150 MB for half a second against a warning at 100 for 3 s, raised nothing
    assert max(float(mb) for _, mb in logged(logs["spike"], "rss")) >= 100
    assert not [a for a in recent if a["agent"] == "spike"]
    assert not [b for b in webhook.received() if b["agent"] == "spike"]
