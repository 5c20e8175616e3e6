"""The restart keeper: carries out the keeper's decisions inside the event listener.

Owned here: the shell around `keeping.decide`. It turns supervisord's
process-state events, the starters' reports of failed readiness and the
liveness monitor's failures into typed `keeping` events, reads the runtime
state, asks the pure decision (under the runtime lock when it records), and
carries the actions out: runtime file updates, timers, RPC calls, stops, and
its exit alerts (a manual-policy agent that exited; resolved once it runs
again), recorded in the alert history and sent to the live version's
notifications (daemons.notify, on a thread of its own: an event never waits on
a target). What to do (the ownership table, the restart policy, the latch, the
cooldown, `on_dependency_failure`, the give-up) is decided in `core.keeping` alone.
After an agent's process ends, the keeper is the only actor that starts it
again (see `ownership` for every phase's owner): apply, up, start and the boot
sequence issue an agent's first start and then only wait for its outcome,
which the keeper writes down (`AgentHistory.exits` moves once per decided end).

Nothing is lost or doubled:
  * `on_event` runs in the listener's protocol thread, and the listener
    acknowledges an event only after it returns, so an event is acknowledged
    once its decision is on disk. supervisord re-queues the event a listener
    died holding, and delivers it to the restarted listener;
  * a re-delivered event is recognised by its supervisord serial (stored per
    agent as `last_event`) and not counted twice;
  * a delayed restart is a deadline in the runtime state, never a sleep: a
    listener that is killed and restarted picks up every pending restart at its
    scheduled time; supervisord starts once per decision (`start_once`).

Threads: the protocol thread (`on_event`), the timer thread (`run`: fires due
restarts, and never waits on a stop), a worker for liveness and dependency
failures and recoveries (`run_worker`: it decides and records, and never waits
on a stop either), and one thread per stop that waits (a liveness failure, a
dependency failure, a restart overtaken by an operator's stop), which carries
out what the decision put after the stop. So a stop bounded by a long
stop_timeout never holds up another agent's restart, nor another agent's
liveness or dependency handling. Bringing dependents back runs on a thread of
its own too. Agents are rendered with supervisord's autorestart off and
startretries 0, so supervisord never restarts them itself.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeAlias

from orchestrator.core import keeping
from orchestrator.core.graph import Graph
from orchestrator.core.keeping import (
    CancelRestart, DependencyFailed, Ended, Event, FailDependents, GiveUp, LimitReached, LivenessFailed, NotReady,
    RaiseAlert, RecoverDependents, ResolveAlert,
    Record, RestartDue, Running, ScheduleRestart, Skip, StartOnce, Stop, Stopped, World,
)
from orchestrator.core.model import Agent
from orchestrator.core.names import LOGS_DIR, process_names
from orchestrator.core.units import MIB
from orchestrator.host import cgroups
from orchestrator.supervisord import launching
from orchestrator.core.policies import AgentHistory, Exit
from orchestrator.core.processes import UP_STATES
from orchestrator.daemons.notify import Notifications
from orchestrator.operations.sequencer import Event as Progress, Sequencer
from orchestrator.supervisord.reports import COMM_TYPE
from orchestrator.operations.stopping import stop_in_order
from orchestrator.state import alerts, runtime
from orchestrator.state.history import History
from orchestrator.supervisord.client import Client, SupervisorError

Work: TypeAlias = LivenessFailed | LimitReached | DependencyFailed | Running


class Keeper:
    def __init__(self, state_dir: str, client: Client, *, log: Callable[[str], None],
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 supervisord_pid: int | None = None) -> None:
        self.state_dir, self.client, self.log, self.clock, self.rand = state_dir, client, log, clock, rand
        self.supervisord_pid = supervisord_pid if supervisord_pid is not None else os.getppid()
        self.work: queue.Queue[Work] = queue.Queue()
        self.timers: dict[str, float] = {}
        self._timers_lock = threading.Lock()
        self._wake = threading.Event()
        self.history = History(state_dir)
        self.notifications = Notifications(self.history, log=log)   # the exit alerts' (the exporter sends its own)
        self._own_lock = threading.Lock()
        self._layout: cgroups.Layout | None = None
        self.expect_stop: set[str] = set()   # stops the keeper itself asked for: they keep their scheduled restart
        self.stopping: dict[str, threading.Thread] = {}   # agent -> the thread stopping it, while it runs
        self.recovering: set[str] = set()
        self._graph: tuple[object, dict[str, list[str]]] | None = None

    def agents(self) -> Mapping[str, Agent]:
        current = self.history.current()
        return current.agents if current else {}

    def world(self, live: runtime.RuntimeState) -> World:
        return World(latched=live.latch is not None, standing_down=live.stand_down == self.supervisord_pid)

    def _record(self, agent: Agent, event: Event, now: float) -> keeping.Decision:
        """Decide on `event` under the runtime lock and record the agent's new history; the decision."""
        taken: list[keeping.Decision] = []

        def change(entry: AgentHistory, live: runtime.RuntimeState) -> AgentHistory | None:
            decision = keeping.decide(event, entry, agent, now, world=self.world(live), rand=self.rand())
            taken.append(decision)
            return decision.history

        runtime.update_agent(self.state_dir, agent.name, change)  # calls `change` exactly once
        return taken[0]

    # -- the protocol thread: one event at a time, acknowledged after this returns ------

    def on_event(self, headers: Mapping[str, str], payload: Mapping[str, str], body: str = "") -> None:
        event = headers.get("eventname", "")
        serial = f"{self.supervisord_pid}:{headers.get('serial', '')}"
        if event == "REMOTE_COMMUNICATION":
            if payload.get("type") == COMM_TYPE:
                self._on_comm(body, serial)
        elif event.startswith("PROCESS_STATE_"):
            self.handle(event, dict(payload), serial=serial)

    def submit(self, event: Work) -> None:
        """From the liveness monitor: handled by the worker thread."""
        self.work.put(event)

    def _on_comm(self, body: str, serial: str) -> None:
        try:
            message = json.loads(body)
            if message.get("kind") == "removed":   # from apply: agents it removed (see _forget_removed)
                self._forget_removed()
                return
            name, detail = str(message["agent"]), str(message.get("detail", ""))
            if message.get("kind") == "limit":  # from the exporter: handled by the worker, like a liveness failure
                self.submit(LimitReached(name, reason=str(message["reason"]), detail=detail,
                                         action="stop" if message.get("action") == "stop" else "restart"))
                return
            exits = int(message["exits"])
        except (ValueError, KeyError, TypeError):
            self.log(f"restart keeper: unreadable message {body[:200]!r}")
            return
        agent = self.agents().get(name)
        if agent is None or message.get("kind") != "not-ready":
            return
        decision = self._record(agent, NotReady(name, exits=exits, detail=detail, serial=serial), self.clock())
        self._carry_out(agent, decision.actions)

    def handle(self, event: str, payload: dict[str, str], *, serial: str = "") -> None:
        group = payload.get("groupname", "")
        agent = self.agents().get(group)
        if agent is None:
            return
        state = event.removeprefix("PROCESS_STATE_")
        if state in ("STARTING", "RUNNING"):
            running = Running(group, running=state == "RUNNING")
            # Read first, lock and write only when something changes: with every agent crash-looping the
            # keeper must keep up with two events a restart (the start time itself comes from
            # supervisord when the process ends, see `process_times`). A Running decision reads no world.
            decision = keeping.decide(running, runtime.load_agent(self.state_dir, group), agent, self.clock(), world=World())
            if decision.history is not None:
                decision = self._record(agent, running, self.clock())
            self._carry_out(agent, decision.actions)
            return
        if state == "STOPPED":
            with self._own_lock:
                by_keeper = group in self.expect_stop
                self.expect_stop.discard(group)
            decision = self._record(agent, Stopped(group, by_keeper=by_keeper), self.clock())
            self._carry_out(agent, decision.actions)
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
                     during_start=state == "FATAL", detail=self._killed_for_memory(agent, group, payload))
        now = min(ended_at, self.clock()) if ended_at else self.clock()
        decision = self._record(agent, Ended(group, ended, serial=serial, started=began), now)
        self._carry_out(agent, decision.actions)

    def _oom_kills(self, group: str, payload: Mapping[str, str]) -> int | None:
        """The kernel's count of OOM kills in the process's cgroup (None: no cgroup, or no such count here)."""
        if self._layout is None:
            self._layout = cgroups.detect()
        try:
            back = cgroups.read(self._layout, launching.scope(self.state_dir), group, payload.get("processname", group))
        except (cgroups.CgroupError, OSError, ValueError):
            return None
        return back.oom_kills if back is not None else None

    def _killed_for_memory(self, agent: Agent, group: str, payload: Mapping[str, str]) -> str:
        """Why the process ended when the kernel killed it for its memory_max (its cgroup, made anew at each
        start by the launcher, counted an OOM kill), else nothing: the exit status says the rest."""
        if agent.resources.memory_max is None:
            return ""
        kills = self._oom_kills(group, payload)
        if not kills:
            return ""
        return (f"killed by the kernel: out of memory in its cgroup (memory_max {agent.resources.memory_max / MIB:.0f} MiB, "
                f"{kills} OOM kill(s))")

    # -- carrying out --------------------------------------------------------------------

    def _carry_out(self, agent: Agent, actions: Sequence[keeping.Action]) -> None:
        """Carry out `actions` in order. A `Stop` waits: it, and every action after it, go to a thread of their own."""
        name = agent.name
        for index, action in enumerate(actions):
            if isinstance(action, Stop):
                if action.keeps_restart:
                    with self._own_lock:
                        self.expect_stop.add(name)
                self.log(f"{name}: {action.reason}")
                self._stop_then([name], {}, then=functools.partial(self._carry_out, agent, actions[index + 1:]))
                return
            if isinstance(action, ScheduleRestart):
                self._arm(name, action.at)
                self.log(f"{name}: {action.reason}")
            elif isinstance(action, GiveUp):
                self.log(f"{name}: GIVEN UP: {action.reason}")
                self._log_stderr(agent)
            elif isinstance(action, Record):
                self.log(f"{name}: {action.reason}")
            elif isinstance(action, CancelRestart):
                with self._timers_lock:
                    cancelled = self.timers.pop(name, None) is not None
                if cancelled:
                    self.log(f"{name}: {action.reason}")
            elif isinstance(action, FailDependents | RecoverDependents):
                if self._dependents(action.dependency):
                    self.work.put(DependencyFailed(action.dependency) if isinstance(action, FailDependents)
                                  else Running(action.dependency, running=True))
            elif isinstance(action, RaiseAlert | ResolveAlert):
                self._alert(name, action)
            elif isinstance(action, StartOnce | Skip):
                pass  # StartOnce is the timer thread's own (see `fire`); Skip: nothing to do

    def _alert(self, name: str, action: RaiseAlert | ResolveAlert) -> None:
        """Record an exit alert in the alert history and send it (its `agent/exit` keys are the keeper's; see
        state.alerts): the notifier's thread delivers it, this returns at once."""
        key = f"{name}/exit/CRITICAL"
        if isinstance(action, ResolveAlert) and not any(a.key == key for a in alerts.active(self.state_dir)):
            return
        kind = "firing" if isinstance(action, RaiseAlert) else "resolved"
        summary = action.summary if isinstance(action, RaiseAlert) else f"{name} exit alert resolved: it runs again"
        record = alerts.AlertRecord(key=key, agent=name, metric="exit", level="CRITICAL", kind=kind,
                                    value=action.value if isinstance(action, RaiseAlert) else 0.0, threshold=0.0,
                                    at=time.time(), summary=summary)
        try:
            alerts.record(self.state_dir, record)
        except OSError as exc:
            self.log(f"{name}: the alert could not be recorded: {exc}")
        if isinstance(action, RaiseAlert):
            self.log(f"{name}: ALERT: {summary}")
        self._guarded(self.notifications.submit, record)   # a notification problem never fails the event

    def _forget_removed(self) -> None:
        """Resolve the exit alerts of agents the live version no longer declares (nobody else would): asked by
        apply when it removes agents (supervisord.reports.report_removed)."""
        declared = self.agents()
        for alert in alerts.active(self.state_dir):
            if alert.metric == "exit" and alert.agent not in declared:
                record = alerts.AlertRecord(key=alert.key, agent=alert.agent, metric="exit", level=alert.level,
                                            kind="resolved", value=0.0, threshold=0.0, at=time.time(),
                                            summary=f"{alert.agent} exit alert resolved: no longer declared")
                try:
                    alerts.record(self.state_dir, record)
                except OSError as exc:
                    self.log(f"{alert.agent}: the alert could not be recorded: {exc}")
                self._guarded(self.notifications.submit, record)

    def _stop_then(self, names: list[str], depends_on: Mapping[str, Sequence[str]], *,
                   then: Callable[[], None] = lambda: None) -> None:
        """Stop `names` (dependents first) on a thread of its own, then call `then` there: the caller never waits."""
        def run() -> None:
            try:
                # whole: its process group, what its tree left, and what is still in its cgroups
                self._guarded(functools.partial(stop_in_order, state_dir=self.state_dir), self.client, names, depends_on)
                self._guarded(then)
            finally:
                with self._own_lock:
                    for name in names:
                        if self.stopping.get(name) is threading.current_thread():
                            del self.stopping[name]

        thread = threading.Thread(target=run, name=f"stop-{'+'.join(names)}", daemon=True)
        with self._own_lock:
            for name in names:
                self.stopping[name] = thread
        thread.start()

    def _stops_done(self, names: Sequence[str]) -> None:
        """Wait for the keeper's stops of `names` in progress (called only from threads that may wait)."""
        with self._own_lock:
            threads = {self.stopping[n] for n in names if n in self.stopping}
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()

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

    def _guarded(self, action: Callable[..., object], *args: object) -> None:
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
        again, on a thread of its own: what the operator recorded wins.
        """
        agent = self.agents().get(name)
        if agent is None:
            return
        entry = runtime.load_agent(self.state_dir, name)
        due = keeping.decide(RestartDue(name), entry, agent, self.clock(), world=self.world(runtime.load_global(self.state_dir)))
        start = next((a for a in due.actions if isinstance(a, StartOnce)), None)
        if start is None:
            return
        started = False
        for process in process_names(agent):
            started = self.client.start_once(process, token=start.token) or started
        after: list[keeping.Decision] = []

        def done(current: AgentHistory, live: runtime.RuntimeState) -> AgentHistory | None:
            decision = keeping.after_restart(entry, current, self.world(live), started=started)
            after.append(decision)
            return decision.history

        runtime.update_agent(self.state_dir, name, done)
        if after:
            self._carry_out(agent, after[0].actions)

    # -- the worker thread: liveness and dependency failures, recoveries; it never waits on a stop ------

    def run_worker(self) -> None:
        while True:
            self._guarded(self._work, self.work.get())

    def _work(self, event: Work) -> None:
        if isinstance(event, DependencyFailed):
            self.dependency_failed(event.dependency)
            return
        agent = self.agents().get(event.agent)
        if agent is None:
            return
        if isinstance(event, (LivenessFailed, LimitReached)):
            decision = self._record(agent, event, self.clock())
            self._carry_out(agent, decision.actions)
        else:
            self.recover_dependents(event.agent)

    # -- dependency failure ----------------------------------------------

    def _dependents(self, name: str) -> list[str]:
        """What depends on `name` (directly or not) and acts when it fails: from a graph built once per version."""
        current = self.history.current()
        if current is None:
            return []
        if self._graph is None or self._graph[0] is not current:
            graph = Graph.of_agents(current.agents)
            self._graph = (current, {n: keeping.acting(current.agents, graph.dependents(n)) for n in current.agents})
        return self._graph[1].get(name, [])

    def dependency_failed(self, name: str) -> None:
        """`name` stopped being ready: its dependents act on their on_dependency_failure (the stops on their own thread)."""
        agents = self.agents()
        dependents = self._dependents(name)
        if not dependents:
            return
        with runtime.changing(self.state_dir) as live:
            decision = keeping.on_dependency_failure(name, dependents, agents, live.agents, world=self.world(live))
            live.agents.update(decision.histories)
        if decision.stop:
            self.log(f"{name} is not ready: stopping {', '.join(decision.stop)} until it is")
            self._stop_then(list(decision.stop), {n: a.depends_on for n, a in agents.items()})
        if decision.wait:
            self.log(f"{name} is not ready: {', '.join(decision.wait)} will restart once it is back")

    def recover_dependents(self, name: str) -> None:
        """`name` is running again: once it is ready, bring back (in order) the dependents waiting for it."""
        dependents = self._dependents(name)
        waiting = keeping.waiting_for(name, dependents, {n: runtime.load_agent(self.state_dir, n) for n in dependents})
        if waiting and name not in self.recovering:
            self.recovering.add(name)
            threading.Thread(target=self._recover, args=(name, waiting), name=f"recover-{name}", daemon=True).start()

    def _recover(self, name: str, waiting: list[str]) -> None:
        agents = self.agents()

        def say(event: Progress) -> None:
            self.log(f"{event.agent}: {event.kind} {event.detail}".rstrip())

        try:
            back = Sequencer(self.client, agents, state_dir=self.state_dir, progress=say).run([], verify=[name])
            if not back.ok:  # running, but not ready: its own restart policy deals with it; they keep waiting
                self.log(f"{name} is running but not ready; {', '.join(waiting)} keep waiting for it")
                return
            self._stops_done(waiting)  # a dependent still being stopped is started only once it is down
            restart = keeping.to_restart_when_back(waiting, agents)
            if restart:
                stop_in_order(self.client, restart, {n: a.depends_on for n, a in agents.items()},
                              state_dir=self.state_dir)
            with runtime.changing(self.state_dir) as live:
                for dependent in waiting:   # each comes back: counted as a restart for its dependency
                    live.agents[dependent] = replace(live.agent(dependent).restarted("dependency"), waiting_for="")
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
