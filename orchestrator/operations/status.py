"""status: what runs, how it is doing, and whether it is what the live version wants.

Owned here: one row per supervisord process of an agent, with the fields of
`status --output json` (name, agent, state, pid, uptime_seconds, restarts,
cpu_percent, memory_rss_bytes, health, ready, score, penalties, drift), the text table, and the
verdict (every desired agent RUNNING and ready, or not). CPU and memory cover
each agent's whole process tree, sampled over a short interval (host.processes).
Called by the cli.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields


from orchestrator.core.units import MIB
from orchestrator.core.health import HealthInputs, score
from orchestrator.core.names import is_internal
from orchestrator.host import cgroups, controls, probes
from orchestrator.host.processes import sample as sample_trees
from orchestrator.core.processes import ProcessInfo, RUNNING, UP_STATES
from orchestrator.supervisord.client import Client
from orchestrator.core.model import Agent
from orchestrator.core.policies import AgentHistory

CPU_SAMPLE = 0.25   # seconds between the two CPU readings a percentage needs
CHECK_TIMEOUT = 2.0


@dataclass(frozen=True)
class Row:
    name: str
    agent: str
    state: str
    pid: int | None
    uptime_seconds: float
    restarts: int
    cpu_percent: float | None
    memory_rss_bytes: int | None
    health: str      # "ok", "failing: ...", "unknown" (no liveness probe), "-" (not running)
    ready: bool
    restarts_in_window: int = 0           # failed attempts inside the restart policy's window
    given_up: bool = False
    next_restart_in: float | None = None  # seconds, while backing off
    reason: str = ""                      # why it last exited, or was given up
    score: int | None = None              # health 0-100 (core.health); None for a process of no declared agent
    penalties: tuple[dict[str, object], ...] = ()   # each point lost: cause, points, detail
    drift: tuple[str, ...] = ()           # what was changed outside orchestrator about its agent (core.drift)
    controls: dict[str, object] | None = None   # what is in force on the process, read back (host.controls)

    def as_dict(self) -> dict[str, object]:
        # field by field: dataclasses.asdict deep-copies every value, a seventh of `status` at 500 agents
        plain: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        plain["penalties"] = [dict(p) for p in self.penalties]
        plain["drift"] = list(self.drift)
        if self.controls is None:
            del plain["controls"]
        return plain


# group -> (its processes' (pid, state), when its probes ran (monotonic), their answer (health, ready))
Checked = dict[str, tuple[tuple[tuple[int, str], ...], float, tuple[str, bool]]]


def _check(agent: Agent | None, processes: list[ProcessInfo]) -> tuple[str, bool]:
    """(health, ready) of an agent whose processes are `processes`."""
    if agent is None:
        return "unknown", all(p.state == RUNNING for p in processes)
    up = all(p.state in UP_STATES for p in processes)
    if not up:
        return "-", False
    ready = all(p.state == RUNNING for p in processes)
    if agent.readiness is not None:
        ready = probes.check(agent.readiness, timeout=min(CHECK_TIMEOUT, agent.readiness.timeout)).ok
    health = "unknown"
    if agent.liveness is not None:
        result = probes.check(agent.liveness, timeout=min(CHECK_TIMEOUT, agent.liveness.timeout))
        health = "ok" if result.ok else f"failing: {result.detail}"
    return health, ready


def collect(client: Client, agents: Mapping[str, Agent], names: list[str] | None = None,
            histories: Mapping[str, AgentHistory] | None = None, now: float | None = None,
            alerts: Mapping[str, tuple[str, ...]] | None = None,
            sampled: Mapping[int, tuple[float | None, int | None]] | None = None,
            processes: list[ProcessInfo] | None = None, checked: Checked | None = None,
            check_every: float = 0.0, scope: str | None = None) -> list[Row]:
    """A row per process of the agents (all of them, or `names`); a desired agent supervisord lacks is ABSENT.

    `alerts`: the levels of each agent's open alerts, which its health score counts. `sampled`: CPU and RSS by
    pid from the exporter's latest sample (state.samples); without it, status samples the process trees itself.
    `processes`: supervisord's process list when the caller has it (asked for here otherwise). `checked`: a
    caller that looks often (the control room, twice a second) keeps the probes' answers there, and an agent's
    probes run again only after `check_every` seconds or when its processes changed (pid or state). `scope`:
    the state directory's cgroup scope (supervisord.launching), to read back the controls in force on each
    running process (its limits, namespaces, user, cgroup) into its row; without it, none are read."""
    by_group: dict[str, list[ProcessInfo]] = {}
    for process in client.processes() if processes is None else processes:
        if not is_internal(process.group):
            by_group.setdefault(process.group, []).append(process)
    wanted = sorted(set(agents) | set(by_group)) if not names else list(names)
    pids = [p.pid for g in wanted for p in by_group.get(g, []) if p.pid]
    figures = dict(sampled) if sampled is not None and all(pid in sampled for pid in pids) else sample_trees(pids, CPU_SAMPLE)
    def check(group: str) -> tuple[str, bool]:
        found = by_group.get(group, [])
        if checked is None:
            return _check(agents.get(group), found)
        key, at = tuple((p.pid, p.state) for p in found), time.monotonic()
        kept = checked.get(group)
        if kept is not None and kept[0] == key and at - kept[1] < check_every:
            return kept[2]
        result = _check(agents.get(group), found)
        checked[group] = (key, at, result)
        return result

    layout = cgroups.detect() if scope is not None else None
    running = [(g, p) for g in wanted for p in by_group.get(g, []) if p.pid and p.state in UP_STATES]

    def in_force(item: tuple[str, ProcessInfo]) -> tuple[int, dict[str, object]]:
        group, process = item
        return process.pid, controls.read(process.pid, scope=scope, agent=group, process=process.name, layout=layout)

    with ThreadPoolExecutor(max_workers=16) as pool:
        checks = dict(zip(wanted, pool.map(check, wanted), strict=True))
    # a dozen small reads a process (/proc and its cgroup), one process after another: in threads they took twice
    # as long (each read is too short to wait on; the threads only queue for the interpreter)
    read_back = dict(map(in_force, running)) if layout is not None else {}
    rows = []
    now = time.time() if now is None else now
    for group in wanted:
        history = (histories or {}).get(group, AgentHistory())
        policy = {"restarts": history.restarts, "restarts_in_window": len(history.failures), "given_up": history.given_up,
                  "next_restart_in": None if history.next_restart_at is None else round(max(0.0, history.next_restart_at - now), 1),
                  "reason": history.reason}
        processes = by_group.get(group)
        agent = agents.get(group)
        opened = (alerts or {}).get(group, ())
        if not processes:
            points, penalties = _health(agent, history, None, opened)
            rows.append(Row(group, group, "ABSENT", None, 0.0, cpu_percent=None, memory_rss_bytes=None, health="-",
                            ready=False, score=points, penalties=penalties, **policy))  # type: ignore[arg-type]
            continue
        health, ready = checks[group]
        for process in processes:
            cpu, rss = figures.get(process.pid, (None, None))
            name = process.name if process.name == group else f"{group}:{process.name}"
            state = "GIVEN UP" if history.given_up and process.state not in UP_STATES else process.state
            up = process.state in UP_STATES
            figures_now = HealthInputs(up=up, ready=ready and up, given_up=history.given_up,
                                       reason=history.reason or process.state, cpu_percent=cpu,
                                       memory_mb=None if rss is None else rss / MIB, uptime=process.uptime if up else None,
                                       liveness_failures=1 if health.startswith("failing") else 0)
            points, penalties = _health(agent, history, figures_now, opened)
            rows.append(Row(name, group, state, process.pid or None, process.uptime, cpu_percent=cpu, memory_rss_bytes=rss,
                            health=health, ready=ready and up, score=points, penalties=penalties,
                            controls=read_back.get(process.pid) if up else None,
                            **policy))  # type: ignore[arg-type]
    return rows


def _health(agent: Agent | None, history: AgentHistory, figures: HealthInputs | None,
            alerts: tuple[str, ...]) -> tuple[int | None, tuple[dict[str, object], ...]]:
    """The score and penalties of one process of `agent` (core.health); (None, ()) for an undeclared agent."""
    if agent is None:
        return None, ()
    inputs = figures or HealthInputs(up=False, ready=False, given_up=history.given_up, reason=history.reason or "absent")
    resources, policy = agent.resources, agent.restart
    health = score(inputs._replace(restarts_in_window=len(history.failures), max_attempts=policy.max_attempts,
                                   reset_after=policy.reset_after, cpu=resources.cpu_percent, memory=resources.memory_mb,
                                   fd_limit=resources.open_files, alerts=alerts))
    return health.score, tuple(asdict(p) for p in health.penalties)


def healthy(rows: list[Row], desired: Mapping[str, Agent]) -> bool:
    """Every desired agent has all its processes up and ready.

    A process still STARTING (inside supervisord's startsecs) counts when its
    readiness probe passes: that is what `apply` waited for.
    """
    return all(r.state in UP_STATES and r.ready for r in rows if r.agent in desired)


_COLORS = {"GIVEN UP": "red", "RUNNING": "green", "STARTING": "yellow", "BACKOFF": "yellow", "STOPPING": "yellow",
           "STOPPED": "red", "EXITED": "red", "FATAL": "red", "ABSENT": "red", "UNKNOWN": "red"}


def _uptime(seconds: float, up: bool) -> str:
    if not up:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024  # type: ignore[assignment]
    return "-"  # pragma: no cover


def _short(text: str, width: int = 48) -> str:
    """A table cell: long texts cut (the whole text is in `--output json`)."""
    return text if len(text) <= width else text[: width - 3] + "..."


def describe_controls(found: Mapping[str, object]) -> list[str]:
    """The controls in force on a process, as lines for `status NAME`."""
    lines = []
    plain = [f"{key} {found[key]}" for key in ("user", "group", "nice", "oom_score_adj") if found.get(key) is not None]
    if found.get("cpu_affinity") is not None:
        plain.append("cpu_affinity " + ",".join(map(str, found["cpu_affinity"])))  # type: ignore[call-overload]
    for key in ("open_files", "process_limit"):
        plain.append(f"{key} {'unlimited' if found.get(key) is None else found[key]}")
    plain.append(f"core_dumps {'allowed' if found.get('core_dumps') else 'off'}")
    plain.append(f"network {'its own (none)' if found.get('own_network') else 'the host'}")
    plain.append(f"mounts {'its own' if found.get('own_mounts') else 'the host'}")
    lines.append(", ".join(plain))
    cgroup = found.get("cgroup")
    if isinstance(cgroup, Mapping):
        def size(value: object) -> str:
            return "unlimited" if value is None else _bytes(int(value))  # type: ignore[call-overload]
        lines.append(f"cgroup: memory_max {size(cgroup.get('memory_max'))}, memory_high {size(cgroup.get('memory_high'))}, "
                     f"cpu_max {'unlimited' if cgroup.get('cpu_max') is None else cgroup['cpu_max']}, "
                     f"max_processes {'unlimited' if cgroup.get('max_processes') is None else cgroup['max_processes']}; "
                     f"using {size(cgroup.get('memory_current'))} and {cgroup.get('pids_current')} process(es), "
                     f"{cgroup.get('oom_kills') if cgroup.get('oom_kills') is not None else 'unknown'} OOM kill(s)")
    else:
        lines.append("cgroup: none (the launcher could not place it in one)")
    inactive = found.get("inactive")
    if isinstance(inactive, Mapping) and inactive:
        lines.append("not active here: " + "; ".join(f"{k}: {v}" for k, v in sorted(inactive.items())))
    return lines


def table(rows: list[Row]) -> list[tuple[list[str], str | None]]:
    """Rows as table cells, each with the color of its state."""
    header = ["AGENT", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "READY", "SCORE", "HEALTH", "NOTE"]
    lines: list[tuple[list[str], str | None]] = [(header, None)]
    for row in rows:
        cpu = "-" if row.cpu_percent is None else f"{row.cpu_percent:.1f}"
        restarts = f"{row.restarts} ({row.restarts_in_window} now)" if row.restarts_in_window else str(row.restarts)
        note = (f"restart in {row.next_restart_in:g}s" if row.next_restart_in is not None
                else row.reason if row.given_up or row.state not in UP_STATES else "")
        uptime = _uptime(row.uptime_seconds, row.state in UP_STATES)
        lines.append(([row.name, row.state, str(row.pid or "-"), uptime, restarts, cpu, _bytes(row.memory_rss_bytes),
                       "yes" if row.ready else "no", "-" if row.score is None else str(row.score), _short(row.health),
                       _short(note)], _COLORS.get(row.state)))
    return lines
