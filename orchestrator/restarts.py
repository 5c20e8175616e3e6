"""The restart keeper: carries out restart policies inside the event listener.

Owned here: turning supervisord's process-state events into `policies.decide`
calls, persisting each agent's history (`runtime`), and scheduling restarts:
a delayed restart is a deadline, never a sleep that would hold supervisord
up. Deadlines are wall-clock times stored in the runtime state, so a listener
that is killed and restarted by supervisord picks up every pending restart at
its scheduled time, with its counters intact.

Runs in a thread of its own: the listener's protocol loop only queues events
(`submit`) and acknowledges them at once. Agents are rendered with
supervisord's autorestart off and startretries 0, so supervisord never
restarts them itself and the two never fight.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from orchestrator import runtime
from orchestrator.client import DOWN_STATES, Client, SupervisorError
from orchestrator.history import History
from orchestrator.model import Agent
from orchestrator.policies import Exit, decide

STDERR_LINES = 10


class Keeper:
    def __init__(self, state_dir: str, client: Client, *, log: Callable[[str], None],
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random) -> None:
        self.state_dir, self.client, self.log, self.clock, self.rand = state_dir, client, log, clock, rand
        self.events: queue.Queue[tuple[str, dict[str, str]]] = queue.Queue()
        self.timers: dict[str, float] = {}
        self.history = History(state_dir)
        self._agents: Mapping[str, Agent] = {}

    # -- called from the protocol thread --------------------------------

    def submit(self, event: str, payload: dict[str, str]) -> None:
        self.events.put((event, payload))

    # -- the keeper's own thread ----------------------------------------

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="restarts", daemon=True)
        thread.start()
        return thread

    def agents(self) -> Mapping[str, Agent]:
        current = self.history.current()
        self._agents = current.agents if current else {}
        return self._agents

    def run(self) -> None:
        self.agents()
        for name, entry in runtime.load(self.state_dir).agents.items():
            if entry.next_restart_at is not None and not entry.given_up:
                self.timers[name] = entry.next_restart_at
                self.log(f"{name}: restart still pending, due in {max(0.0, entry.next_restart_at - self.clock()):.1f}s")
        while True:
            due = min(self.timers.values(), default=None)
            timeout = None if due is None else max(0.0, due - self.clock())
            try:
                event, payload = self.events.get(timeout=timeout)
            except queue.Empty:
                event, payload = "", {}
            try:
                if event:
                    self.handle(event, payload)
                now = self.clock()
                for name in [n for n, at in self.timers.items() if at <= now]:
                    del self.timers[name]
                    self.fire(name)
            except (SupervisorError, OSError) as exc:  # supervisord busy or going away: keep going
                self.log(f"restart keeper: {exc}")

    def handle(self, event: str, payload: dict[str, str]) -> None:
        group = payload.get("groupname", "")
        agent = self.agents().get(group)
        if agent is None:
            return
        state = event.removeprefix("PROCESS_STATE_")
        now = self.clock()
        if state == "STARTING":
            with runtime.changing(self.state_dir) as live:
                live.agents[group] = live.agent(group).started(now)
            return
        if state == "STOPPED":
            if self.timers.pop(group, None) is not None:
                self.log(f"{group}: stopped on request; its pending restart is cancelled")
            with runtime.changing(self.state_dir) as live:
                live.agents[group] = replace(live.agent(group), next_restart_at=None)
            return
        if state not in ("EXITED", "FATAL"):
            return
        process = f"{group}:{payload.get('processname', group)}"
        exitstatus = self.client.process(process).exitstatus if state == "EXITED" else None
        exit = Exit(exitstatus=exitstatus, expected=payload.get("expected") == "1", during_start=state == "FATAL")
        with runtime.changing(self.state_dir) as live:
            entry = live.agent(group)
            if entry.given_up:
                return
            decision = decide(exit, entry, agent.restart, now, rand=self.rand())
            if live.latch is not None and decision.action == "restart":
                decision = replace(decision, action="record", reason=f"{decision.reason}; emergency stop latched: not restarted",
                                   history=replace(decision.history, next_restart_at=None))
            live.agents[group] = decision.history
        if decision.action == "restart":
            self.timers[group] = now + decision.delay
            self.log(f"{group}: {decision.reason}")
        elif decision.action == "give-up":
            self.log(f"{group}: GIVEN UP: {decision.reason}")
            self._log_stderr(process)
        elif decision.action == "record":
            self.log(f"{group}: {decision.reason}")

    def fire(self, name: str) -> None:
        agent = self.agents().get(name)
        if agent is None:
            return
        with runtime.changing(self.state_dir) as live:
            entry = live.agent(name)
            if live.latch is not None or entry.given_up or entry.next_restart_at is None:
                return
            live.agents[name] = replace(entry, next_restart_at=None)
        names = [name] if agent.replicas == 1 else [f"{name}_{i}" for i in range(agent.replicas)]
        for process in names:
            info = self.client.process(f"{name}:{process}")
            if info.state in DOWN_STATES:
                self.client.start_process(f"{name}:{process}")
        self.log(f"{name}: restarted")

    def _log_stderr(self, process: str) -> None:
        try:
            tail = self.client.stderr_tail(process, 8192)
        except SupervisorError:
            return
        for line in tail.rstrip("\n").splitlines()[-STDERR_LINES:]:
            self.log(f"    {line}")
