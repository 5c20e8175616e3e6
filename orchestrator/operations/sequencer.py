"""Starting agents in dependency order, each only once every dependency is ready.

Owned here: the start of a set of agents as a dependency-driven schedule. An
agent starts the moment all it depends on is ready, not when its whole wave
is, so agents of one level start in parallel and a start takes about the
critical path. Ready means: every process of the agent is RUNNING (it stayed
up for `min_uptime`) and its readiness probe passes, answered by the agent's
own processes (see `ports`).

The sequencer issues an agent's first start and then only waits: a start
that fails (the process exits before `min_uptime`, or the probe does not pass
within `readiness.timeout`, after which the sequencer stops it and reports it
to the keeper) is a failed attempt of the agent's restart policy, and the
restart keeper alone decides whether and when it is tried again. The
sequencer shows each attempt (`attempt 2/5 in 1.0s: exited after 0.2s
(exit status 1)`) and ends an agent's wait when it is ready or given up.
Agents that depend on a failed agent are not started, and after a failure
nothing new is started; whatever was already fine keeps running.

Called by apply, control's start and the boot listener. Progress is reported
through a callback, so the caller decides how to show it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from orchestrator.core.events import StartEvent, ignore
from orchestrator.host import ports, probes
from orchestrator.state import runtime
from orchestrator.core.processes import DOWN_STATES, ProcessInfo, RUNNING
from orchestrator.supervisord.client import Client, SupervisorError
from orchestrator.supervisord.reports import report_not_ready
from orchestrator.core.model import Agent
from orchestrator.core.policies import AgentHistory
from orchestrator.core.names import process_names
from orchestrator.operations.stopping import stop_in_order

NO_PROBE_TIMEOUT = 30.0   # how long an agent without a readiness probe may take to reach RUNNING
DECISION_TIMEOUT = 15.0   # how long the restart keeper may take to record an attempt's end, or to fire a due restart
WAITING_EVERY = 5.0       # a long wait for readiness says so this often
STATE_POLL = 0.1          # how often a start's process state is read from supervisord
STDERR_LINES = 10


Event = StartEvent  # the sequencer's events (the name others import)


@dataclass
class Outcome:
    agent: str
    ok: bool
    detail: str = ""
    started_at: float = 0.0   # monotonic clock
    ready_at: float = 0.0
    attempts: int = 0
    stderr: str = ""
    exitstatus: int | None = None
    verified_only: bool = False  # already running: only its readiness was checked


@dataclass
class Result:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)   # not started: a dependency failed, or the start stopped

    @property
    def ok(self) -> bool:
        return not self.blocked and all(o.ok for o in self.outcomes.values())

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if not o.ok]

    @property
    def started(self) -> list[str]:
        """The agents this start started (not those already running, whose readiness was only checked)."""
        return [o.agent for o in self.outcomes.values() if not o.verified_only]

    def problems(self) -> list[str]:
        """Why the start failed, a line each: the agents that did not become ready, then those not started."""
        lines = [f"{o.agent} did not become ready: {o.detail}" for o in self.failed]
        if self.blocked:
            lines.append(f"not started: {', '.join(self.blocked)}")
        return lines


class _Watch:
    """The state of one agent's processes, read from supervisord at most every STATE_POLL seconds."""

    def __init__(self, client: Client, agent: Agent, clock: Callable[[], float]) -> None:
        self.client, self.agent, self.clock = client, agent, clock
        self.names = process_names(agent)
        self.last = -1.0
        self.infos: list[ProcessInfo] = []
        self.up_since: dict[int, float] = {}   # pid -> when supervisord started it (wall clock)

    def read(self) -> list[ProcessInfo]:
        if self.clock() - self.last >= STATE_POLL:
            self.infos = [self.client.process(name) for name in self.names]
            self.last = self.clock()
        return self.infos

    def down(self) -> str | None:
        """Why the agent is not up (a process exited, failed, is backing off), or None while it is starting or running."""
        for info in self.read():
            if info.state in DOWN_STATES or info.state == "BACKOFF":
                how = info.spawnerr or (f"exited with status {info.exitstatus}" if info.state in ("EXITED", "BACKOFF")
                                        else info.state.lower())
                return f"{info.name} {info.state}: {how}"
        return None

    def all_running(self) -> bool:
        """Every process RUNNING, and up for the agent's min_uptime (by supervisord's own start time)."""
        infos = self.read()
        if not all(info.state == RUNNING and info.pid for info in infos):
            return False
        for info in infos:
            if info.pid not in self.up_since:
                self.up_since[info.pid] = self.client.process_times(info.full_name)[0]
        now = time.time()
        return all(now - self.up_since[info.pid] >= self.agent.min_uptime for info in infos)


