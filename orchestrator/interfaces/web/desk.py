"""The control room's actions: one at a time, each through the operation the command line calls, each audited.

Owned here: carrying out start, stop, restart (of an agent), start-all, stop-all, restart-all, the emergency
stop and its clearing, and a rollback, on a worker thread; every step they emit (core.events) is published
on the board's stream as `progress`, their end as `result`, and an entry (who, when, what, result) is
appended to the audit log (state.audit), refusals included. The operations take the locks the command line
takes (the runtime lock, the apply lock for a rollback): a web action and a command never act around each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.core.errors import OrchestratorError
from orchestrator.core.events import Event, Note, StartEvent, StopEvent
from orchestrator.core.plan import Plan, to_lines
from orchestrator.interfaces.web.board import Board
from orchestrator.interfaces.web.cards import AGENT_ACTIONS, ALL_ACTIONS, EMERGENCY_WORD
from orchestrator.operations import backups, control
from orchestrator.operations.reach import require_running, socket_of
from orchestrator.operations.sequencer import Result
from orchestrator.state import audit
from orchestrator.supervisord.client import Client

EMERGENCY_RPC_TIMEOUT = 2.0   # as the command line: a hung supervisord must not hold up an emergency stop
ACTIONS = (*AGENT_ACTIONS, *ALL_ACTIONS, "emergency-stop", "emergency-clear", "rollback")


class Refused(OrchestratorError):
    """An action not carried out: `status` is the HTTP status it is answered with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Who:
    user: str
    role: str


def event_data(event: Event) -> dict[str, Any]:
    """A step of an operation as the page shows it."""
    if isinstance(event, StartEvent):
        return {"type": "start", "agent": event.agent, "step": event.kind, "elapsed": round(event.elapsed, 2),
                "detail": event.detail, "text": f"{event.agent}: {event.kind}" + (f" ({event.detail})" if event.detail else "")}
    if isinstance(event, StopEvent):
        return {"type": "stop", "agent": event.agent, "step": event.what, "text": f"{event.agent}: {event.what}"}
    return {"type": "note", "text": event.text if isinstance(event, Note) else str(event)}


def plan_digest(target: int, plan: Plan) -> str:
    """A rollback's plan in a few characters: what the operator saw is what is carried out."""
    return hashlib.sha256(json.dumps([target, to_lines(plan)]).encode()).hexdigest()[:16]


