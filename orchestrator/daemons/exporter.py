"""The metrics exporter run by supervisord: every agent's process tree, state and restarts, for Prometheus.

Owned here: the sampler thread, the prometheus-client `Collector` that turns
its latest sample into metric families, and the program's main (`python -m
orchestrator.exporter`, rendered as the internal program `_exporter`).

Sampling runs in a thread every `exporter.interval`, not on scrape: a scrape
reads the latest sample, so its cost does not grow with the number of
scrapers (Prometheus, a second Prometheus, a curl), supervisord's
getAllProcessInfo (which grows with the square of its programs) is called
once per interval whatever the scrape rate, and CPU usage is a rate over a
known interval between two samples of the same process.

    sampler thread, every interval:
        supervisord: every process, its state and pid  ->  host.sampling: the tree of each pid, summed
        live version (state.history): declared agents, thresholds  ->  runtime: restarts, given up
        readiness probes of the up agents                         ->  Snapshot (immutable, swapped whole)
    scrape -> Collector.collect(): fresh metric families from the snapshot, labelled by agent and process

Series are labelled by agent and process name, never by PID. An agent the
live version declares but supervisord does not run is exported as down; an
agent apply removed is in neither, so its series are gone from the next scrape.
After each sample, `daemons.thresholds` evaluates the agents' thresholds
(alerts, limits acted on, forecasts, health, evidence) and its assessment
goes into the snapshot; between two samples longer than LIMIT_TICK, the
memory and open files of the agents with a limit are checked on their own.

Called by supervisord, through `orchestrator.exporter`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.server
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from orchestrator.core.units import MIB
from orchestrator.core.addresses import split_host_port
from orchestrator.core.alerts import LimitAction
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.model import Agent, Resources
from orchestrator.core.names import RUNTIME_DIR, is_internal
from orchestrator.core.policies import RESTART_REASONS, AgentHistory
from orchestrator.core.processes import RUNNING, STARTING, STOPPING, ProcessInfo
from orchestrator.daemons.notify import Notifications
from orchestrator.daemons.thresholds import Assessment, Observed, Thresholds
from orchestrator.host import cgroups, probes, sampling
from orchestrator.supervisord import launching
from orchestrator.supervisord.reports import report_limit
from orchestrator.state import runtime, samples
from orchestrator.state.history import History, Version
from orchestrator.supervisord.client import Client

ABSENT = "ABSENT"   # declared by the live version, unknown to supervisord
PROBE_TIMEOUT = 2.0
PROBE_WORKERS = 8
LIMIT_TICK = 1.0      # seconds: limits are checked at least this often, whatever the interval
LIMITS_REFRESH = 12   # samples between two reads of a process's open-files limit (a limit seldom changes)


class Supervisor(Protocol):
    """What the sampler asks supervisord (a `Client`; a test may pass its own)."""

    def processes(self) -> list[ProcessInfo]: ...

    def pid(self) -> int: ...


class ProcessSample(NamedTuple):   # tuples: 500 agents make a thousand of these a sample, at a third of a dataclass's cost
    agent: str
    process: str
    state: str
    pid: int
    uptime: float
    figures: sampling.Figures | None   # None: not running, or gone while sampled
    cpu_ratio: float | None             # cores used since the previous sample of the same pid
    cgroup: cgroups.Readback | None = None   # its cgroup's limits and use (None: not in one of ours)


class AgentSample(NamedTuple):
    name: str
    up: bool
    ready: bool
    history: AgentHistory
    agent: Agent | None                 # the live version's declaration (None: running, not declared)


@dataclass(frozen=True)
class Snapshot:
    """One sample of everything, immutable once made: what a scrape reads."""

    taken: float = 0.0
    processes: tuple[ProcessSample, ...] = ()
    agents: tuple[AgentSample, ...] = ()
    supervisord_up: bool = False
    supervisord: sampling.Figures | None = None
    version: int | None = None
    applied: float | None = None
    version_status: str = ""
    assessment: Assessment = field(default_factory=Assessment)


@dataclass
class Counters:
    samples: int = 0
    errors: int = 0       # samples or reads that failed (supervisord unreachable, a /proc file unreadable)
    vanished: int = 0     # processes that ended while they were sampled
    sample_seconds: float = 0.0
    sample_cpu_seconds: float = 0.0
    scrape_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _ready(agent: Agent | None, processes: list[ProcessInfo]) -> bool:
    if not processes or not all(p.state in (STARTING, RUNNING) for p in processes):
        return False
    if agent is None or agent.readiness is None:
        return all(p.state == RUNNING for p in processes)
    return probes.check(agent.readiness, timeout=min(PROBE_TIMEOUT, agent.readiness.timeout)).ok


class Sampler:
    """Takes a Snapshot every `interval` seconds in its own thread; `sample()` takes one now."""

    def __init__(self, state_dir: str, supervisor: Supervisor, *, interval: float, pss: bool = False,
                 log: Callable[[str], None] = lambda line: None, clock: Callable[[], float] = time.monotonic,
                 probe: bool = True, thresholds: Thresholds | None = None, limit_tick: float = LIMIT_TICK) -> None:
        self.state_dir = state_dir
        self.thresholds = thresholds
        self.limit_tick = limit_tick
        self._configured: int | None = None
        self.supervisor = supervisor
        self.interval = interval
        self.pss = pss
        self.log = log
        self.clock = clock
        self.probe = probe
        self.history = History(state_dir, programs=False)   # the live version's agents and settings are what it reads
        self.notifications = Notifications(self.history, log=log)   # the threshold alerts' (the keeper sends its own)
        if thresholds is not None:
            thresholds.notify = self.notifications.submit
        self.counters = Counters()
        self.snapshot = Snapshot()
        self._previous: dict[tuple[str, str], tuple[int, float, float]] = {}   # key -> (pid, cpu seconds, when)
        self._limits: dict[int, tuple[int, int | None]] = {}
        self._passes = 0
        self._layout: cgroups.Layout | None = None   # found at the first sample
        self._scope = launching.scope(state_dir)
        self._cgroups: dict[tuple[str, str], tuple[int, cgroups.Readback | None]] = {}   # (agent, process) -> pid, figures
        self._started: dict[str, float] = {}
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=PROBE_WORKERS, thread_name_prefix="readiness")

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="sampler", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """A full sample every `interval`; between two, when that is longer than `limit_tick`, a check of the
        memory and open files of the agents that have a limit every `limit_tick` (a limit is acted on within it)."""
        while not self._stop.is_set():
            self.sample()
            due = self.clock() + self.interval
            while not self._stop.wait(max(0.0, min(self.limit_tick, due - self.clock()))):
                if self.clock() >= due - 1e-3:
                    break
                self.check_limits()
        if self.thresholds is not None:
            self.thresholds.save()
        self.notifications.close(timeout=2.0)

    def check_limits(self) -> None:
        """Memory and open files of the agents with a limit, read alone (their trees' /proc files), against their
        rules: what the 1 s tick between two longer samples costs (README: Thresholds and alerts)."""
        if self.thresholds is None:
            return
        snap = self.snapshot
        watched = {a.name: a.agent for a in snap.agents
                   if a.agent is not None and (a.agent.resources.memory_mb.limit is not None
                                               or a.agent.resources.open_fds.limit is not None)}
        if not watched:
            return
        roots = {(p.agent, p.process): p.pid for p in snap.processes if p.agent in watched and p.pid and p.figures is not None}
        fds = {key for key in roots if watched[key[0]].resources.open_fds.limit is not None}
        try:
            found = sampling.light(roots, fds=fds)
            rss: dict[str, list[float]] = {}
            files: dict[str, list[float]] = {}
            for (agent, _), (memory, open_fds) in found.items():
                rss.setdefault(agent, []).append(memory / MIB)
                if open_fds is not None:
                    files.setdefault(agent, []).append(float(open_fds))
            observed = [Observed(name=a.name, agent=a.agent, up=a.up and a.name in rss,
                                 started_at=self._started.get(a.name),
                                 memory_mb=max(rss.get(a.name, []), default=None),
                                 open_fds=max(files.get(a.name, []), default=None))
                        for a in snap.agents if a.name in watched]
            self.thresholds.check(observed, metrics=("memory_mb", "open_fds"))
        except Exception as exc:  # noqa: BLE001 - a failed check must not end the thread: count it, say it, go on
            self.log(f"exporter: limit check failed: {type(exc).__name__}: {exc}")
            with self.counters.lock:
                self.counters.errors += 1

    def sample(self) -> Snapshot:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            snapshot = self._take()
        except Exception as exc:  # noqa: BLE001 - a failed sample must not end the thread: count it, say it, go on
            self.log(f"exporter: sample failed: {type(exc).__name__}: {exc}")
            with self.counters.lock:
                self.counters.errors += 1
            snapshot = self.snapshot
        else:
            self.snapshot = snapshot
            self._share(snapshot)
        with self.counters.lock:
            self.counters.samples += 1
            self.counters.sample_seconds = time.perf_counter() - started
            self.counters.sample_cpu_seconds = time.process_time() - cpu
        return snapshot

    def _share(self, snapshot: Snapshot) -> None:
        """The CPU % and RSS of every running tree, by pid, for `status` to read instead of sampling (state.samples)."""
        figures = {p.pid: (None if p.cpu_ratio is None else round(p.cpu_ratio * 100, 1), p.figures.rss_bytes)
                   for p in snapshot.processes if p.pid and p.figures is not None}
        try:
            samples.write(self.state_dir, snapshot.taken, self.interval, figures)
        except OSError as exc:   # status then samples on its own; the metrics are unaffected
            self.log(f"exporter: cannot share the sample with status: {exc}")
            with self.counters.lock:
                self.counters.errors += 1

    def _take(self) -> Snapshot:
        try:
            infos = [p for p in self.supervisor.processes() if not is_internal(p.group)]
            supervisord_pid: int | None = self.supervisor.pid()
            up = True
        except (OrchestratorError, OSError) as exc:
            if self.snapshot.supervisord_up or not self.counters.samples:  # said once, not every interval while it is down
                self.log(f"exporter: supervisord: {exc}")
            with self.counters.lock:
                self.counters.errors += 1
            infos, supervisord_pid, up = [], None, False
        try:
            version = self.history.current()
        except (OrchestratorError, OSError) as exc:
            self.log(f"exporter: live version: {exc}")
            version = None
        declared: Mapping[str, Agent] = version.agents if version else {}
        roots = {(p.group, p.name): p.pid for p in infos if p.pid and p.state in (STARTING, RUNNING, STOPPING)}
        self._passes += 1
        if self._passes % LIMITS_REFRESH == 0:
            self._limits.clear()
        found = sampling.sample(roots, pss=self.pss, limits=self._limits)
        own = None
        if supervisord_pid:  # supervisord's tree is every agent: its own figures are its own process's
            own = sampling.sample({0: supervisord_pid}, tree=False).trees.get(0)
        now = self.clock()
        processes = [self._process(p, found.trees.get((p.group, p.name)), now) for p in infos]
        processes = self._with_cgroups(processes, refresh=self._passes % LIMITS_REFRESH == 1)
        by_group: dict[str, list[ProcessInfo]] = {}
        for p in infos:
            by_group.setdefault(p.group, []).append(p)
        for name in sorted(set(declared) - set(by_group)):
            processes.append(ProcessSample(name, name, ABSENT, 0, 0.0, None, None))
        names = sorted(set(declared) | set(by_group))
        checks = (self._pool.map(lambda n: _ready(declared.get(n), by_group.get(n, [])), names) if self.probe
                  else (all(p.state == RUNNING for p in by_group.get(n, [])) and bool(by_group.get(n)) for n in names))
        try:
            recorded = set(os.listdir(os.path.join(self.state_dir, RUNTIME_DIR)))
        except OSError:
            recorded = set()
        agents = tuple(AgentSample(name=n, up=bool(by_group.get(n)) and all(p.state == RUNNING for p in by_group[n]),
                                   ready=ready, history=self._history(n) if f"{n}.json" in recorded else AgentHistory(),
                                   agent=declared.get(n))
                       for n, ready in zip(names, checks, strict=True))
        live = {(p.group, p.name) for p in infos}
        self._previous = {k: v for k, v in self._previous.items() if k in live}
        with self.counters.lock:
            self.counters.vanished += found.vanished
            self.counters.errors += found.errors
        assessment = self._assess(version, declared, infos, processes, agents)
        return Snapshot(assessment=assessment, taken=time.time(), processes=tuple(processes), agents=agents, supervisord_up=up,
                        supervisord=own, version=version.number if version else None,
                        applied=version.created if version else None, version_status=version.status if version else "")

    def _with_cgroups(self, processes: list[ProcessSample], *, refresh: bool) -> list[ProcessSample]:
        """Each running process with its cgroup's figures: the limits and counts read in full every
        LIMITS_REFRESH samples (or for a new pid), its memory every sample (one file)."""
        if self._layout is None:
            self._layout = cgroups.detect()
        layout, scope, kept = self._layout, self._scope, self._cgroups
        out = []
        for p in processes:
            if p.figures is None:
                out.append(p)
                continue
            key = (p.agent, p.process)
            before = kept.get(key)
            try:
                if before is None or refresh or before[0] != p.pid:
                    back = cgroups.read(layout, scope, p.agent, p.process)
                elif before[1] is None:
                    back = None
                else:
                    back = before[1].replace(memory_current=cgroups.memory_current(layout, scope, p.agent, p.process))
            except (cgroups.CgroupError, OSError, ValueError):
                back = None
            kept[key] = (p.pid, back)
            out.append(p._replace(cgroup=back) if back is not None else p)
        if len(kept) > len(processes):
            live = {(p.agent, p.process) for p in processes}
            self._cgroups = {k: v for k, v in kept.items() if k in live}
        return out

    def _configure(self, version: Version | None) -> None:
        """The live version's setting the thresholds need: the forecast horizon (its notification targets are
        followed by `notifications`)."""
        number = version.number if version else None
        if self.thresholds is None or number == self._configured:
            return
        self._configured = number
        settings = self.history.settings(version) if version else {}
        exporter = settings.get("exporter")
        if isinstance(exporter, dict) and isinstance(exporter.get("horizon"), (int, float)):
            self.thresholds.horizon = float(exporter["horizon"])

    def _assess(self, version: Version | None, declared: Mapping[str, Agent], infos: list[ProcessInfo],
                processes: list[ProcessSample], agents: tuple[AgentSample, ...]) -> Assessment:
        if self.thresholds is None:
            return Assessment()
        self._configure(version)
        by_agent: dict[str, list[ProcessSample]] = {}
        for p in processes:
            if p.figures is not None:
                by_agent.setdefault(p.agent, []).append(p)
        starts: dict[str, tuple[int, int]] = {}
        for info in infos:
            if info.pid and info.start and info.state in (STARTING, RUNNING):
                starts[info.group] = max(starts.get(info.group, (0, 0)), (info.start, info.pid))
        self._started = {name: float(start) for name, (start, _) in starts.items()}
        observed = []
        uptimes = {}
        for a in agents:
            ps = by_agent.get(a.name, ())
            start = starts.get(a.name)
            cpu = memory = fds = uptime = None
            limit = None
            for p in ps:   # the highest of its processes' (thresholds are per process); one loop, most agents have one
                f = p.figures
                assert f is not None   # by_agent holds the sampled ones only
                if p.cpu_ratio is not None and (cpu is None or p.cpu_ratio * 100.0 > cpu):
                    cpu = p.cpu_ratio * 100.0
                if memory is None or f.rss_bytes / MIB > memory:
                    memory = f.rss_bytes / MIB
                if fds is None or f.open_fds > fds:
                    fds = float(f.open_fds)
                if f.fd_limit is not None and (limit is None or f.fd_limit < limit):
                    limit = f.fd_limit
                if uptime is None or p.uptime < uptime:
                    uptime = p.uptime
            observed.append(Observed(
                name=a.name, agent=a.agent, up=a.up and bool(ps), started_at=float(start[0]) if start else None,
                run=float(start[0]) * 4194304 + start[1] if start else None,   # pids are below 2^22
                cpu_percent=cpu, memory_mb=memory, open_fds=fds, fd_limit=limit))
            if uptime is not None:
                uptimes[a.name] = uptime
        return self.thresholds.assess(observed, declared, ready={a.name: a.ready for a in agents},
                                      histories={a.name: a.history for a in agents}, uptimes=uptimes)

    def _history(self, name: str) -> AgentHistory:
        try:
            return runtime.load_agent(self.state_dir, name)
        except (OrchestratorError, OSError, ValueError):
            return AgentHistory()

    def _process(self, info: ProcessInfo, figures: sampling.Figures | None, now: float) -> ProcessSample:
        key = (info.group, info.name)
        ratio = None
        if figures is not None:
            before = self._previous.get(key)
            if before is not None and before[0] == info.pid and now > before[2]:
                ratio = max(0.0, (figures.cpu_seconds - before[1]) / (now - before[2]))
            self._previous[key] = (info.pid, figures.cpu_seconds, now)
        return ProcessSample(info.group, info.name, info.state, info.pid, info.uptime, figures, ratio)


LabelSet = tuple[tuple[tuple[str, str], ...], str]   # labels, (name, value) pairs, and their text in the exposition
LABEL_SETS = 65536   # label sets kept from one scrape to the next (one per process and a few per agent)


@lru_cache(maxsize=LABEL_SETS)
def labelset(*pairs: tuple[str, str]) -> LabelSet:
    """The label set of `pairs` (name, value), made once: the same agents and processes make the same label sets
    at every scrape, so each one's text is escaped once, not 16,000 times a scrape."""
    return pairs, _text(pairs)


