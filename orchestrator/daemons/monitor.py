"""Liveness: checking running agents' health, inside the event listener.

Owned here: a thread that runs each agent's liveness probe every `period`
while the agent is up and past its `warmup`, counts consecutive failures, and
after `failures` of them hands a `keeping.LivenessFailed` event to the restart keeper,
which decides, through the agent's restart policy, what to do (and honours
`cooldown`). The monitor acts on nothing itself. Called by the listener.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator.core.keeping import LivenessFailed
from orchestrator.host import probes
from orchestrator.state import runtime
from orchestrator.core.processes import UP_STATES
from orchestrator.supervisord.client import Client, SupervisorError
from orchestrator.state.history import History
from orchestrator.core.model import Agent
from orchestrator.core.names import process_names

TICK = 0.25  # how often the monitor looks for a check that is due


class LivenessMonitor:
    def __init__(self, state_dir: str, client: Client, submit: Callable[[LivenessFailed], None], *,
                 log: Callable[[str], None], clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.state_dir, self.client, self.submit, self.log = state_dir, client, submit, log
        self.clock, self.sleep = clock, sleep
        self.history = History(state_dir)
        self.due: dict[str, float] = {}
        self.failed: dict[str, int] = {}

    def run(self) -> None:
        while True:
            try:
                self.check_due()
            except (SupervisorError, OSError) as exc:
                self.log(f"liveness monitor: {exc}")
            except Exception as exc:  # noqa: BLE001 - a bug must not end every future check: say it, go on
                self.log(f"liveness monitor: unexpected {type(exc).__name__}: {exc}")
            self.sleep(TICK)

    def check_due(self) -> None:
        current = self.history.current()
        if current is None:
            return
        now = self.clock()
        due = [(agent, agent.liveness) for agent in current.agents.values()
               if agent.liveness is not None and self.due.get(agent.name, 0.0) <= now]
        if not due:
            return
        latched = runtime.load_global(self.state_dir).latch is not None
        for agent, probe in due:
            if probe is None:
                continue
            name = agent.name
            self.due[name] = now + probe.period
            entry = runtime.load_agent(self.state_dir, name)   # one small file: not every agent's, every tick
            started = self._up_since(agent)
            if latched or entry.given_up or entry.stopped or entry.waiting_for or started is None \
                    or now - started < agent.resources.warmup:
                self.failed[name] = 0
                continue
            result = probes.check(probe, timeout=probe.timeout, cwd=current.project_dir)
            if result.ok:
                self.failed[name] = 0
                continue
            self.failed[name] = self.failed.get(name, 0) + 1
            if self.failed[name] >= probe.failures:
                self.failed[name] = 0
                detail = f"liveness {probes.describe(probe)} failed {probe.failures} times in a row: {result.detail}"
                self.submit(LivenessFailed(name, detail=detail))

    def _up_since(self, agent: Agent) -> float | None:
        """When the agent's newest process started (supervisord's clock), or None unless all are up."""
        infos = [self.client.process(name) for name in process_names(agent)]
        if not all(info.state in UP_STATES for info in infos):
            return None
        return float(max(info.start for info in infos))
