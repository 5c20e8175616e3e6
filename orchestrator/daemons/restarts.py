"""The restart keeper: carries out restart policies inside the event listener.

Owned here: turning supervisord's process-state events (and the starters'
reports of failed readiness) into `policies.decide` calls, recording each
agent's history (`runtime`), and scheduling restarts. After an agent's
process ends, the keeper is the only actor that starts it again (see
`ownership` for every phase's owner): apply, up, start and the boot sequence
issue an agent's first start and then only wait for its outcome, which the
keeper writes down (`AgentHistory.exits` moves once per decided end).

Nothing is lost or doubled:
  * `on_event` runs in the listener's protocol thread, and the listener
    acknowledges an event only after it returns, so an event is acknowledged
    once its decision is on disk. supervisord re-queues the event a listener
    died holding, and delivers it to the restarted listener;
  * a re-delivered event is recognised by its supervisord serial (stored per
    agent as `last_event`) and not counted twice;
  * a delayed restart is a deadline in the runtime state, never a sleep: a
    listener that is killed and restarted picks up every pending restart at its
    scheduled time.

Three threads: the protocol thread (`on_event`), the timer thread (`run`:
fires due restarts), and a worker for what waits (stops for a liveness failure
or a dependency failure, bringing dependents back), so a slow stop never holds
up another agent's restart. Agents are rendered with supervisord's autorestart
off and startretries 0, so supervisord never restarts them itself.
"""

from __future__ import annotations

import json
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from orchestrator.core import ownership
from orchestrator.state import runtime
from orchestrator.operations.stopping import stop_in_order
from orchestrator.core.processes import UP_STATES
from orchestrator.supervisord.client import Client, SupervisorError
from orchestrator.core.graph import Graph
from orchestrator.state.history import History
from orchestrator.core.model import Agent
from orchestrator.core.policies import AgentHistory, Decision, Exit, decide
from orchestrator.core.names import LOGS_DIR, process_names
from orchestrator.operations.sequencer import COMM_TYPE, Event, Sequencer

