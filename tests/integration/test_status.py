"""status and plan as scripts and people read them, against a real supervisord."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.integration.conftest import free_ports, wait_until

pytestmark = pytest.mark.integration

FIELDS = {"name", "agent", "state", "pid", "uptime_seconds", "restarts", "cpu_percent", "memory_rss_bytes", "health", "ready"}


def test_status_json_has_one_object_per_process_with_the_documented_fields(project):
    ports = free_ports(2)
    project.toy("feed", ports[0])
    project.toy("calc", ports[1], depends_on=["feed"])
    project.write("agents/pool.yaml", """
        name: pool
        command: ["sleep", "600"]
        replicas: 2
        min_uptime: 0s
    """)
    project.run("up", check=True)
    done = project.run("status", "--output", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(done.stdout)
    assert {r["name"] for r in rows} == {"feed", "calc", "pool:pool_0", "pool:pool_1"}
    for row in rows:
        assert set(row) >= FIELDS  # at least the documented fields; the restart policy adds more
        assert row["given_up"] is False and row["next_restart_in"] is None
        assert row["state"] in ("RUNNING", "STARTING") and row["ready"] is True and row["pid"] > 0
        assert row["memory_rss_bytes"] > 0 and row["cpu_percent"] >= 0
    only = json.loads(project.run("status", "--output", "json", "calc").stdout)
    assert [r["agent"] for r in only] == ["calc"]


def test_status_exits_3_when_a_desired_agent_is_down_and_names_it_in_the_table(project):
    ports = free_ports(2)
    project.toy("feed", ports[0])
    project.toy("calc", ports[1], depends_on=["feed"])
    project.run("up", check=True)
    calc = project.pids()["calc"]
    os.kill(calc, signal.SIGKILL)
    # calc's restart policy brings it back a second later: read the table of the status call that saw it down
    down = wait_until(lambda: (done := project.run("status")).returncode == 3 and done, 15, message="status to report calc down")
    table = down.stdout
    assert table.splitlines()[0].split()[:3] == ["AGENT", "STATE", "PID"]
    line = next(line for line in table.splitlines() if line.startswith("calc"))
    assert "RUNNING" not in line and " no " in f" {line} "


def test_status_and_plan_say_plainly_when_supervisord_is_not_running(project):
    project.toy("feed", free_ports(1)[0])
    status = project.run("status")
    assert status.returncode == 1 and "supervisord is not running" in status.stderr
    plan = project.run("plan")
    assert plan.returncode == 2
    assert "supervisord is not running" in plan.stdout and "+ add      feed" in plan.stdout
    apply = project.run("apply")
    assert apply.returncode == 1 and "orchestrator up" in apply.stderr and "Traceback" not in apply.stderr


def test_an_invalid_manifest_changes_nothing_that_runs(project):
    ports = free_ports(2)
    project.toy("feed", ports[0])
    project.run("up", check=True)
    before = project.pids()
    project.write("agents/broken.yaml", "name: broken\ncommand: [sh]\nreplicas: 0\n")
    done = project.run("apply")
    assert done.returncode == 1
    assert "agents/broken.yaml:3:11: replicas: got 0" in done.stderr
    assert project.pids() == before
    assert len(list((project.state / "history").iterdir())) == 1  # no version was recorded


def test_status_scores_each_agents_health_and_names_every_point_it_lost(project):
    """The score is core.health's over what status measures and the open alerts the exporter recorded."""
    from orchestrator.core.alerts import Rule, Transition
    from orchestrator.state import alerts

    ports = free_ports(2)
    project.toy("feed", ports[0])
    project.toy("calc", ports[1], depends_on=["feed"])
    project.run("up", check=True)
    critical = Rule(agent="calc", metric="memory_mb", level="CRITICAL", fire_at=400, resolve_at=360)
    alerts.record(str(project.state), alerts.AlertRecord.of(Transition(critical, "firing", 412.0, 1000.0)))
    rows = {r["agent"]: r for r in json.loads(project.run("status", "--output", "json").stdout)}
    assert 0 < rows["calc"]["score"] < rows["feed"]["score"] <= 100
    assert {"cause": "alerts", "points": 10, "detail": "1 CRITICAL open"} in rows["calc"]["penalties"]
    assert sum(p["points"] for p in rows["calc"]["penalties"]) == 100 - rows["calc"]["score"]
    shown = project.run("status", "calc")
    assert shown.returncode == 0 and "calc: -10 alerts:" in shown.stdout, shown.stdout
    assert shown.stdout.splitlines()[0].split()[8] == "SCORE"

    project.run("stop", "feed", "--yes", check=True)  # and calc, its dependent
    stopped = {r["agent"]: r for r in json.loads(project.run("status", "--output", "json").stdout)}
    assert stopped["feed"]["score"] == 0 and stopped["feed"]["penalties"][0]["cause"] == "down"
    assert stopped["calc"]["score"] == 0