def _text(pairs: Iterable[tuple[str, str]]) -> str:
    """Labels as the text format writes them between braces: name="value",... (values escaped)."""
    return ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)


class Rows(Metric):
    """A metric family of many labelled samples (those of every process and agent: some 16,000 a scrape at 500
    agents), kept as rows of (label set, value): `exposition` writes each row with its label set's text, and
    the `Sample`s prometheus-client's own readers take (`samples`) are made only when one asks."""

    def __init__(self, name: str, documentation: str, typ: str) -> None:
        super().__init__(name, documentation, typ)
        self.sample_name = name + ("_total" if typ == "counter" else "")
        self.rows: list[tuple[LabelSet, float]] = []

    @property
    def samples(self) -> list[Sample]:
        return [Sample(self.sample_name, dict(labels), value, None, None) for (labels, _), value in self.rows]

    @samples.setter
    def samples(self, value: list[Sample]) -> None:   # Metric.__init__ sets it empty; the rows are the samples
        if value:
            raise TypeError("the samples of Rows are its rows")

    def put(self, labels: LabelSet, value: float) -> None:
        self.rows.append((labels, float(value)))   # written as prometheus-client writes a float: 1.0, not 1


class Labelled(Rows):
    """A family whose rows carry one label more than their kept label set (a process's state, a restart's reason,
    a threshold's severity): rows of (label set, the label's value, value), the text of the whole set written
    as the row is, never kept. Made per scrape, the sets with that label were 7,000 tuples and strings at 500
    agents, built and dropped by every scrape."""

    def __init__(self, name: str, documentation: str, typ: str, label: str) -> None:
        super().__init__(name, documentation, typ)
        self.label = label
        self.rows: list[tuple[LabelSet, str, float]] = []  # type: ignore[assignment]

    @property
    def samples(self) -> list[Sample]:
        return [Sample(self.sample_name, {**dict(labels), self.label: extra}, value, None, None)
                for (labels, _), extra, value in self.rows]

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        if value:
            raise TypeError("the samples of Labelled are its rows")

    def put(self, labels: LabelSet, value: float) -> None:   # noqa: ARG002 - a row needs the label's value
        raise TypeError("a Labelled row is (label set, the label's value, value): append it to rows")


