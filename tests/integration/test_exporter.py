"""The exporter under a real supervisord, scraped by a real Prometheus (Debian's `prometheus`).

Prometheus is conftest's `prometheus` fixture: on 127.0.0.1 on a free port, with its configuration and its data in
the test's temporary directory; it is stopped (SIGTERM, then SIGKILL) even when the test fails, and `project` stops
everything else.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.integration.conftest import free_ports, wait_until

pytestmark = pytest.mark.integration

# Every family an agent that runs, listens and has thresholds is exported with, as Prometheus names its series.
PER_AGENT = {
    "orchestrator_process_state", "orchestrator_process_uptime_seconds",
    "orchestrator_process_tree_processes", "orchestrator_process_cpu_seconds_total", "orchestrator_process_cpu_usage_ratio",
    "orchestrator_process_resident_memory_bytes", "orchestrator_process_virtual_memory_bytes",
    "orchestrator_process_proportional_memory_bytes", "orchestrator_process_unique_memory_bytes",
    "orchestrator_process_read_bytes_total", "orchestrator_process_written_bytes_total", "orchestrator_process_open_fds",
    "orchestrator_process_max_fds", "orchestrator_process_threads", "orchestrator_process_context_switches_total",
    "orchestrator_process_tcp_connections", "orchestrator_process_listening_port",
    "orchestrator_agent_up", "orchestrator_agent_ready", "orchestrator_agent_restarts_total",
    "orchestrator_agent_given_up", "orchestrator_agent_threshold_cpu_ratio",
    "orchestrator_agent_threshold_memory_bytes", "orchestrator_agent_threshold_open_fds",
}
GLOBAL = {
    "orchestrator_supervisord_up", "orchestrator_supervisord_resident_memory_bytes", "orchestrator_supervisord_cpu_seconds_total",
    "orchestrator_supervisord_open_fds", "orchestrator_config_version", "orchestrator_config_applied_timestamp_seconds",
    "orchestrator_config_info", "orchestrator_exporter_samples_total", "orchestrator_exporter_sample_errors_total",
    "orchestrator_exporter_vanished_processes_total", "orchestrator_exporter_sample_duration_seconds",
    "orchestrator_exporter_sample_cpu_seconds", "orchestrator_exporter_scrape_duration_seconds",
    "orchestrator_exporter_last_sample_timestamp_seconds", "process_resident_memory_bytes",
}
THRESHOLDS = """
resources:
  cpu_percent: {warning: 70, critical: 90}
  memory_mb: {warning: 200, critical: 300, limit: 400}
  open_files: 512
"""


def _exported(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def test_prometheus_scrapes_every_family_by_agent_and_a_removed_agent_disappears(project, prometheus):
    exporter_port = int(prometheus.target.rsplit(":", 1)[1])
    feed, calc, idle = free_ports(3)
    project.write("orchestrator.yaml", f"""
        project: test
        exporter: {{listen: "127.0.0.1:{exporter_port}", interval: 0.5s, pss: true}}
    """)
    project.toy("feed", feed, more=THRESHOLDS)
    project.toy("calc", calc, depends_on=["feed"], more=THRESHOLDS)
    project.toy("idle", idle, more=THRESHOLDS)
    project.run("up", check=True)
    project.run("stop", "idle", check=True)

    for agent in ("feed", "calc"):
        wait_until(lambda a=agent: prometheus.names(f'{{agent="{a}"}}') >= PER_AGENT, 60,
                   message=f"every family of {agent} in Prometheus")
    wait_until(lambda: prometheus.names('{job="orchestrator"}') >= GLOBAL, 30, message="the global families in Prometheus")
    assert {str(r["metric"].get("port")) for r in prometheus.query('orchestrator_process_listening_port{agent="feed"}')} == {str(feed)}
    ready = prometheus.query('orchestrator_agent_ready{agent="feed"}')
    assert ready and ready[0]["value"][1] == "1"
    assert prometheus.query("orchestrator_config_version")[0]["value"][1] == "1"
    # declared but stopped: exported as down, with its thresholds
    wait_until(lambda: [r["value"][1] for r in prometheus.query('orchestrator_agent_up{agent="idle"}')] == ["0"], 30,
               message="idle exported as down")
    stopped = prometheus.query('orchestrator_process_state{agent="idle",state="STOPPED"}')
    assert [r["value"][1] for r in stopped] == ["1"]

    project.remove("agents/calc.yaml")
    project.run("apply", check=True)
    wait_until(lambda: (text := _exported(exporter_port)) and 'agent="calc"' not in text and "orchestrator_config_version 2.0" in text,
               30, message="calc gone from the exporter")
    wait_until(lambda: not prometheus.query('{agent="calc"}'), 30, message="calc's series gone from Prometheus")
    assert prometheus.names('{agent="feed"}') >= PER_AGENT



def test_an_operators_restart_is_counted_with_reason_operator_in_the_keepers_record_status_and_the_metrics(project):
    """`orchestrator restart NAME`: one restart with reason `operator` in the keeper's record and in
    orchestrator_agent_restarts_total, never a crash (status's restarts are the policy's, and stay 0); an agent that
    nothing restarted shows zeros for every reason."""
    port = free_ports(1)[0]
    project.write("orchestrator.yaml", f'project: test\nexporter: {{listen: "127.0.0.1:{port}", interval: 1s}}\n')
    feed, calc = free_ports(2)
    project.toy("feed", feed)
    project.toy("calc", calc)
    project.run("up", check=True)
    project.run("restart", "feed", "--no-deps", "--yes", check=True)
    assert project.runtime("feed")["restart_reasons"] == {"operator": 1}
    rows = {r["agent"]: r for r in json.loads(project.run("status", "--output", "json").stdout)}
    assert rows["feed"]["restarts"] == 0 and rows["feed"]["restarts_in_window"] == 0   # status counts the policy's

    def counted() -> dict[tuple[str, str], float]:
        found = {}
        for line in _exported(port).splitlines():
            if line.startswith("orchestrator_agent_restarts_total{"):
                labels, value = line[len("orchestrator_agent_restarts_total{"):].rsplit("} ", 1)
                pairs = dict(part.split("=", 1) for part in labels.split(","))
                found[(pairs["agent"].strip('"'), pairs["reason"].strip('"'))] = float(value)
        return found

    wait_until(lambda: counted().get(("feed", "operator")) == 1.0, 15, message="the operator restart in the metrics")
    seen = counted()
    assert {reason for (agent, reason), value in seen.items() if agent == "feed" and value} == {"operator"}
    assert all(value == 0.0 for (agent, _), value in seen.items() if agent == "calc")