class Sequencer:
    def __init__(self, client: Client, agents: Mapping[str, Agent], *, state_dir: str,
                 progress: Callable[[StartEvent], None] = ignore,
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 max_parallel: int = 32) -> None:
        self.client, self.agents, self.progress, self.state_dir = client, agents, progress, state_dir
        self.env, self.cwd, self.clock, self.wall, self.max_parallel = env, cwd, clock, wall, max_parallel
        self.began = clock()
        self._supervisord_pid: int | None = None

    def _emit(self, kind: str, agent: str, detail: str = "") -> None:
        self.progress(Event(kind, agent, self.clock() - self.began, detail))

    def run(self, start: Iterable[str], *, verify: Iterable[str] = ()) -> Result:
        """Start the agents in `start`; `verify` names running agents whose readiness is checked before dependents start."""
        to_start = set(start)
        pending = to_start | set(verify)
        ready: set[str] = set()
        result = Result()
        running: dict[Future[Outcome], str] = {}
        with ThreadPoolExecutor(max_workers=self.max_parallel, thread_name_prefix="start") as pool:
            while pending or running:
                if not result.failed:
                    for name in sorted(pending, key=lambda n: (self.agents[n].priority, n)):
                        if all(dep in ready or dep not in self.agents for dep in self.agents[name].depends_on):
                            pending.discard(name)
                            running[pool.submit(self._bring_up, name, name not in to_start)] = name
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    outcome = future.result()
                    result.outcomes[name] = outcome
                    if outcome.ok:
                        ready.add(name)
                if result.failed:
                    pending_names = sorted(pending)
                    result.blocked.extend(pending_names)
                    for name in pending_names:
                        self._emit("skipped", name, "not started: " + self._blocked_reason(name, result))
                    pending.clear()
        for name in sorted(pending):   # waiting on a dependency that is neither started here nor up: never started
            result.blocked.append(name)
            self._emit("skipped", name, "not started: a dependency is not running")
        return result

    def _blocked_reason(self, name: str, result: Result) -> str:
        failed = {o.agent for o in result.failed}
        deps = [d for d in self.agents[name].depends_on if d in failed]
        return f"{', '.join(deps)} failed" if deps else "the start stopped after a failure"

    def _bring_up(self, name: str, verify_only: bool) -> Outcome:
        agent = self.agents[name]
        outcome = Outcome(agent=name, ok=False, started_at=self.clock(), verified_only=verify_only, attempts=1)
        try:
            if verify_only:
                state, detail, status = self._wait_attempt(agent)
                ok = state == "ready"
            else:
                ok, detail, status = self._start(agent, outcome)
        except SupervisorError as exc:
            ok, detail, status = False, str(exc), None
        if ok:
            outcome.ok, outcome.detail, outcome.ready_at = True, detail, self.clock()
            self._emit("ready", name, f"{outcome.ready_at - outcome.started_at:.1f}s")
            return outcome
        outcome.detail, outcome.exitstatus = detail, status
        if not verify_only:
            outcome.stderr = self._stderr(agent)
        self._emit("failed", name, outcome.detail)
        return outcome

    def _start(self, agent: Agent, outcome: Outcome) -> tuple[bool, str, int | None]:
        """Start `agent` once and follow its attempts until it is ready or the keeper gives it up."""
        name = agent.name
        seen = runtime.load_agent(self.state_dir, name).exits
        self._emit("starting", name)
        self.client.start_group(name, wait=False)
        while True:
            state, detail, status = self._wait_attempt(agent)
            if state == "ready":
                return True, detail, None
            if state == "stopped":
                return False, detail, status
            if state == "timeout":  # not ready in time: a failed attempt; the keeper decides what follows
                stop_in_order(self.client, [name], {}, state_dir=self.state_dir)
                report_not_ready(self.client, name, exits=seen, detail=detail)
            entry = self._await_decision(name, seen)
            seen = entry.exits
            if entry.given_up or entry.next_restart_at is None:
                return False, entry.reason or detail, status
            outcome.attempts += 1
            limit = agent.restart.max_attempts if agent.restart.policy != "manual" else 1
            delay = entry.next_restart_at - (entry.decided_at or self.wall())
            self._emit("retrying", name, f"attempt {outcome.attempts}/{limit} in {max(0.0, delay):.1f}s: {entry.reason}")
            problem = self._await_restart(agent, seen)
            if problem:
                return False, problem, status

    def _await_decision(self, name: str, seen: int) -> AgentHistory:
        """The keeper's record of the attempt that just ended (its `exits` moves past `seen`)."""
        deadline = self.clock() + DECISION_TIMEOUT
        while True:
            entry = runtime.load_agent(self.state_dir, name)
            if entry.exits > seen:
                return entry
            if self.clock() > deadline:
                raise SupervisorError(f"the restart keeper recorded no decision about {name} within "
                                      f"{DECISION_TIMEOUT:g}s (see logs/_orchestrator.log)")
            time.sleep(STATE_POLL / 2)

    def _await_restart(self, agent: Agent, seen: int) -> str | None:
        """Wait for the keeper's restart of `agent`; why it will not come, or None once it happened."""
        while True:
            entry = runtime.load_agent(self.state_dir, agent.name)
            if entry.exits > seen:
                return None  # restarted, and already ended again: the caller follows that decision
            if entry.given_up:
                return entry.reason or "given up"
            if entry.stopped:
                return "stopped by the operator"
            if self._standing_down():
                return "not restarted: everything is being stopped"
            latch = runtime.load_global(self.state_dir).latch
            if latch is not None:
                return f"not restarted: {runtime.describe_latch(latch)}"
            states = {self.client.process(name).state for name in process_names(agent)}
            if states & {"STARTING", RUNNING}:
                return None
            if entry.next_restart_at is None:
                # fired, and the process already ended (its decision follows), unless someone stopped it
                return "stopped while waiting for its restart" if "STOPPED" in states else None
            if self.wall() > entry.next_restart_at + DECISION_TIMEOUT:
                return (f"its restart was due {self.wall() - entry.next_restart_at:.0f}s ago and did not happen "
                        "(see logs/_orchestrator.log)")
            time.sleep(STATE_POLL / 2)

    def _standing_down(self) -> bool:
        stand_down = runtime.load_global(self.state_dir).stand_down
        if stand_down is None:
            return False
        if self._supervisord_pid is None:
            self._supervisord_pid = self.client.pid()
        return stand_down == self._supervisord_pid

    def _wait_attempt(self, agent: Agent) -> tuple[str, str, int | None]:
        """Wait for one attempt: ("ready" | "down" | "stopped" | "timeout", detail, exit status)."""
        watch = _Watch(self.client, agent, self.clock)
        probe = agent.readiness
        timeout = probe.timeout if probe else max(NO_PROBE_TIMEOUT, agent.min_uptime + 10.0)
        began = self.clock()
        deadline, said = began + timeout, began
        next_check = began + (probe.initial_delay if probe else 0.0)
        passed, detail = probe is None, "RUNNING"
        while True:
            now = self.clock()
            if now - said >= WAITING_EVERY:
                said = now
                self._emit("waiting", agent.name, f"{now - began:.0f}s of {timeout:g}s"
                           + (f" for {probes.describe(probe)}" if probe else " for RUNNING"))
            infos = watch.read()
            stopped = [i for i in infos if i.state in ("STOPPED", "STOPPING")]
            if stopped:
                return "stopped", f"{stopped[0].name} was stopped while starting", None
            reason = watch.down()
            if reason:
                return "down", reason, self._exitstatus(watch)
            if probe is not None and not passed and now >= next_check:
                result = probes.check(probe, timeout=max(probes.MIN_CHECK_TIMEOUT, min(deadline - now, max(probe.period, 1.0))),
                                      env=self.env, cwd=self.cwd)
                next_check = self.clock() + probe.period
                problem = ports.owner_problem(probe.target, probe.kind, [i.pid for i in infos if i.pid]) \
                    if result.ok and probe.kind in ("tcp", "http") else None
                passed, detail = result.ok and problem is None, problem or result.detail
            if passed and watch.all_running():
                return "ready", detail, None
            if self.clock() >= deadline:
                why = detail if not passed else f"not up for min_uptime ({agent.min_uptime:g}s)"
                # the configured timeout, not the time measured: on a busy machine the check that
                # noticed the deadline may run a little late, and the reason should not wobble
                return "timeout", f"not ready after {timeout:.1f}s: {why}", None
            time.sleep(STATE_POLL / 2)

    @staticmethod
    def _exitstatus(watch: _Watch) -> int | None:
        for info in watch.infos:
            if info.state in ("EXITED", "BACKOFF", "FATAL"):
                return info.exitstatus
        return None

    def _stderr(self, agent: Agent) -> str:
        try:
            text = self.client.stderr_tail(process_names(agent)[0], 8192)
        except SupervisorError:
            return ""
        return "\n".join(text.rstrip("\n").splitlines()[-STDERR_LINES:])