def gauge(name: str, documentation: str) -> Rows:
    return Rows(name, documentation, "gauge")


def labelled(name: str, documentation: str, label: str, typ: str = "gauge") -> Labelled:
    return Labelled(name, documentation, typ, label)


def counter(name: str, documentation: str) -> Rows:
    return Rows(name, documentation, "counter")


class Exporter(Collector):
    """The prometheus-client collector: fresh metric families from the sampler's latest snapshot on every scrape."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def describe(self) -> Iterable[Metric]:
        return list(self._families(Snapshot(), Counters()))

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        counters = self.sampler.counters
        with counters.lock:
            copy = Counters(samples=counters.samples, errors=counters.errors, vanished=counters.vanished,
                            sample_seconds=counters.sample_seconds, sample_cpu_seconds=counters.sample_cpu_seconds,
                            scrape_seconds=counters.scrape_seconds)
        yield from self._families(self.sampler.snapshot, copy)
        with counters.lock:
            counters.scrape_seconds = time.perf_counter() - started

    def _families(self, snap: Snapshot, counters: Counters) -> Iterator[Metric]:
        yield from _process_families(snap)
        yield from _agent_families(snap)
        yield from _threshold_families(snap.assessment)
        yield from _global_families(snap, counters)


def _of_cgroup(name: str) -> Callable[[ProcessSample, sampling.Figures], float | None]:
    """A figure of the process's cgroup (None: not in one)."""
    return lambda p, f: getattr(p.cgroup, name) if p.cgroup is not None else None