def test_status_reads_the_exporters_latest_sample_when_it_is_fresh_and_samples_itself_when_not(project):
    import time

    from orchestrator.state import samples

    # no exporter: the samples written here are the only ones
    (project.manifests / "orchestrator.yaml").write_text("project: test\nexporter: {enabled: false}\n")
    project.toy("feed", free_ports(1)[0])
    project.run("up", check=True)
    pid = project.pids()["feed"]
    samples.write(str(project.state), time.time(), 5.0, {pid: (42.5, 123_456_789)})
    row = json.loads(project.run("status", "--output", "json").stdout)[0]
    assert (row["cpu_percent"], row["memory_rss_bytes"]) == (42.5, 123_456_789)  # the exporter's figures
    samples.write(str(project.state), time.time() - 60, 5.0, {pid: (42.5, 123_456_789)})  # stale: 60 s > 2 x 5 s
    row = json.loads(project.run("status", "--output", "json").stdout)[0]
    assert row["memory_rss_bytes"] != 123_456_789 and row["memory_rss_bytes"] > 0  # measured by status itself


def test_the_running_exporter_shares_each_sample_and_status_shows_its_figures(project):
    """Regression: status could read the exporter's sample, but the exporter never wrote one, so status sampled
    every tree itself (0.25 s and a /proc walk per agent) even with the exporter running."""
    import time

    from orchestrator.state import samples

    settings = project.manifests / "orchestrator.yaml"   # the project's exporter, on its own port, sampling every 1 s
    settings.write_text(settings.read_text().replace("}", ", interval: 1s}"))
    project.toy("feed", free_ports(1)[0])
    project.run("up", check=True)
    pid = project.pids()["feed"]

    def shared() -> tuple[float | None, int | None] | None:
        figures = samples.read(str(project.state), time.time())
        return figures.get(pid) if figures else None

    wait_until(lambda: (got := shared()) and got[0] is not None and got[1], 20, message="the exporter's sample of feed")

    def status_shows_the_sample() -> bool:
        before = shared()
        row = json.loads(project.run("status", "--output", "json").stdout)[0]
        return before == shared() and (row["cpu_percent"], row["memory_rss_bytes"]) == tuple(before)

    wait_until(status_shows_the_sample, 20, message="status to show the exporter's figures")


def test_the_compact_process_list_says_what_getallprocessinfo_says_in_every_state(project):
    """processes() asks orchestrator's extension for a compact list (a tenth of getAllProcessInfo's reply, which
    supervisord sends 4 KiB per pass of its loop); it must agree with supervisord's own answer, field by field,
    for running, stopped and crash-looping agents, in the same order."""
    from dataclasses import replace

    from orchestrator.core.processes import ProcessInfo
    from orchestrator.operations.apply import client_for
    from orchestrator.config.manifest import LoadOptions, load
    from tests.integration.conftest import crasher

    first, second = free_ports(2)
    project.toy("feed", first)
    project.toy("calc", second, depends_on=["feed"])
    crasher(project, "crasher", restart="{policy: delayed, delay: 5s, max_attempts: 10}", extra="min_uptime: 0s\n")
    project.run("up")  # the crasher makes it fail or pass
    project.run("stop", "calc", "--yes", check=True)
    client = client_for(load(LoadOptions(str(project.manifests))))
    wait_until(lambda: any(p.state in ("EXITED", "BACKOFF") for p in client.processes() if p.group == "crasher"), 15,
               message="the crasher to exit")

    def agree() -> bool:
        compact = client.processes()
        full = [ProcessInfo.from_rpc(info) for info in client._call("supervisor.getAllProcessInfo")]  # noqa: SLF001
        return [replace(p, description="") for p in full] == compact

    wait_until(agree, 10, message="the compact list to agree with getAllProcessInfo")  # `now` may tick between them
    states = {p.group: p.state for p in client.processes()}
    assert states["feed"] == "RUNNING" and states["calc"] == "STOPPED" and states["crasher"] in ("EXITED", "BACKOFF", "STARTING")
