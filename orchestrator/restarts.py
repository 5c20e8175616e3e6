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
from orchestrator.apply import stop_in_order
from orchestrator.client import DOWN_STATES, UP_STATES, Client, SupervisorError
from orchestrator.graph import Graph
from orchestrator.history import History
from orchestrator.model import Agent
from orchestrator.policies import Decision, Exit, decide
from orchestrator.render import process_names
from orchestrator.sequencer import Sequencer

STDERR_LINES = 10


class Keeper:
    def __init__(self, state_dir: str, client: Client, *, log: Callable[[str], None],
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random) -> None:
        self.state_dir, self.client, self.log, self.clock, self.rand = state_dir, client, log, clock, rand
        self.events: queue.Queue[tuple[str, dict[str, str]]] = queue.Queue()
        self.timers: dict[str, float] = {}
        self.history = History(state_dir)
        self.expect_stop: set[str] = set()   # stops the keeper itself asked for: they keep their scheduled restart
        self.recovering: set[str] = set()

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
        return current.agents if current else {}

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
            except Exception as exc:  # noqa: BLE001 - a bug must not end every future restart: say it, go on
                self.log(f"restart keeper: unexpected {type(exc).__name__}: {exc}")

    def handle(self, event: str, payload: dict[str, str]) -> None:
        group = payload.get("groupname", "")
        agent = self.agents().get(group)
        if agent is None:
            return
        state = event.removeprefix("PROCESS_STATE_")
        now = self.clock()
        if state == "LIVENESS_FAILED":
            self.liveness_failed(agent, payload.get("detail", "liveness failed"), now)
            return
        if state == "STARTING":  # started, by anyone: no longer waiting for a dependency
            with runtime.changing(self.state_dir) as live:
                live.agents[group] = replace(live.agent(group).started(now), waiting_for="")
            return
        if state == "RUNNING":
            self.recover_dependents(group)
            return
        if state == "STOPPED":
            if group in self.expect_stop:
                self.expect_stop.discard(group)
                return
            if self.timers.pop(group, None) is not None:
                self.log(f"{group}: stopped on request; its pending restart is cancelled")
            with runtime.changing(self.state_dir) as live:
                live.agents[group] = replace(live.agent(group), next_restart_at=None)
            return
        if state not in ("EXITED", "FATAL"):
            return
        process = f"{group}:{payload.get('processname', group)}"
        exitstatus = self.client.process(process).exitstatus if state == "EXITED" else None
        ended = Exit(exitstatus=exitstatus, expected=payload.get("expected") == "1", during_start=state == "FATAL")
        with runtime.changing(self.state_dir) as live:
            entry = live.agent(group)
            if entry.given_up:
                return
            decision = decide(ended, entry, agent.restart, now, rand=self.rand())
            latched = live.latch is not None
            if latched and decision.action == "restart":
                decision = replace(decision, action="record", reason=f"{decision.reason}; emergency stop latched: not restarted",
                                   history=replace(decision.history, next_restart_at=None))
            live.agents[group] = decision.history
        self._carry_out(group, decision, process)
        if (not ended.expected or ended.during_start) and not latched:
            self.dependency_failed(group)

    def _carry_out(self, group: str, decision: Decision, process: str) -> None:
        if decision.action == "restart":
            self.timers[group] = self.clock() + decision.delay
            self.log(f"{group}: {decision.reason}")
        elif decision.action == "give-up":
            self.log(f"{group}: GIVEN UP: {decision.reason}")
            self._log_stderr(process)
        elif decision.action == "record":
            self.log(f"{group}: {decision.reason}")

    def liveness_failed(self, agent: Agent, detail: str, now: float) -> None:
        """A running agent failed its liveness probe: restart it through its policy, unless in cooldown."""
        name = agent.name
        with runtime.changing(self.state_dir) as live:
            entry = live.agent(name)
            if entry.given_up or live.latch is not None:
                return
            if entry.in_cooldown(agent.resources.cooldown, now):
                self.log(f"{name}: {detail}; no action: in cooldown for {agent.resources.cooldown:g}s after the last one")
                return
            decision = decide(Exit(exitstatus=None), entry, agent.restart, now, rand=self.rand())
            decision = replace(decision, reason=f"{detail}; {decision.reason.split('; ', 1)[-1]}",
                               history=replace(decision.history, last_action_at=now, reason=detail))
            live.agents[name] = decision.history
        self.expect_stop.add(name)
        self.log(f"{name}: {detail}: stopping it")
        self.client.stop_group(name, wait=True)
        self._carry_out(name, decision, f"{name}:{name}")
        self.dependency_failed(name)

    # -- dependency failure ----------------------------------------------

    def _dependents(self, name: str) -> list[str]:
        agents = self.agents()
        return list(Graph.of_agents(agents).dependents(name))

    def dependency_failed(self, name: str) -> None:
        """`name` stopped being ready: its dependents act on their on_dependency_failure."""
        agents = self.agents()
        acting = [d for d in self._dependents(name) if agents[d].on_dependency_failure != "ignore"]
        if not acting:
            return
        with runtime.changing(self.state_dir) as live:
            for dependent in acting:
                if not live.agent(dependent).waiting_for:
                    live.agents[dependent] = replace(live.agent(dependent), waiting_for=name)
        stopping = [d for d in acting if agents[d].on_dependency_failure == "stop"]
        waiting = [d for d in acting if d not in stopping]
        if stopping:
            self.log(f"{name} is not ready: stopping {', '.join(stopping)} until it is")
            stop_in_order(self.client, stopping, {n: a.depends_on for n, a in agents.items()})
        if waiting:
            self.log(f"{name} is not ready: {', '.join(waiting)} will restart once it is back")

    def recover_dependents(self, name: str) -> None:
        """`name` is running again: once it is ready, bring back (in order) the dependents waiting for it."""
        waiting = sorted(n for n, entry in runtime.load(self.state_dir).agents.items() if entry.waiting_for == name)
        if waiting and name not in self.recovering:
            self.recovering.add(name)
            threading.Thread(target=self._recover, args=(name, waiting), name=f"recover-{name}", daemon=True).start()

    def _recover(self, name: str, waiting: list[str]) -> None:
        agents = self.agents()
        try:
            restart = [d for d in waiting if agents[d].on_dependency_failure == "restart"]
            if restart:
                stop_in_order(self.client, restart, {n: a.depends_on for n, a in agents.items()})
            up = {p.group for p in self.client.processes() if p.state in UP_STATES}
            needed = {d for w in waiting for d in agents[w].depends_on} - set(waiting)
            result = Sequencer(self.client, agents, progress=lambda e: self.log(f"{e.agent}: {e.kind} {e.detail}".rstrip())).run(
                [w for w in waiting if w not in up], verify=needed | {name})
            if result.ok:
                with runtime.changing(self.state_dir) as live:
                    for dependent in waiting:
                        live.agents[dependent] = replace(live.agent(dependent), waiting_for="")
                self.log(f"{name} is ready again: {', '.join(waiting)} back in order")
            else:
                self.log(f"{name} is back but its dependents did not all come back: "
                         f"{'; '.join(f'{o.agent}: {o.detail}' for o in result.failed)}")
        except (SupervisorError, OSError) as exc:
            self.log(f"bringing back the dependents of {name}: {exc}")
        finally:
            self.recovering.discard(name)

    def fire(self, name: str) -> None:
        agent = self.agents().get(name)
        if agent is None:
            return
        with runtime.changing(self.state_dir) as live:
            entry = live.agent(name)
            if live.latch is not None or entry.given_up or entry.next_restart_at is None or entry.waiting_for:
                return
            live.agents[name] = replace(entry, next_restart_at=None)
        for process in process_names(agent):
            if self.client.process(process).state in DOWN_STATES:
                self.client.start_process(process)
        self.log(f"{name}: restarted")

    def _log_stderr(self, process: str) -> None:
        try:
            tail = self.client.stderr_tail(process, 8192)
        except SupervisorError:
            return
        for line in tail.rstrip("\n").splitlines()[-STDERR_LINES:]:
            self.log(f"    {line}")