# the families of every process that are one figure of its tree each: (name, kind, help, the figure, or None
# when the family has no row for the process)
_FIGURES: tuple[tuple[str, Callable[[str, str], Rows], str, Callable[[ProcessSample, sampling.Figures], float | None]], ...] = (
    ("tree_processes", gauge, "processes in the tree (the agent's process and all its descendants)",
     lambda p, f: f.processes),
    ("cpu_seconds", counter, "user and system CPU seconds of the tree, with its reaped children's",
     lambda p, f: f.cpu_seconds),
    ("cpu_usage_ratio", gauge, "CPU cores used by the tree between the last two samples (1 = one core; CPU % / 100)",
     lambda p, f: p.cpu_ratio),
    ("resident_memory_bytes", gauge, "resident memory of the tree, summed per process (shared pages count in each)",
     lambda p, f: f.rss_bytes),
    ("virtual_memory_bytes", gauge, "virtual memory of the tree, summed per process", lambda p, f: f.vms_bytes),
    ("proportional_memory_bytes", gauge, "PSS of the tree: shared pages divided among their sharers (exporter.pss)",
     lambda p, f: None if f.uss_bytes is None else f.pss_bytes),
    ("unique_memory_bytes", gauge, "USS of the tree: pages private to its processes (exporter.pss)",
     lambda p, f: None if f.pss_bytes is None else f.uss_bytes),
    ("read_bytes", counter, "bytes the tree read from storage", lambda p, f: f.read_bytes),
    ("written_bytes", counter, "bytes the tree wrote to storage", lambda p, f: f.write_bytes),
    ("open_fds", gauge, "open file descriptors of the tree", lambda p, f: f.open_fds),
    ("max_fds", gauge, "the process's soft limit on open files", lambda p, f: f.fd_limit),
    ("threads", gauge, "threads of the tree", lambda p, f: f.threads),
    ("context_switches", counter, "context switches of the main thread of each process of the tree",
     lambda p, f: f.context_switches),
    ("nice", gauge, "niceness of the process (its main thread), read from the kernel", lambda p, f: f.nice),
    # its cgroup (host.cgroups), where the launcher could make one: the kernel's own accounting of the whole
    # tree, each page once (page cache included), and the limits in force, read back
    ("cgroup_memory_bytes", gauge, "memory the process's cgroup uses: its whole tree, each page counted once",
     _of_cgroup("memory_current")),
    ("cgroup_processes", gauge, "processes and threads in the process's cgroup",
     _of_cgroup("pids_current")),
    ("cgroup_memory_max_bytes", gauge, "memory limit the kernel enforces on the cgroup (resources.memory_max)",
     _of_cgroup("memory_max")),
    ("cgroup_memory_high_bytes", gauge, "memory above which the kernel throttles the cgroup (resources.memory_high)",
     _of_cgroup("memory_high")),
    ("cgroup_cpu_max_cores", gauge, "CPU quota of the cgroup in cores (resources.cpu_max)",
     _of_cgroup("cpu_max")),
    ("cgroup_max_processes", gauge, "limit on processes and threads in the cgroup (resources.max_processes)",
     _of_cgroup("max_processes")),
    ("cgroup_oom_kills", gauge, "processes the kernel killed for memory in the cgroup during this run",
     _of_cgroup("oom_kills")),
)


