"""Pure: what a card says (its color) and what an action will touch (its confirmation), from data alone.

    green    running and ready, health not failing
    yellow   starting, backing off, stopping, not ready yet, or its liveness probe failing (degraded)
    red      down: stopped, exited, fatal, absent, given up, or every agent while an emergency stop is latched

A confirmation is computed from the dependency graph of the live version and what is up: stopping an agent
stops whatever depends on it first, starting one starts what it needs first. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.core.graph import Graph

EMERGENCY_WORD = "STOP"   # typed by the operator to confirm an emergency stop
AGENT_ACTIONS = ("start", "stop", "restart")
ALL_ACTIONS = ("start-all", "stop-all", "restart-all")
_YELLOW_STATES = {"STARTING", "BACKOFF", "STOPPING"}


def color(row: Mapping[str, Any], *, latched: bool) -> str:
    """green, yellow or red: the card of a status row (`status --output json`'s fields)."""
    state = row.get("state")
    if latched and state not in ("RUNNING", "STARTING"):
        return "red"
    if state == "RUNNING":
        failing = str(row.get("health", "")).startswith("failing")
        return "green" if row.get("ready") and not failing else "yellow"
    return "yellow" if state in _YELLOW_STATES and not row.get("given_up") else "red"


@dataclass(frozen=True)
class Confirmation:
    action: str
    target: str                  # an agent, or "all"
    text: str                    # what the operator is asked
    affected: tuple[str, ...]    # every agent the action touches, in the order it touches them
    word: str | None = None      # to be typed (the emergency stop)

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "target": self.target, "text": self.text, "affected": list(self.affected),
                "word": self.word}


def _names(names: Collection[str]) -> str:
    return ", ".join(names)


def confirmation(action: str, target: str, graph: Graph, *, up: Collection[str]) -> Confirmation:
    """What `action` on `target` (an agent, or "all" for the bulk actions) touches, in words, for the operator."""
    if action == "emergency-stop":
        return Confirmation(action, "all", f"Emergency stop: every agent is killed at once, with no ordering, and "
                                           f"nothing starts again until the stop is cleared. Type {EMERGENCY_WORD} "
                                           "to confirm.", graph.start_order, EMERGENCY_WORD)
    if action == "emergency-clear":
        return Confirmation(action, "all", "Clear the emergency stop? The agents stay stopped until started.", ())
    if action in ALL_ACTIONS:
        order = graph.stop_order if action == "stop-all" else graph.start_order
        verb = {"start-all": "Start every agent in dependency order",
                "stop-all": "Stop every agent, dependents first",
                "restart-all": "Stop every agent, dependents first, then start them all in dependency order"}[action]
        return Confirmation(action, "all", f"{verb}: {_names(order)}.", order)
    if action == "start":
        needed = [d for d in graph.dependencies(target) if d not in up]
        also = f"; it also starts what it needs first: {_names(needed)}" if needed else ""
        return Confirmation(action, target, f"Start {target}{also}.", (*needed, target))
    dependents = graph.dependents(target)
    verb = "stopping" if action == "stop" else "restarting"
    if action == "stop":
        touched = (*reversed(dependents), target)
        also = f"; {verb} {target} also stops {_names(dependents)}" if dependents else ""
        return Confirmation(action, target, f"Stop {target}{also}.", touched)
    also = f"; {verb} {target} also stops and starts again {_names(dependents)}" if dependents else ""
    return Confirmation(action, target, f"Restart {target}{also}.", (target, *dependents))
