"""What the control room shows, kept fresh by one thread, and the stream of events pushed to every open page.

Owned here: the `Board` (every REFRESH seconds: supervisord's processes, the status rows `status` computes,
the latch, the live version, the active alerts; each agent's card; a ring of CPU and memory figures per
agent, from the exporter's samples when they are fresh) and the `Stream` (numbered events kept in a bounded
buffer, so a page that reconnects with `Last-Event-ID` gets what it missed; subscribers are asyncio queues
fed from any thread). A card that changed is published at once; so is every step of an action (desk).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.core.graph import Graph
from orchestrator.core.model import Agent
from orchestrator.interfaces.web.cards import color
from orchestrator.operations import status
from orchestrator.operations.reach import socket_of
from orchestrator.state import alerts as alert_history, runtime, samples
from orchestrator.state.history import History
from orchestrator.supervisord.client import Client, SupervisorError

REFRESH = 0.5         # seconds between two looks at supervisord: a change reaches the page within about this
CHECK_EVERY = 2.0     # seconds between two runs of an agent's probes while its processes stay as they are
CHART_POINTS = 180    # figures kept per agent: 15 minutes at the exporter's default 5 s interval
CHART_EVERY = 5.0     # seconds between two figures when the exporter's sample is stale (status sampled them)
FIGURES_EVERY = 5.0   # seconds between two pushes of the cards when only their figures (CPU, memory, uptime) moved
BUFFER = 1000         # events kept for pages that reconnect


@dataclass(frozen=True)
class Event:
    id: int
    kind: str         # "agents" (every card), "progress" (a step of an action), "result" (its end), "audit"
    data: dict[str, Any]


class Stream:
    """Numbered events, the last BUFFER kept; subscribers get each new one on their own asyncio queue."""

    def __init__(self) -> None:
        self.boot = int(time.time())          # ids of another run of the web process are not ours to resume
        self._ids = itertools.count(1)
        self._events: deque[Event] = deque(maxlen=BUFFER)
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event]]] = set()
        self._lock = threading.Lock()

    def publish(self, kind: str, data: dict[str, Any]) -> Event:
        """Send an event to every subscriber; keep it for pages that reconnect, unless it is the cards (a page that
        reconnects is sent the cards as they are then: at 200 agents a picture of them is 100 KB)."""
        with self._lock:
            event = Event(next(self._ids), kind, data)
            if kind != "agents":
                self._events.append(event)
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        return event

    def event_id(self, event: Event) -> str:
        return f"{self.boot}-{event.id}"

    def since(self, last: str | None) -> list[Event]:
        """The buffered events after `last` (an id this stream gave); all of them for an id of another run."""
        number = 0
        if last:
            boot, _, count = last.partition("-")
            if boot == str(self.boot) and count.isdigit():
                number = int(count)
        with self._lock:
            return [e for e in self._events if e.id > number]

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        with self._lock:
            self._subscribers.add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        with self._lock:
            self._subscribers = {s for s in self._subscribers if s[1] is not queue}


class Board:
    """The live picture of one state directory. `start()` runs the refresh thread; `refresh()` is one look."""

    def __init__(self, state_dir: str, stream: Stream, *, clock: Callable[[], float] = time.time) -> None:
        self.state_dir, self.stream, self.clock = state_dir, stream, clock
        self.history = History(state_dir)
        self.cards: dict[str, dict[str, Any]] = {}
        self.latch: dict[str, Any] | None = None
        self.version: int | None = None
        self.error = ""                       # why the last look failed (supervisord not running, ...)
        self.charts: dict[str, deque[tuple[float, float | None, int | None]]] = {}
        self._sample_at = 0.0
        self._pushed_at = 0.0
        self._checked: status.Checked = {}   # each agent's last probe answers (status.collect)
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._run, name="board", daemon=True).start()

    def poke(self) -> None:
        """Look again now (after an action)."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the board goes on; the page says what failed
                self._failed(f"{type(exc).__name__}: {exc}")
            self._wake.wait(REFRESH)
            self._wake.clear()

    def agents(self) -> dict[str, Agent]:
        current = self.history.current()
        return dict(current.agents) if current else {}

    def graph(self) -> Graph:
        return Graph.of_agents(self.agents())

    def up(self) -> set[str]:
        with self._lock:
            return {name for name, card in self.cards.items() if card["state"] in ("RUNNING", "STARTING", "BACKOFF")}

    def refresh(self) -> None:
        current = self.history.current()
        agents = dict(current.agents) if current else {}
        client = Client(socket_of(self.state_dir))
        try:
            processes = client.processes()
        except SupervisorError as exc:
            self._failed(f"supervisord does not answer: {exc}")
            return
        live = runtime.load(self.state_dir)
        opened: dict[str, list[dict[str, Any]]] = {}
        for alert in alert_history.active(self.state_dir):
            opened.setdefault(alert.agent, []).append(alert.as_dict())
        now = self.clock()
        sampled = samples.read(self.state_dir, now)
        if sampled is not None:
            # a process newer than the exporter's sample shows no figures until the next sample, rather than
            # status sampling every tree itself (a quarter of a second, and CPU, at every look)
            sampled = {p.pid: sampled.get(p.pid, (None, None)) for p in processes if p.pid}
        rows = status.collect(client, agents, histories=live.agents, now=now, sampled=sampled, processes=processes,
                              alerts={a: tuple(str(x["level"]) for x in found) for a, found in opened.items()},
                              checked=self._checked, check_every=CHECK_EVERY)
        graph = Graph.of_agents(agents)
        latched = live.latch is not None
        cards: dict[str, dict[str, Any]] = {}
        for row in rows:
            card = row.as_dict()
            card["color"] = color(card, latched=latched)
            card["alerts"] = opened.get(row.agent, [])
            card["wave"] = graph.wave_of(row.agent) if row.agent in graph.depends_on else None
            card["depends_on"] = list(graph.depends_on.get(row.agent, ()))
            card["description"] = agents[row.agent].description if row.agent in agents else ""
            cards.setdefault(row.agent, card)   # one card per agent: its first process (replicas share it)
        fresh_sample = sampled is not None and self._taken_at() != self._sample_at
        latch = None if live.latch is None else {"since": live.latch.since, "reason": live.latch.reason,
                                                 "text": runtime.describe_latch(live.latch)}
        with self._lock:
            if fresh_sample or not self.charts or now - self._last_chart() >= CHART_EVERY:
                self._sample_at = self._taken_at()
                for row in rows:
                    if cards[row.agent]["name"] == row.name:   # the card's process
                        ring = self.charts.setdefault(row.agent, deque(maxlen=CHART_POINTS))
                        ring.append((now, row.cpu_percent, row.memory_rss_bytes))
            changed = self._shown(cards) != self._shown(self.cards) or latch != self.latch or self.error \
                or (current.number if current else None) != self.version
            self.cards, self.latch, self.error = cards, latch, ""
            self.version = current.number if current else None
        if changed or now - self._pushed_at >= FIGURES_EVERY:
            self._pushed_at = now
            self.stream.publish("agents", self.snapshot())

    def _taken_at(self) -> float:
        try:
            return os.stat(os.path.join(self.state_dir, "runtime", samples.FILE)).st_mtime
        except OSError:
            return 0.0

    def _last_chart(self) -> float:
        return max((ring[-1][0] for ring in self.charts.values() if ring), default=0.0)

    @staticmethod
    def _shown(cards: dict[str, dict[str, Any]]) -> str:
        """What a change of is worth a push: everything but the figures that move every second."""
        return json.dumps({n: {k: v for k, v in c.items() if k not in ("uptime_seconds", "cpu_percent",
                                                                           "memory_rss_bytes", "next_restart_in")}
                           for n, c in cards.items()}, sort_keys=True, default=str)

    def _failed(self, why: str) -> None:
        with self._lock:
            changed = why != self.error
            self.error = why
        if changed:
            self.stream.publish("agents", self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        """Every card, the latch, the live version and the board's error, as the page and /api/agents show them."""
        with self._lock:
            return {"agents": [dict(c) for c in sorted(self.cards.values(), key=lambda c: (c["wave"] or 0, c["agent"]))],
                    "latch": self.latch, "version": self.version, "error": self.error, "at": self.clock()}

    def chart(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [{"at": at, "cpu_percent": cpu, "memory_rss_bytes": rss} for at, cpu, rss in self.charts.get(name, ())]