class Desk:
    def __init__(self, board: Board, *, manifests_dir: str, env: str | None, clock: Callable[[], float] = time.time) -> None:
        self.board, self.manifests_dir, self.env, self.clock = board, manifests_dir, env, clock
        self.state_dir = board.state_dir
        self._busy = threading.Lock()
        self._ids = iter(range(1, 1 << 62))
        self.running: dict[str, Any] | None = None

    def audit(self, who: Who, action: str, target: str, result: str, detail: str = "") -> None:
        entry = audit.Entry(at=self.clock(), user=who.user, role=who.role, action=action, target=target, result=result,
                            detail=detail)
        audit.append(self.state_dir, entry)
        self.board.stream.publish("audit", entry.as_dict())

    def submit(self, who: Who, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Check the action, then carry it out on a thread; {"id", "action", "target"} at once (its steps and result
        come on the stream). Raises Refused (audited) when it cannot start."""
        target = str(body.get("agent") or body.get("version") or "all")
        try:
            work = self._work(action, body)
        except Refused as exc:
            self.audit(who, action, target, "refused", str(exc))
            raise
        if not self._busy.acquire(blocking=False):
            running = self.running or {}
            why = f"another action is running: {running.get('action')} {running.get('target')} by {running.get('user')}"
            self.audit(who, action, target, "refused", why)
            raise Refused(why, 409)
        number = next(self._ids)
        self.running = {"id": number, "action": action, "target": target, "user": who.user}
        self.board.stream.publish("progress", {"action_id": number, "action": action, "target": target,
                                               "type": "begin", "text": f"{action} {target} (by {who.user})"})
        threading.Thread(target=self._carry_out, args=(who, number, action, target, work), name=f"action-{number}",
                         daemon=True).start()
        return {"id": number, "action": action, "target": target}

    def _carry_out(self, who: Who, number: int, action: str, target: str, work: Callable[[Callable[[Event], None]], str]) -> None:
        def emit(event: Event) -> None:
            self.board.stream.publish("progress", {"action_id": number, "action": action, "target": target,
                                                   **event_data(event)})
            self.board.poke()

        try:
            detail, result = work(emit), "ok"
        except OrchestratorError as exc:
            detail, result = str(exc), "failed"
        except Exception as exc:  # noqa: BLE001 - a bug: the operator is told, the desk takes the next action
            detail, result = f"unexpected {type(exc).__name__}: {exc}", "failed"
        finally:
            self.running = None
            self._busy.release()
        self.board.poke()
        self.board.stream.publish("result", {"action_id": number, "action": action, "target": target, "result": result,
                                             "detail": detail})
        self.audit(who, action, target, result, detail)

    # -- the work of each action: checked here (Refused), carried out on the thread ---------------------------

    def _client(self) -> Client:
        client = Client(socket_of(self.state_dir))
        require_running(self.state_dir, client)
        return client

    def _work(self, action: str, body: dict[str, Any]) -> Callable[[Callable[[Event], None]], str]:
        agents = self.board.agents()
        if action in AGENT_ACTIONS:
            name = body.get("agent")
            if not isinstance(name, str) or name not in agents:
                raise Refused(f"unknown agent {name!r} (expected one of {', '.join(sorted(agents))})", 404)
        if action == "start":
            return lambda emit: _started(control.start(self.state_dir, self._client(), [body["agent"]], emit=emit))
        if action == "stop":
            return lambda emit: _stopped(control.stop(self.state_dir, self._client(), [body["agent"]], emit=emit))
        if action == "restart":
            return lambda emit: self._restart([body["agent"]], emit)
        if action == "start-all":
            return lambda emit: _started(control.start(self.state_dir, self._client(), None, emit=emit))
        if action == "stop-all":
            return lambda emit: _stopped(control.stop(self.state_dir, self._client(), None, emit=emit))
        if action == "restart-all":
            return lambda emit: self._restart(None, emit)
        if action == "emergency-stop":
            if body.get("word") != EMERGENCY_WORD:
                raise Refused(f"type {EMERGENCY_WORD} to confirm the emergency stop", 400)
            reason = str(body.get("reason") or "emergency stop from the control room")
            return lambda emit: self._emergency(reason, emit)
        if action == "emergency-clear":
            return lambda emit: self._clear()
        if action == "rollback":
            version, shown = body.get("version"), body.get("plan")
            if not isinstance(version, (int, str)) or not isinstance(shown, str):
                raise Refused("a rollback needs the version and the digest of the plan shown (GET /api/rollback)", 400)
            return lambda emit: self._rollback(str(version), shown, emit)
        raise Refused(f"no such action {action!r} (expected one of {', '.join(ACTIONS)})", 404)

    def _restart(self, names: list[str] | None, emit: Callable[[Event], None]) -> str:
        client = self._client()
        stopped = control.stop(self.state_dir, client, names, emit=emit)
        started = control.start(self.state_dir, client, stopped if names is not None else None,
                                no_deps=names is not None, emit=emit, restarting=stopped)
        return f"stopped {', '.join(stopped) or 'nothing'}; " + _started(started)

    def _emergency(self, reason: str, emit: Callable[[Event], None]) -> str:
        report = control.emergency_stop(self.state_dir, Client(socket_of(self.state_dir), timeout=EMERGENCY_RPC_TIMEOUT),
                                        reason=reason, emit=emit)
        text = f"{report.signalled} process(es) signalled, {report.killed} of them killed; " + (
            "latched until cleared" if report.latched else "NOT latched")
        if report.problems:
            text += "; " + "; ".join(report.problems)
        if not report.latched:
            raise OrchestratorError(text)
        self._annotate_emergency(reason)
        return text

    def _annotate_emergency(self, reason: str) -> None:
        """As the command line does after an emergency stop: an annotation on the dashboards (when Grafana is set)."""
        from orchestrator.config.manifest import LoadOptions, load
        from orchestrator.interfaces.grafana import annotate_emergency

        annotate_emergency(lambda: load(LoadOptions(self.manifests_dir, env=self.env, state_dir=self.state_dir,
                                                    check_commands=False)), reason)

    def _clear(self) -> str:
        from orchestrator.state import runtime

        latch = control.emergency_clear(self.state_dir)
        return f"cleared: {runtime.describe_latch(latch)}" if latch else "no emergency stop was latched"

    def prepare_rollback(self, version: str | None) -> Any:
        from orchestrator.operations import rollback

        return rollback.prepare(self.state_dir, manifests_dir=self.manifests_dir, env=self.env, version=version)

    def _rollback(self, version: str, shown: str, emit: Callable[[Event], None]) -> str:
        from orchestrator.operations import rollback
        from orchestrator.operations.apply import ApplyError

        prepared = self.prepare_rollback(version)
        if plan_digest(prepared.target.number, prepared.plan) != shown:
            raise OrchestratorError("the plan changed since it was shown (the manifests, the live version or the running "
                                    "agents changed): review it again")
        try:
            report = rollback.carry_out(prepared, confirm=lambda old, new: False, emit=emit,
                                        message=f"rollback to version {prepared.target.number} from the control room")
        except ApplyError as exc:
            raise OrchestratorError(f"rollback to version {prepared.target.number} failed (its manifests are on disk; "
                                    f"`orchestrator apply` tries again): {exc}") from exc
        recorded = report.version
        return f"rolled back to version {prepared.target.number}" + (f", recorded as version {recorded.number}"
                                                                      if recorded else "")

    def backup(self) -> bytes:
        """An archive of the manifests and the whole history (operations.backups, under the apply lock), as bytes."""
        with tempfile.TemporaryDirectory(prefix="orchestrator-backup-") as scratch:
            path = os.path.join(scratch, "backup.tar.gz")
            backups.backup(path, manifests_dir=self.manifests_dir, state_dir=self.state_dir)
            with open(path, "rb") as handle:
                return handle.read()


def _started(result: Result) -> str:
    if not result.ok:
        raise OrchestratorError("start failed: " + "; ".join(result.problems()))
    return f"started {', '.join(result.started)}; all ready" if result.started else "already running and ready"


def _stopped(stopped: list[str]) -> str:
    return f"stopped {', '.join(stopped)}" if stopped else "nothing to stop"