def _process_families(snap: Snapshot) -> Iterator[Metric]:
    """The families of every process, each made as it is yielded: a scrape holds one family's rows at a time,
    not the 14,000 rows of all of them at 500 agents (3 MB more at the peak of every scrape)."""
    def family(make: Callable[[str, str], Rows], name: str, doc: str) -> Rows:
        return make(f"orchestrator_process_{name}", doc)

    def labelled_family(name: str, doc: str, label: str) -> Labelled:
        return labelled(f"orchestrator_process_{name}", doc, label)

    keyed = [(labelset(("agent", p.agent), ("process", p.process)), p) for p in snap.processes]
    state = labelled_family("state", "1, labelled with the supervisord state the process is in (ABSENT: declared, "
                                     "unknown to supervisord)", "state")
    # the state it is in only: eight zeros a process would double a scrape
    state.rows = [(labels, p.state, 1.0) for labels, p in keyed]
    yield state
    uptime = family(gauge, "uptime_seconds", "seconds since the process started (0 when not up)")
    uptime.rows = [(labels, float(p.uptime)) for labels, p in keyed]
    yield uptime
    del state, uptime
    sampled = [(labels, p, p.figures) for labels, p in keyed if p.figures is not None]
    for name, make, doc, figure in _FIGURES:
        rows = family(make, name, doc)
        rows.rows = [(labels, float(value)) for labels, p, f in sampled if (value := figure(p, f)) is not None]
        yield rows
    tcp = labelled_family("tcp_connections", "TCP sockets of the tree, by state (established and listen always; others "
                                             "when in use)", "state")
    tcp.rows = [(labels, name, float(f.tcp.get(name, 0))) for labels, _, f in sampled
                for name in sorted({"established", "listen", *f.tcp})]  # the two that always matter, and any other in use
    yield tcp
    del tcp
    listening = labelled_family("listening_port", "1 for each TCP port the tree listens on", "port")
    listening.rows = [(labels, str(port), 1.0) for labels, _, f in sampled for port in sorted(f.listening_ports)]
    yield listening


