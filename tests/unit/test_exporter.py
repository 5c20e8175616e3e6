"""The exporter's sampling and collector, on a real process tree this test starts (no supervisord: its
answers come from a stand-in that names the tree's root pid). Every process started here is ended here."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.core.model import Agent, Resources
from orchestrator.core.model import Thresholds as Levels
from orchestrator.core.processes import ProcessInfo
from orchestrator.daemons.exporter import Exporter, Sampler, exposition, registry
from orchestrator.daemons.thresholds import Thresholds
from orchestrator.host import sampling

# A parent that listens on a port, burns some CPU, and keeps two children (one of them multi-threaded).
TREE = """
import socket, subprocess, sys, threading, time
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(8)
children = [subprocess.Popen([sys.executable, "-c", "import threading, time; [threading.Thread(target=time.sleep, args=(600,), daemon=True).start() for _ in range(3)]; time.sleep(600)"]),
            subprocess.Popen(["sleep", "600"])]
print(server.getsockname()[1], " ".join(str(c.pid) for c in children), flush=True)
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
time.sleep(600)
"""


class Tree:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.process.stdout is not None
        port, pids = self.process.stdout.readline().split(" ", 1)
        self.port = int(port)
        self.children = [int(p) for p in pids.split()]

    @property
    def pid(self) -> int:
        return self.process.pid

    def end(self) -> None:
        for pid in [*self.children, self.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def tree() -> Iterator[Tree]:
    instance = Tree()
    try:
        yield instance
    finally:
        instance.end()


def _wait_cpu(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + 10
    while sampling.sample({0: pid}, tree=False).trees[0].cpu_seconds < seconds:
        assert time.monotonic() < deadline, "the tree never used the CPU it burns"
        time.sleep(0.05)


def test_a_tree_is_summed_over_every_process_in_it(tree):
    _wait_cpu(tree.pid, 0.25)
    figures = sampling.sample({"t": tree.pid}).trees["t"]
    assert figures.processes == 3
    assert figures.threads >= 1 + 4 + 1
    assert figures.cpu_seconds >= 0.25
    own = sampling.sample({"t": tree.pid}, tree=False).trees["t"]
    assert own.processes == 1 and own.rss_bytes < figures.rss_bytes
    assert figures.vms_bytes > figures.rss_bytes > 0
    assert figures.open_fds >= 3 * 3 and figures.fd_limit and figures.fd_limit >= figures.open_fds // 3
    assert tree.port in figures.listening_ports and figures.tcp.get("listen") == 1
    assert figures.context_switches > 0
    assert figures.pss_bytes is None


def test_pss_and_uss_are_sampled_on_request_and_are_below_the_summed_rss(tree):
    figures = sampling.sample({"t": tree.pid}, pss=True).trees["t"]
    assert figures.uss_bytes is not None and figures.pss_bytes is not None
    assert 0 < figures.uss_bytes <= figures.pss_bytes <= figures.rss_bytes


def test_a_process_that_is_gone_costs_its_own_figures_and_never_the_pass(tree):
    gone = subprocess.Popen(["true"])
    gone.wait()
    found = sampling.sample({"gone": gone.pid, "t": tree.pid})
    assert "gone" not in found.trees and found.trees["t"].processes == 3


class Stand:
    """supervisord's answers for a test: one agent whose process is the tree's root."""

    def __init__(self, pid: int) -> None:
        self.rows = [ProcessInfo("calc", "calc", "RUNNING", pid, int(time.time()) - 5, int(time.time()), 0, "", "")]

    def processes(self) -> list[ProcessInfo]:
        return list(self.rows)

    def pid(self) -> int:
        return os.getpid()


def _scrape(sampler: Sampler) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> (labels, value) of each of its series, from the text a scrape returns."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry(sampler)).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_the_collector_exports_the_tree_by_agent_and_process_never_by_pid(tree, tmp_path: Path):
    stand = Stand(tree.pid)
    sampler = Sampler(str(tmp_path), stand, interval=1.0, probe=False)
    sampler.sample()
    _wait_cpu(tree.pid, 0.25)
    sampler.sample()
    metrics = _scrape(sampler)
    labels = {"agent": "calc", "process": "calc"}
    value = {name: next((v for ls, v in rows if all(ls.get(k, want) == want for k, want in labels.items())), None)
             for name, rows in metrics.items()}
    assert value["orchestrator_process_tree_processes"] == 3
    assert value["orchestrator_process_cpu_seconds_total"] >= 0.25
    assert value["orchestrator_process_cpu_usage_ratio"] is not None
    assert value["orchestrator_process_resident_memory_bytes"] > 0
    assert value["orchestrator_process_state"] == 1 and value["orchestrator_agent_up"] == 1
    assert value["orchestrator_exporter_samples_total"] == 2
    assert ({"agent": "calc", "process": "calc", "port": str(tree.port)}, 1.0) in metrics["orchestrator_process_listening_port"]
    for rows in metrics.values():
        assert all("pid" not in ls for ls, _ in rows)

    stand.rows = []   # the agent is gone (an apply removed it): so are its series
    sampler.sample()
    after = _scrape(sampler)
    assert not any(ls.get("agent") == "calc" for rows in after.values() for ls, _ in rows)


def test_the_collector_describes_its_families_without_sampling(tmp_path: Path):
    sampler = Sampler(str(tmp_path), Stand(os.getpid()), interval=1.0, probe=False)
    described = {m.name for m in Exporter(sampler).describe()}
    assert {"orchestrator_process_cpu_seconds", "orchestrator_config_version", "orchestrator_agent_up"} <= described
    assert sampler.counters.samples == 0


def test_the_threshold_families_carry_the_names_and_labels_alert_rules_use(tmp_path: Path):
    """The names and labels `orchestrator rules` and dashboards are written against."""
    from orchestrator.core.forecast import Forecast
    from orchestrator.core.health import Health, Penalty
    from orchestrator.daemons.thresholds import Assessment
    from orchestrator.state.alerts import AlertRecord

    sampler = Sampler(str(tmp_path), Stand(os.getpid()), interval=1.0, probe=False)
    firing = AlertRecord(key="calc/memory_mb/WARNING", agent="calc", metric="memory_mb", level="WARNING", kind="firing",
                         value=310.0, threshold=300.0, at=0.0, summary="")
    fc = Forecast(slope=1.0, low_slope=0.5, high_slope=2.0, level=300.0, limit=400.0, seconds=100.0, earliest=50.0,
                  latest=200.0, samples=10, span=100.0)
    sampler.snapshot = dataclasses.replace(sampler.snapshot, assessment=Assessment(
        firing=(firing,), health={"calc": Health(87, (Penalty("memory", 13, ""),))}, forecasts={("calc", "memory_mb"): fc}))
    found = {(s.name, tuple(sorted(s.labels))): s.value for m in Exporter(sampler).collect() for s in m.samples}
    assert found[("orchestrator_agent_alert", ("agent", "level", "metric"))] == 1.0
    assert found[("orchestrator_agent_health_score", ("agent",))] == 87
    assert found[("orchestrator_agent_health_penalty_points", ("agent", "cause"))] == 13
    assert found[("orchestrator_agent_exhaustion_seconds", ("agent", "resource"))] == 100.0
    from orchestrator.core.policies import AgentHistory
    from orchestrator.daemons.exporter import AgentSample

    history = AgentHistory(restarts=3, restart_reasons={"memory_limit": 1, "operator": 1})
    sampler.snapshot = dataclasses.replace(sampler.snapshot, agents=(AgentSample("calc", True, True, history, None),))
    restarts = {s.labels["reason"]: s.value for m in Exporter(sampler).collect() for s in m.samples
                if s.name == "orchestrator_agent_restarts_total"}
    # two automatic restarts counted before reasons were kept are crashes; every reason is always there
    assert restarts == {"crash": 2, "liveness": 0, "memory_limit": 1, "cpu_limit": 0, "fds_limit": 0, "dependency": 0,
                        "operator": 1}


def test_a_port_in_use_is_tried_again_not_fatal():
    from threading import Event, Thread

    from orchestrator.daemons.exporter import serve
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    stop = Event()
    worker = Thread(target=serve, args=(f"127.0.0.1:{held.getsockname()[1]}", registry(Sampler("/nonexistent", Stand(1), interval=1))),
                    kwargs={"stop": stop}, daemon=True)
    worker.start()
    worker.join(0.5)
    assert worker.is_alive()
    stop.set()
    worker.join(10)
    held.close()
    assert not worker.is_alive()


def test_the_scrape_text_holds_the_same_samples_as_prometheus_clients_own(tree, tmp_path: Path):
    stand = Stand(tree.pid)
    stand.rows.append(ProcessInfo("odd", 'a "quoted"\\ name\nhere', "STOPPED", 0, 0, 0, 0, "", ""))
    sampler = Sampler(str(tmp_path), stand, interval=1.0, probe=False)
    sampler.sample()
    sampler.sample()
    reg = registry(sampler)

    def samples(text: str) -> list[tuple[str, str, tuple[tuple[str, str], ...], float]]:
        return sorted((f.name, f.type, tuple(sorted(s.labels.items())), s.value)
                      for f in text_string_to_metric_families(text) for s in f.samples if not s.name.startswith("process_")
                      and "duration" not in s.name and "cpu_seconds" not in s.name)

    ours = exposition(reg).decode()
    assert samples(ours) == samples(generate_latest(reg).decode())
    assert 'agent="a \\"quoted\\"\\\\ name\\nhere"' in ours


def test_the_exporter_serves_its_metrics_and_ends_when_its_parent_is_gone(tmp_path: Path):
    """supervisord killed with SIGKILL: an exporter that lived on would hold its port against the next one."""
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = (f"{sys.executable} -m orchestrator.exporter --state-dir {tmp_path} --socket {tmp_path}/none.sock "
               f"--listen 127.0.0.1:{port} --interval 0.2 & echo $!; exec sleep 600")
    parent = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    exporter = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                    text = reply.read().decode()
                if "orchestrator_exporter_samples_total" in text:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the exporter never answered"
            time.sleep(0.1)
        assert "orchestrator_supervisord_up 0.0" in text
        _ends_with(parent, exporter, within=10)
    finally:
        _stop(parent, exporter)


def _ends_with(parent: subprocess.Popen[str], exporter: int, *, within: float) -> None:
    """Kill the exporter's parent; the exporter must end (or be a zombie) within `within` seconds."""
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.monotonic() + within
    while os.path.exists(f"/proc/{exporter}") and "Z" not in _state(exporter):
        assert time.monotonic() < deadline, "the exporter outlived its parent"
        time.sleep(0.1)


