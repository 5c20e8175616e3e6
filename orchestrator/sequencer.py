"""Starting agents in dependency order, each only once every dependency is ready.

Owned here: the start of a set of agents as a dependency-driven schedule. An
agent starts the moment all it depends on is ready, not when its whole wave
is, so agents of one level start in parallel and a start takes about the
critical path. Ready means: its readiness probe passes while its processes
are up, or, without a probe, supervisord reports every process RUNNING (after
`min_uptime`). A start that does not become ready within its timeout is
retried as the manifest says, then stopped; agents that depend on it are not
started, and after a failure nothing new is started; whatever was already
fine keeps running.

Called by apply and by the boot listener. Progress is reported through a
callback, so the caller decides how to show it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from orchestrator import probes
from orchestrator.client import DOWN_STATES, RUNNING, Client, ProcessInfo, SupervisorError
from orchestrator.model import Agent
from orchestrator.render import process_names

NO_PROBE_TIMEOUT = 30.0   # how long an agent without a readiness probe may take to reach RUNNING
WAITING_EVERY = 5.0       # a long wait for readiness says so this often
STATE_POLL = 0.1          # how often a start's process state is read from supervisord
STDERR_LINES = 10


@dataclass(frozen=True)
class Event:
    kind: str            # "starting", "waiting" (every few seconds), "ready", "retrying", "failed", "skipped"
    agent: str
    elapsed: float       # since the sequence began
    detail: str = ""


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


class _Watch:
    """The state of one agent's processes, read from supervisord at most every STATE_POLL seconds."""

    def __init__(self, client: Client, agent: Agent, clock: Callable[[], float]) -> None:
        self.client, self.agent, self.clock = client, agent, clock
        self.names = process_names(agent)
        self.last = -1.0
        self.infos: list[ProcessInfo] = []

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
        return all(info.state == RUNNING for info in self.read())


class Sequencer:
    def __init__(self, client: Client, agents: Mapping[str, Agent], *,
                 progress: Callable[[Event], None] = lambda event: None,
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 clock: Callable[[], float] = time.monotonic, max_parallel: int = 32) -> None:
        self.client, self.agents, self.progress = client, agents, progress
        self.env, self.cwd, self.clock, self.max_parallel = env, cwd, clock, max_parallel
        self.began = clock()

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
        return result

    def _blocked_reason(self, name: str, result: Result) -> str:
        failed = {o.agent for o in result.failed}
        deps = [d for d in self.agents[name].depends_on if d in failed]
        return f"{', '.join(deps)} failed" if deps else "the start stopped after a failure"

    def _bring_up(self, name: str, verify_only: bool) -> Outcome:
        agent = self.agents[name]
        outcome = Outcome(agent=name, ok=False, started_at=self.clock(), verified_only=verify_only)
        attempts = 1 + (agent.readiness.retries if agent.readiness else 0)
        try:
            for attempt in range(1, attempts + 1):
                outcome.attempts = attempt
                if not verify_only:
                    self._emit("starting", name, f"attempt {attempt}/{attempts}" if attempt > 1 else "")
                    self.client.start_group(name, wait=False)
                ok, detail, status = self._wait_ready(agent)
                if ok:
                    outcome.ok, outcome.detail, outcome.ready_at = True, detail, self.clock()
                    self._emit("ready", name, f"{outcome.ready_at - outcome.started_at:.1f}s")
                    return outcome
                outcome.detail, outcome.exitstatus = detail, status
                if verify_only:
                    break
                if attempt < attempts:
                    self._emit("retrying", name, detail)
                    self.client.stop_group(name, wait=True)
            if not verify_only:
                outcome.stderr = self._stderr(agent)
                self.client.stop_group(name, wait=True)
        except SupervisorError as exc:
            outcome.detail = str(exc)
        self._emit("failed", name, outcome.detail)
        return outcome

    def _wait_ready(self, agent: Agent) -> tuple[bool, str, int | None]:
        watch = _Watch(self.client, agent, self.clock)
        probe = agent.readiness
        timeout = probe.timeout if probe else max(NO_PROBE_TIMEOUT, agent.min_uptime + 10.0)
        began = self.clock()
        deadline = began + timeout
        said = [began]

        def down() -> str | None:
            """Whether the agent died; also, every WAITING_EVERY seconds, that it is still being waited for."""
            now = self.clock()
            if now - said[0] >= WAITING_EVERY:
                said[0] = now
                self._emit("waiting", agent.name, f"{now - began:.0f}s of {timeout:g}s"
                           + (f" for {probes.describe(probe)}" if probe else " for RUNNING"))
            return watch.down()

        if probe is None:
            while self.clock() < deadline:
                reason = down()
                if reason:
                    return False, reason, self._exitstatus(watch)
                if watch.all_running():
                    return True, "RUNNING", None
                time.sleep(STATE_POLL)
            return False, f"not RUNNING after {timeout:g}s", None
        result = probes.wait_ready(probe, deadline=deadline, alive=down, env=self.env, cwd=self.cwd, clock=self.clock)
        if result.ok:
            return True, result.detail, None
        return False, result.detail, self._exitstatus(watch)

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