def _agent_families(snap: Snapshot) -> Iterator[Metric]:
    """The families of every agent, each made as it is yielded (as the processes')."""
    agents = [(labelset(("agent", a.name)), a) for a in snap.agents]
    up = gauge("orchestrator_agent_up", "1 when every process of the agent is RUNNING (0 when declared but down)")
    up.rows = [(labels, 1.0 if a.up else 0.0) for labels, a in agents]
    yield up
    ready = gauge("orchestrator_agent_ready", "1 when the agent is up and its readiness probe passes")
    ready.rows = [(labels, 1.0 if a.ready else 0.0) for labels, a in agents]
    yield ready
    del up, ready
    restarts = labelled("orchestrator_agent_restarts",
                        "restarts, by reason: crash, liveness, memory_limit, cpu_limit, fds_limit (the restart keeper's), "
                        "dependency (back after its dependency), operator (orchestrator restart)", "reason", "counter")
    add = restarts.rows.append
    for labels, a in agents:
        counted = a.history.restart_reasons
        # automatic restarts counted before reasons were kept are crashes: the labelled sum still says them all
        earlier = max(0, a.history.restarts - sum(v for k, v in counted.items() if k not in ("dependency", "operator")))
        for reason in RESTART_REASONS:
            add((labels, reason, float(counted.get(reason, 0) + (earlier if reason == "crash" else 0))))
    yield restarts
    del restarts, add
    given_up = gauge("orchestrator_agent_given_up", "1 when the restart policy gave the agent up")
    given_up.rows = [(labels, 1.0 if a.history.given_up else 0.0) for labels, a in agents]
    yield given_up
    del given_up
    declared = [(labels, _thresholds(a.name, a.agent.resources)) for labels, a in agents if a.agent is not None]
    cpu = labelled("orchestrator_agent_threshold_cpu_ratio", "configured CPU thresholds (resources.cpu_percent / 100)",
                   "severity")
    cpu.rows = [(labels, severity, value) for labels, rows in declared for family, severity, value in rows if family == 0]
    yield cpu
    del cpu
    memory = labelled("orchestrator_agent_threshold_memory_bytes", "configured memory thresholds (resources.memory_mb)",
                      "severity")
    memory.rows = [(labels, severity, value) for labels, rows in declared for family, severity, value in rows if family == 1]
    yield memory
    del memory
    files = gauge("orchestrator_agent_threshold_open_fds", "configured limit on open files (resources.open_files)")
    files.rows = [(labels, value) for labels, rows in declared for family, _, value in rows if family == 2]
    yield files


_THRESHOLD_ROWS: dict[str, tuple[Resources, tuple[tuple[int, str, float], ...]]] = {}


def _thresholds(agent: str, resources: Resources) -> tuple[tuple[int, str, float], ...]:
    """The threshold gauges of an agent, as (family: 0 CPU, 1 memory, 2 open files; severity, "" for open files;
    value): the same declaration from one scrape to the next, so they are made once per live version (kept by
    the declaration's identity: hashing it, a dozen nested fields, cost more than the rows)."""
    kept = _THRESHOLD_ROWS.get(agent)
    if kept is None or kept[0] is not resources:
        if len(_THRESHOLD_ROWS) > LABEL_SETS:
            _THRESHOLD_ROWS.clear()
        kept = _THRESHOLD_ROWS[agent] = (resources, _threshold_rows(resources))
    return kept[1]


def _threshold_rows(resources: Resources) -> tuple[tuple[int, str, float], ...]:
    rows = []
    for severity in ("warning", "critical", "limit"):
        value = getattr(resources.cpu_percent, severity)
        if value is not None:
            rows.append((0, severity, value / 100.0))
        value = getattr(resources.memory_mb, severity)
        if value is not None:
            rows.append((1, severity, value * 1024.0 * 1024.0))
    if resources.open_files is not None:
        rows.append((2, "", float(resources.open_files)))
    return tuple(rows)


