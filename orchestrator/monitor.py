"""Liveness: checking running agents' health, inside the event listener.

Owned here: a thread that runs each agent's liveness probe every `period`
while the agent is up and past its `warmup`, counts consecutive failures, and
after `failures` of them hands a LIVENESS_FAILED event to the restart keeper,
which decides, through the agent's restart policy, what to do (and honours
`cooldown`). The monitor acts on nothing itself. Called by the listener.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator import probes, runtime
from orchestrator.client import UP_STATES, Client, SupervisorError
from orchestrator.history import History
from orchestrator.model import Agent
from orchestrator.render import process_names

TICK = 0.25  # how often the monitor looks for a check that is due


class LivenessMonitor:
    def __init__(self, state_dir: str, client: Client, submit: Callable[[str, dict[str, str]], None], *,
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
        live = runtime.load(self.state_dir)
        for name, agent in current.agents.items():
            probe = agent.liveness
            if probe is None or self.due.get(name, 0.0) > now:
                continue
            self.due[name] = now + probe.period
            entry = live.agent(name)
            if live.latch or entry.given_up or entry.waiting_for or entry.in_warmup(agent.resources.warmup, now) \
                    or not self._up(agent):
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
                self.submit("LIVENESS_FAILED", {"groupname": name, "detail": detail})

    def _up(self, agent: Agent) -> bool:
        return all(self.client.process(name).state in UP_STATES for name in process_names(agent))