def _stop(parent: subprocess.Popen[str], exporter: int) -> None:
    parent.kill()
    parent.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.kill(exporter, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_the_light_read_gives_the_same_tree_rss_as_the_full_sample(tree):
    deadline = time.monotonic() + 10
    while True:   # the tree's children are still starting when the fixture hands it over: compare once it is still
        before = sampling.sample({"calc": tree.pid}).trees["calc"]
        rss, fds = sampling.light({"calc": tree.pid}, fds={"calc"})["calc"]
        after = sampling.sample({"calc": tree.pid}).trees["calc"]
        if (before.rss_bytes, before.open_fds) == (after.rss_bytes, after.open_fds) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert abs(rss - after.rss_bytes) <= 0.05 * after.rss_bytes
    assert fds == after.open_fds


def test_a_limit_is_checked_between_two_samples_longer_than_the_tick_and_acted_on(tree, tmp_path: Path):
    reported = []
    sampler = Sampler(str(tmp_path), Stand(tree.pid), interval=3600.0, probe=False, limit_tick=0.05,
                      thresholds=Thresholds(str(tmp_path), report=reported.append, log=lambda line: None))
    sampler.sample()
    agent = Agent(name="calc", command=("x",), resources=Resources(memory_mb=Levels(limit=1.0), warmup=0.0))
    declared = dataclasses.replace(sampler.snapshot, agents=tuple(a._replace(up=True, agent=agent)
                                                                  for a in sampler.snapshot.agents))
    samples = []
    original = sampler.sample

    def sample() -> object:   # the first sample of the loop; then the snapshot declares the limit
        samples.append(original())
        sampler.snapshot = declared
        return sampler.snapshot

    sampler.sample = sample  # type: ignore[method-assign]
    sampler.start()
    try:
        deadline = time.monotonic() + 5
        while not reported and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sampler.stop()
    assert [a.reason for a in reported] == ["memory_limit"] and len(samples) == 1


def test_an_exporter_kept_from_its_port_still_ends_when_its_parent_is_gone(tmp_path: Path):
    """Regression: while another process held its port, the exporter only retried listening and outlived a killed
    supervisord (the orphan `down` and the boot tests then found)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        said = tmp_path / "exporter.log"
        command = (f"{sys.executable} -m orchestrator.exporter --state-dir {tmp_path} --socket {tmp_path}/none.sock "
                   f"--listen 127.0.0.1:{port} --interval 0.2 2>{said} & echo $!; exec sleep 600")
        parent = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, text=True)
        assert parent.stdout is not None
        exporter = int(parent.stdout.readline())
        try:
            deadline = time.monotonic() + 30
            while "cannot listen" not in (said.read_text() if said.exists() else ""):
                assert time.monotonic() < deadline, "the exporter never tried its port"
                time.sleep(0.05)
            _ends_with(parent, exporter, within=15)  # one BIND_RETRY (5 s) at most, with room for a busy machine
        finally:
            _stop(parent, exporter)