class Keeper:
    def __init__(self, state_dir: str, client: Client, *, log: Callable[[str], None],
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 supervisord_pid: int | None = None) -> None:
        self.state_dir, self.client, self.log, self.clock, self.rand = state_dir, client, log, clock, rand
        self.supervisord_pid = supervisord_pid if supervisord_pid is not None else os.getppid()
        self.work: queue.Queue[tuple[str, dict[str, str]]] = queue.Queue()
        self.timers: dict[str, float] = {}
        self._timers_lock = threading.Lock()
        self._wake = threading.Event()
        self.history = History(state_dir)
        self.expect_stop: set[str] = set()   # stops the keeper itself asked for: they keep their scheduled restart
        self.recovering: set[str] = set()
        self._graph: tuple[object, dict[str, list[str]]] | None = None

    def agents(self) -> Mapping[str, Agent]:
        current = self.history.current()
        return current.agents if current else {}

    # -- the protocol thread: one event at a time, acknowledged after this returns ------

    def on_event(self, headers: Mapping[str, str], payload: Mapping[str, str], body: str = "") -> None:
        event = headers.get("eventname", "")
        serial = f"{self.supervisord_pid}:{headers.get('serial', '')}"
        if event == "REMOTE_COMMUNICATION":
            if payload.get("type") == COMM_TYPE:
                self._on_comm(body, serial)
        elif event.startswith("PROCESS_STATE_"):
            self.handle(event, dict(payload), serial=serial)

    def submit(self, event: str, payload: dict[str, str]) -> None:
        """From the liveness monitor: handled by the worker thread."""
        self.work.put((event, payload))

    def _on_comm(self, body: str, serial: str) -> None:
        try:
            message = json.loads(body)
            name, exits, detail = str(message["agent"]), int(message["exits"]), str(message.get("detail", ""))
        except (ValueError, KeyError, TypeError):
            self.log(f"restart keeper: unreadable message {body[:200]!r}")
            return
        agent = self.agents().get(name)
        if agent is None or message.get("kind") != "not-ready":
            return
        self._decide(agent, Exit(exitstatus=None, during_start=True, detail=detail), serial=serial, expect_exits=exits)

    def handle(self, event: str, payload: dict[str, str], *, serial: str = "") -> None:
        group = payload.get("groupname", "")
        agent = self.agents().get(group)
        if agent is None:
            return
        state = event.removeprefix("PROCESS_STATE_")
        if state in ("STARTING", "RUNNING"):  # started, by anyone: no longer waiting for a dependency
            # Read first, write only when something changes: with every agent crash-looping the
            # keeper must keep up with two events a restart (the start time itself comes from
            # supervisord when the process ends, see `process_times`).
            if runtime.load_agent(self.state_dir, group).waiting_for:
                runtime.update_agent(self.state_dir, group, lambda h, _: replace(h, waiting_for="") if h.waiting_for else None)
            if state == "RUNNING" and self._dependents(group):
                self.work.put(("RUNNING", {"groupname": group}))
            return
        if state == "STOPPED":
            if group in self.expect_stop:
                self.expect_stop.discard(group)
                return
            with self._timers_lock:
                cancelled = self.timers.pop(group, None) is not None
            if cancelled:
                self.log(f"{group}: stopped on request; its pending restart is cancelled")
            runtime.update_agent(self.state_dir, group, lambda h, _: replace(h, next_restart_at=None) if h.next_restart_at else None)
            return
        if state not in ("EXITED", "FATAL"):
            return
        process = f"{group}:{payload.get('processname', group)}"
        # supervisord's own times: the policy's delay counts from the exit, and the uptime is the
        # process's, however late this listener reads the event (it may have just been restarted)
        noted = runtime.read_exit(self.state_dir, process, int(payload.get("pid", "0") or 0)) \
            if state == "EXITED" else None
        began, ended_at, exitstatus = noted or self.client.process_times(process)
        # FATAL: supervisord could not start it at all (startsecs is 0, so never "exited too quickly")
        ended = Exit(exitstatus=None if state == "FATAL" else exitstatus, expected=payload.get("expected") == "1",
                     during_start=state == "FATAL")
        self._decide(agent, ended, serial=serial, started=began, at=min(ended_at, self.clock()) if ended_at else None)

    def _decide(self, agent: Agent, ended: Exit, *, serial: str, expect_exits: int | None = None,
                started: float | None = None, at: float | None = None) -> None:
        """Decide on one end of `agent` (at time `at`, default now; its process started at `started`, if known)
        and record it; carry the decision out (or hand it to the worker)."""
        name = agent.name
        now = at or self.clock()
        outcome: list[tuple[Decision, ownership.Rule]] = []

        def change(entry: AgentHistory, live: runtime.RuntimeState) -> AgentHistory | None:
            if serial and entry.last_event == serial:
                return None  # delivered again after the listener died holding it: already counted
            if expect_exits is not None and entry.exits != expect_exits:
                return None  # the attempt this report is about was already decided (it exited first)
            pending = entry.next_restart_at is not None
            if pending and started and entry.decided_at is not None and started >= entry.decided_at:
                # The pending restart was carried out (its listener died before clearing the mark): this is
                # the end of the process it started, to be decided like any other.
                pending = False
                entry = replace(entry, next_restart_at=None)
            phase = ownership.phase_of(latched=live.latch is not None, standing_down=live.stand_down == self.supervisord_pid,
                                       given_up=entry.given_up, stopped=entry.stopped,
                                       restart_pending=pending, up=False, ready=False)
            rule = ownership.rule(phase, "not-ready" if expect_exits is not None else "exited")
            if started:
                entry = replace(entry, started_at=started)
            if rule.act in ("decide", "count"):
                early = entry.started_at is not None and now - entry.started_at < agent.min_uptime
                decision = decide(replace(ended, during_start=ended.during_start or early), entry, agent.restart, now,
                                  rand=self.rand())
                if rule.act == "count" and decision.action == "restart":
                    decision = replace(decision, action="record", reason=f"{decision.reason}; not restarted: {phase}",
                                       history=replace(decision.history, next_restart_at=None))
            else:
                decision = Decision("record", reason=f"ended while {phase}: {rule.why}", history=entry)
            outcome.append((decision, rule))
            if decision.action != "restart":  # a decision that only records keeps a pending restart as it was
                return replace(decision.history, exits=entry.exits + 1, last_event=serial or entry.last_event)
            return replace(decision.history, exits=entry.exits + 1, last_event=serial or entry.last_event, decided_at=now,
                           restart_token=f"{name}#{entry.exits + 1}")

        runtime.update_agent(self.state_dir, name, change)
        if not outcome:
            return
        decision, rule = outcome[0]
        self._carry_out(name, decision, agent)
        if rule.act == "decide" and (decision.action in ("restart", "give-up") or not ended.expected) \
                and self._dependents(name):
            self.work.put(("DEPENDENCY_FAILED", {"groupname": name}))

    def _carry_out(self, name: str, decision: Decision, agent: Agent) -> None:
        if decision.action == "restart":
            self._arm(name, decision.history.next_restart_at or self.clock())
            self.log(f"{name}: {decision.reason}")
        elif decision.action == "give-up":
            self.log(f"{name}: GIVEN UP: {decision.reason}")
            self._log_stderr(agent)
        elif decision.action == "record":
            self.log(f"{name}: {decision.reason}")

    def _arm(self, name: str, at: float) -> None:
        with self._timers_lock:
            self.timers[name] = at
        self._wake.set()

    # -- the timer thread ------------------------------------------------

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.run, name="restarts", daemon=True),
                   threading.Thread(target=self.run_worker, name="keeper-worker", daemon=True)]
        for thread in threads:
            thread.start()
        return threads

    def run(self) -> None:
        self.agents()
        for name, entry in runtime.load(self.state_dir).agents.items():
            if entry.next_restart_at is not None and not entry.given_up and not entry.stopped:
                self._arm(name, entry.next_restart_at)
                self.log(f"{name}: restart still pending, due in {max(0.0, entry.next_restart_at - self.clock()):.1f}s")
        while True:
            with self._timers_lock:
                due = min(self.timers.values(), default=None)
            self._wake.wait(None if due is None else max(0.0, due - self.clock()))
            self._wake.clear()
            now = self.clock()
            with self._timers_lock:
                firing = [n for n, at in self.timers.items() if at <= now]
                for name in firing:
                    del self.timers[name]
            for name in firing:
                self._guarded(self.fire, name)

    def _guarded(self, action: Callable[..., None], *args: object) -> None:
        try:
            action(*args)
        except (SupervisorError, OSError) as exc:  # supervisord busy or going away: keep going
            self.log(f"restart keeper: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug must not end every future restart: say it, go on
            self.log(f"restart keeper: unexpected {type(exc).__name__}: {exc}")

    def fire(self, name: str) -> None:
        """A restart is due: start the agent's processes that are down, unless something changed meanwhile.

        The start is asked of supervisord outside the runtime lock (a lock held across an
        RPC slowed every other agent's events), and supervisord carries it out at most once
        per decision (`start_once`), so a listener killed at any point here asks again
        with the same token and nothing starts twice; the pending mark is cleared only
        after the start. Should an operator's stop, `down` or an emergency stop have been
        recorded between the check and the start, the process just started is stopped
        again: what the operator recorded wins.
        """
        agent = self.agents().get(name)
        if agent is None:
            return
        entry = runtime.load_agent(self.state_dir, name)
        if not self._may_fire(entry, runtime.load_global(self.state_dir)):
            return
        token = entry.restart_token or f"{name}#{entry.exits}"  # one token per restart decision
        started = False
        for process in process_names(agent):
            started = self.client.start_once(process, token=token) or started
        cancelled: list[bool] = []

        def done(now: AgentHistory, live: runtime.RuntimeState) -> AgentHistory | None:
            same = now.restart_token == entry.restart_token and now.decided_at == entry.decided_at
            cancelled.append(not self._may_fire(now, live) and same)
            return replace(now, next_restart_at=None) if same and now.next_restart_at is not None else None

        runtime.update_agent(self.state_dir, name, done)
        if cancelled and cancelled[0] and started:
            self.log(f"{name}: stopped again: it was stopped or latched while its restart was being carried out")
            stop_in_order(self.client, [name], {})
        elif started:
            self.log(f"{name}: restarted")

    def _may_fire(self, entry: AgentHistory, live: runtime.RuntimeState) -> bool:
        return not (live.latch is not None or live.stand_down == self.supervisord_pid or entry.given_up or entry.stopped
                    or entry.next_restart_at is None or entry.waiting_for)

    # -- the worker thread: what waits -------------------------------------

    def run_worker(self) -> None:
        while True:
            event, payload = self.work.get()
            self._guarded(self._work, event, payload)

    def _work(self, event: str, payload: dict[str, str]) -> None:
        name = payload.get("groupname", "")
        agent = self.agents().get(name)
        if agent is None:
            return
        if event == "LIVENESS_FAILED":
            self.liveness_failed(agent, payload.get("detail", "liveness failed"), self.clock())
        elif event == "DEPENDENCY_FAILED":
            self.dependency_failed(name)
        elif event == "RUNNING":
            self.recover_dependents(name)

    def liveness_failed(self, agent: Agent, detail: str, now: float) -> None:
        """A running agent failed its liveness probe: restart it through its policy, unless in cooldown."""
        name = agent.name
        outcome: list[Decision] = []

        def change(entry: AgentHistory, live: runtime.RuntimeState) -> AgentHistory | None:
            if entry.given_up or entry.stopped or live.latch is not None or live.stand_down == self.supervisord_pid:
                return None
            if entry.in_cooldown(agent.resources.cooldown, now):
                self.log(f"{name}: {detail}; no action: in cooldown for {agent.resources.cooldown:g}s after the last one")
                return None
            decision = decide(Exit(exitstatus=None, detail=detail), entry, agent.restart, now, rand=self.rand())
            decision = replace(decision, history=replace(decision.history, last_action_at=now))
            outcome.append(decision)
            return replace(decision.history, exits=entry.exits + 1)

        runtime.update_agent(self.state_dir, name, change)
        if not outcome:
            return
        self.expect_stop.add(name)
        self.log(f"{name}: {detail}: stopping it")
        stop_in_order(self.client, [name], {})
        self._carry_out(name, outcome[0], agent)
        self.dependency_failed(name)

    # -- dependency failure ----------------------------------------------

    def _dependents(self, name: str) -> list[str]:
        """What depends on `name` (directly or not) and acts when it fails: from a graph built once per version."""
        current = self.history.current()
        if current is None:
            return []
        if self._graph is None or self._graph[0] is not current:
            graph = Graph.of_agents(current.agents)
            acting = {n: [d for d in graph.dependents(n) if current.agents[d].on_dependency_failure != "ignore"]
                      for n in current.agents}
            self._graph = (current, acting)
        return self._graph[1].get(name, [])

    def dependency_failed(self, name: str) -> None:
        """`name` stopped being ready: its dependents act on their on_dependency_failure."""
        agents = self.agents()
        acting = self._dependents(name)
        if not acting:
            return
        with runtime.changing(self.state_dir) as live:
            if live.latch is not None or live.stand_down == self.supervisord_pid:
                return
            acting = [d for d in acting if not live.agent(d).stopped]
            for dependent in acting:
                if not live.agent(dependent).waiting_for:
                    live.agents[dependent] = replace(live.agent(dependent), waiting_for=name)
        if not acting:
            return
        stopping = [d for d in acting if agents[d].on_dependency_failure == "stop"]
        waiting = [d for d in acting if d not in stopping]
        if stopping:
            self.log(f"{name} is not ready: stopping {', '.join(stopping)} until it is")
            stop_in_order(self.client, stopping, {n: a.depends_on for n, a in agents.items()})
        if waiting:
            self.log(f"{name} is not ready: {', '.join(waiting)} will restart once it is back")

    def recover_dependents(self, name: str) -> None:
        """`name` is running again: once it is ready, bring back (in order) the dependents waiting for it."""
        waiting = sorted(n for n in self._dependents(name) if runtime.load_agent(self.state_dir, n).waiting_for == name)
        if waiting and name not in self.recovering:
            self.recovering.add(name)
            threading.Thread(target=self._recover, args=(name, waiting), name=f"recover-{name}", daemon=True).start()

    def _recover(self, name: str, waiting: list[str]) -> None:
        agents = self.agents()

        def say(event: Event) -> None:
            self.log(f"{event.agent}: {event.kind} {event.detail}".rstrip())

        try:
            back = Sequencer(self.client, agents, state_dir=self.state_dir, progress=say).run([], verify=[name])
            if not back.ok:  # running, but not ready: its own restart policy deals with it; they keep waiting
                self.log(f"{name} is running but not ready; {', '.join(waiting)} keep waiting for it")
                return
            restart = [d for d in waiting if agents[d].on_dependency_failure == "restart"]
            if restart:
                stop_in_order(self.client, restart, {n: a.depends_on for n, a in agents.items()})
            with runtime.changing(self.state_dir) as live:
                for dependent in waiting:
                    live.agents[dependent] = replace(live.agent(dependent), waiting_for="")
            up = {p.group for p in self.client.processes() if p.state in UP_STATES}
            needed = {d for w in waiting for d in agents[w].depends_on} - set(waiting)
            result = Sequencer(self.client, agents, state_dir=self.state_dir, progress=say).run(
                [w for w in waiting if w not in up], verify=needed | {name})
            if result.ok:
                self.log(f"{name} is ready again: {', '.join(waiting)} back in order")
            else:
                self.log(f"{name} is back but its dependents did not all come back: "
                         f"{'; '.join(f'{o.agent}: {o.detail}' for o in result.failed)}")
        except (SupervisorError, OSError) as exc:
            self.log(f"bringing back the dependents of {name}: {exc}")
        finally:
            self.recovering.discard(name)

    def _log_stderr(self, agent: Agent) -> None:
        """Where the agent's stderr is, not its text: a secret it printed stays in its own log."""
        name = agent.name if agent.replicas == 1 else f"{agent.name}-*"
        self.log(f"    its stderr: {os.path.join(self.state_dir, LOGS_DIR, name + '.err.log')}")