def _threshold_families(assessment: Assessment) -> Iterator[Metric]:
    alert = gauge("orchestrator_agent_alert", "1 while the alert of this level on this metric fires")
    for record in assessment.firing:
        alert.put(labelset(("agent", record.agent), ("level", record.level), ("metric", record.metric)), 1.0)
    health = gauge("orchestrator_agent_health_score", "health from 0 to 100 (core.health)")
    penalty = labelled("orchestrator_agent_health_penalty_points", "points the health score loses, by cause", "cause")
    for name, h in sorted(assessment.health.items()):
        labels = labelset(("agent", name))
        health.put(labels, h.score)
        for p in h.penalties:
            penalty.rows.append((labels, p.cause, float(p.points)))
    point = gauge("orchestrator_agent_exhaustion_seconds",
                  "seconds until the trend reaches the limit (memory: memory_mb.limit; fds: open_fds.limit or the "
                  "open-files limit); absent while there is no forecast or it is not growing")
    earliest = gauge("orchestrator_agent_exhaustion_earliest_seconds", "the earliest end of the forecast's 95% band")
    latest = gauge("orchestrator_agent_exhaustion_latest_seconds",
                   "the latest end of the forecast's 95% band (absent: possibly never)")
    resources = {"memory_mb": "memory", "open_fds": "fds"}
    for (name, metric), fc in sorted(assessment.forecasts.items()):
        labels = labelset(("agent", name), ("resource", resources[metric]))
        if fc.seconds is not None:
            point.put(labels, fc.seconds)
        if fc.earliest is not None:
            earliest.put(labels, fc.earliest)
        if fc.latest is not None:
            latest.put(labels, fc.latest)
    yield from (alert, health, penalty, point, earliest, latest)


def _global_families(snap: Snapshot, c: Counters) -> Iterator[Metric]:
    up = GaugeMetricFamily("orchestrator_supervisord_up", "1 when supervisord answers")
    up.add_metric([], 1.0 if snap.supervisord_up else 0.0)
    yield up
    rss = GaugeMetricFamily("orchestrator_supervisord_resident_memory_bytes", "resident memory of supervisord's own process")
    cpu = CounterMetricFamily("orchestrator_supervisord_cpu_seconds", "CPU seconds of supervisord's own process")
    fds = GaugeMetricFamily("orchestrator_supervisord_open_fds", "open file descriptors of supervisord's own process")
    if snap.supervisord is not None:
        rss.add_metric([], snap.supervisord.rss_bytes)
        cpu.add_metric([], snap.supervisord.cpu_seconds)
        fds.add_metric([], snap.supervisord.open_fds)
    yield from (rss, cpu, fds)
    version = GaugeMetricFamily("orchestrator_config_version", "number of the live version of the configuration")
    applied = GaugeMetricFamily("orchestrator_config_applied_timestamp_seconds", "when the live version was recorded (Unix time)")
    info = InfoMetricFamily("orchestrator_config", "the live version: its number, status and time", labels=[])
    if snap.version is not None and snap.applied is not None:
        version.add_metric([], snap.version)
        applied.add_metric([], snap.applied)
        info.add_metric([], {"version": str(snap.version), "status": snap.version_status,
                             "applied": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snap.applied))})
    yield from (version, applied, info)
    samples = CounterMetricFamily("orchestrator_exporter_samples", "samples taken")
    samples.add_metric([], c.samples)
    errors = CounterMetricFamily("orchestrator_exporter_sample_errors", "samples or reads that failed")
    errors.add_metric([], c.errors)
    vanished = CounterMetricFamily("orchestrator_exporter_vanished_processes", "processes that ended while they were sampled")
    vanished.add_metric([], c.vanished)
    duration = GaugeMetricFamily("orchestrator_exporter_sample_duration_seconds", "wall time of the last sample")
    duration.add_metric([], c.sample_seconds)
    cpu_used = GaugeMetricFamily("orchestrator_exporter_sample_cpu_seconds", "CPU time of the last sample")
    cpu_used.add_metric([], c.sample_cpu_seconds)
    scrape = GaugeMetricFamily("orchestrator_exporter_scrape_duration_seconds", "time the previous scrape took to collect")
    scrape.add_metric([], c.scrape_seconds)
    taken = GaugeMetricFamily("orchestrator_exporter_last_sample_timestamp_seconds", "when the last sample was taken (Unix time)")
    if snap.taken:
        taken.add_metric([], snap.taken)
    yield from (samples, errors, vanished, duration, cpu_used, scrape, taken)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_INF = float("inf")


def _number(value: float) -> str:
    value = float(value)
    if -_INF < value < _INF:   # the common case first: false for NaN and both infinities
        return repr(value)
    if value != value:
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


_TEXT_TYPES = {"counter": "_total", "info": "_info"}


CHUNK = 500   # rows written to one part of a scrape


def exposition_parts(reg: CollectorRegistry) -> Iterator[bytes]:
    """The registry's families in Prometheus's text format 0.0.4, as prometheus-client's generate_latest writes it
    (a test holds the two to the same samples), one family at a time, at a fraction of its cost: a scrape of 500
    agents is some 16,000 lines, and generate_latest validates and escapes every label of every line, where the
    rows of a `Rows` family carry their text, made once per label set. A part at a time (a family, or CHUNK rows
    of a long one): the server sends each as it is written, so the whole text (1.5 MB at 500 agents, and as much
    again encoded) is never held at once."""
    for family in reg.collect():
        name = family.name + _TEXT_TYPES.get(family.type, "")
        kind = "gauge" if family.type == "info" else family.type
        help_text = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        head = f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
        if isinstance(family, Rows):
            rows, sample = family.rows, family.sample_name
            extras: list[tuple[LabelSet, str, float]] = family.rows if isinstance(family, Labelled) else []
            if not rows:
                yield head.encode("utf-8")
            # CHUNK rows a part: a family of 3,500 rows is not held as text, and again encoded, all at once
            for at in range(0, len(rows), CHUNK):
                if isinstance(family, Labelled):
                    label = family.label
                    lines = [f'{sample}{{{text},{label}="{_escape(extra)}"}} '
                             f'{repr(value) if -_INF < value < _INF else _number(value)}\n'
                             for (_, text), extra, value in extras[at:at + CHUNK]]
                else:
                    # the common case inline (a finite float), the rest through _number: false for NaN and both infinities
                    lines = [f"{sample}{{{text}}} {repr(value) if -_INF < value < _INF else _number(value)}\n"
                             for (_, text), value in rows[at:at + CHUNK]]
                yield ((head if at == 0 else "") + "".join(lines)).encode("utf-8")
        else:
            out = [head]
            for s in family.samples:
                if s.labels:
                    out.append(f"{s.name}{{{_text(s.labels.items())}}} {_number(s.value)}\n")
                else:
                    out.append(f"{s.name} {_number(s.value)}\n")
            yield "".join(out).encode("utf-8")


def exposition(reg: CollectorRegistry) -> bytes:
    """The whole text of a scrape (exposition_parts, joined)."""
    return b"".join(exposition_parts(reg))


class _Handler(http.server.BaseHTTPRequestHandler):
    registry: CollectorRegistry

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.end_headers()   # HTTP/1.0 (http.server's default): the body ends where the connection closes
        for part in exposition_parts(self.registry):
            self.wfile.write(part)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass  # a scrape every few seconds is no news


def start_server(host: str, port: int, reg: CollectorRegistry) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"registry": reg})
    server_class = type("Server", (http.server.ThreadingHTTPServer,),
                        {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET, "daemon_threads": True})
    server: http.server.ThreadingHTTPServer = server_class((host, port), handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def registry(sampler: Sampler) -> CollectorRegistry:
    """A registry with the exporter's collector and the exporter's own process figures (process_*)."""
    reg = CollectorRegistry(auto_describe=True)
    reg.register(Exporter(sampler))
    ProcessCollector(registry=reg)
    return reg


def settle() -> None:
    """Once started: what start-up made (modules, classes) leaves the collector's view. A sample of 500 agents makes
    some 20,000 short-lived objects, and every full collection they set off would walk all of start-up's again
    (gc.freeze: about a quarter of a sample's CPU at 500)."""
    gc.freeze()


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


BIND_RETRY = 5.0  # seconds between attempts to listen on an address in use
STOP_WAIT = 1.0  # seconds the sampler may take to finish at exit (the evidence saved): an orphaned exporter must go soon
PARENT_CHECK = 1.0  # seconds between two looks at whether supervisord, the parent, is still there


def serve(listen: str, reg: CollectorRegistry, *, stop: threading.Event, gone: Callable[[], bool] = lambda: False) -> None:
    """Listen on `listen` (HOST:PORT); an address in use is tried again every BIND_RETRY seconds, not fatal:
    supervisord would restart an exiting exporter at once, over and over. `gone`: supervisord, the parent, has
    died; the retries end then too, so an exporter kept from its port never outlives its supervisord."""
    host, port = split_host_port(listen)
    said = False
    while not stop.is_set() and not gone():
        try:
            start_server(host, port, reg)
            log(f"exporter: listening on {listen}")
            return
        except OSError as exc:
            if not said:
                log(f"exporter: cannot listen on {listen} ({exc}); trying again every {BIND_RETRY:g}s")
                said = True
            stop.wait(BIND_RETRY)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.exporter")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--listen", default="127.0.0.1:9300")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--pss", action="store_true")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()

    def gone() -> bool:  # supervisord was killed: its exporter must not outlive it, holding the port
        return os.getppid() != parent

    client = Client(args.socket, timeout=10.0)

    def report(action: LimitAction) -> None:
        report_limit(client, action.agent, reason=action.reason, detail=action.detail, action=action.action)

    sampler = Sampler(args.state_dir, client, interval=args.interval, pss=args.pss, log=log,
                      thresholds=Thresholds(args.state_dir, report=report, log=log))
    reg = registry(sampler)
    settle()
    sampling_thread = sampler.start()
    serve(args.listen, reg, stop=stop, gone=gone)
    with contextlib.suppress(KeyboardInterrupt):
        while not gone() and not stop.wait(PARENT_CHECK):
            pass
    if gone():
        log("exporter: supervisord is gone; exiting")
    sampler.stop()
    sampling_thread.join(STOP_WAIT)   # it saves the evidence and hands the notifier what it holds
