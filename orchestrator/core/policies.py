"""Restart policies as a pure decision: (event, history, policy, now) -> decision.

Owned here: what happens when an agent's process ends. Nothing here does I/O,
reads a clock or sleeps: the listener passes `now` in (and a random number for
jitter), gets a `Decision` back, stores the new `AgentHistory`, and schedules
the restart itself.

    immediate            restart at once
    delayed              restart after `delay`
    exponential-backoff  restart after delay * multiplier^(n-1), at most max_delay,
                         spread by +-jitter (a fraction; 0 by default, so runs repeat)
    manual               never restart; the exit is recorded

For every policy: an exit whose status is listed in `exit_codes` (or 0) is
expected and not a failure. At most `max_attempts` failed attempts within
`window`: the one after that gives the agent up (a manual start, or a changed
manifest, clears it). `reset_after` of stable uptime before a failure starts
the count again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from orchestrator.core.model import RestartPolicy

# Why an agent was restarted, as `orchestrator_agent_restarts_total{reason}` says: an exit or a failed start, a failed
# liveness probe, a limit of its resources (the exporter's), a dependency that came back, the operator's `restart`.
RESTART_REASONS = ("crash", "liveness", "memory_limit", "cpu_limit", "fds_limit", "dependency", "operator")

Action = Literal["restart", "give-up", "record", "ignore"]


@dataclass(frozen=True)
class Exit:
    """A process of the agent ended: how, and whether anyone asked for it."""

    exitstatus: int | None
    expected: bool = False    # supervisord's verdict: the status is in the agent's exit codes
    requested: bool = False   # stopped on purpose (a stop command, apply, down): never a failure
    during_start: bool = False  # it ended before it was up for min_uptime, or before it was ready
    detail: str = ""           # what happened, when not an exit: "not ready after 10s: ...", a liveness failure


@dataclass(frozen=True)
class AgentHistory:
    """What the policy remembers about one agent; persisted by the listener."""

    failures: tuple[float, ...] = ()      # times of failed attempts inside the current window
    started_at: float | None = None       # when its current (or last) process started
    restarts: int = 0                     # automatic restarts, ever
    given_up: bool = False
    reason: str = ""                      # why it was given up, or why it last exited
    next_restart_at: float | None = None  # a scheduled restart, while backing off
    last_action_at: float | None = None   # the last liveness or threshold action (cooldown counts from it)
    waiting_for: str = ""                 # a dependency that stopped being ready: this agent acts when it is back
    stopped: bool = False                 # stopped by the operator (stop, down, apply's removal): nothing restarts it
    exits: int = 0                        # ends the keeper has decided on; a starter waits for it to move
    decided_at: float | None = None       # when the keeper decided the last restart (its delay counts from it)
    restart_token: str = ""               # names that restart decision: supervisord starts once per token
    last_event: str = ""                  # "SUPERVISORD_PID:SERIAL" of the last event handled: a redelivery is not counted twice
    # restarts by reason (RESTART_REASONS): automatic ones as `restarts` counts them, and the operator's
    restart_reasons: Mapping[str, int] = field(default_factory=dict)

    def restarted(self, reason: str) -> AgentHistory:
        """One more restart counted under `reason`."""
        counts = dict(self.restart_reasons)
        counts[reason] = counts.get(reason, 0) + 1
        return replace(self, restart_reasons=counts)

    def started(self, now: float) -> AgentHistory:
        return replace(self, started_at=now, next_restart_at=None)

    def cleared(self) -> AgentHistory:
        """A manual start or a changed manifest: the count starts again."""
        return replace(self, failures=(), given_up=False, reason="", next_restart_at=None, waiting_for="", stopped=False)

    def starting(self) -> AgentHistory:
        """About to be started by apply, up, start or the boot sequence: no longer stopped by the operator."""
        return replace(self, stopped=False)

    def stopping(self) -> AgentHistory:
        """Stopped by the operator: its pending restart is cancelled and nothing restarts it."""
        return replace(self, stopped=True, next_restart_at=None)

    def in_warmup(self, warmup: float, now: float) -> bool:
        return self.started_at is None or now - self.started_at < warmup

    def in_cooldown(self, cooldown: float, now: float) -> bool:
        return self.last_action_at is not None and now - self.last_action_at < cooldown


@dataclass(frozen=True)
class Decision:
    action: Action
    delay: float = 0.0
    reason: str = ""
    history: AgentHistory = field(default_factory=AgentHistory)


def backoff_delay(policy: RestartPolicy, attempt: int, rand: float = 0.5) -> float:
    """The delay before restart number `attempt` (1-based); `rand` in [0, 1) spreads it by the jitter."""
    if policy.policy == "immediate":
        return 0.0
    if policy.policy == "delayed":
        base = policy.delay
    else:
        base = min(policy.delay * policy.multiplier ** (attempt - 1), policy.max_delay)
    spread = policy.jitter * (2.0 * rand - 1.0) if policy.policy == "exponential-backoff" else 0.0
    return max(0.0, base * (1.0 + spread))


def decide(event: Exit, history: AgentHistory, policy: RestartPolicy, now: float, *, rand: float = 0.5,
           cause: str = "crash") -> Decision:
    """What to do about `event`, given the agent's `history` and `policy`, at time `now`; a restart is counted
    under `cause` (one of RESTART_REASONS)."""
    if event.requested:
        return Decision("ignore", reason="stopped on request", history=replace(history, next_restart_at=None))
    status = ("exit status unknown" if event.exitstatus is None
              else "killed by a signal" if event.exitstatus < 0  # supervisord reports -1 for a death by signal
              else f"exit status {event.exitstatus}")
    if event.expected and not event.during_start:
        return Decision("record", reason=f"exited as expected ({status})", history=replace(history, reason=f"expected exit, {status}"))
    uptime = now - history.started_at if history.started_at is not None else 0.0
    failures = history.failures
    if history.started_at is not None and uptime >= policy.reset_after:
        failures = ()  # it had been stable long enough: the count starts again
    failures = tuple(t for t in failures if now - t < policy.window) + (now,)
    how = "failed to start" if event.during_start and event.exitstatus is None else f"exited after {uptime:.1f}s"
    reason = event.detail or f"{how} ({status})"
    if policy.policy == "manual":
        return Decision("record", reason=f"{reason}; restart policy is manual",
                        history=replace(history, failures=failures, reason=reason))
    if len(failures) >= policy.max_attempts:
        why = f"{len(failures)} failed attempts within {policy.window:g}s (max_attempts {policy.max_attempts}); last: {reason}"
        return Decision("give-up", reason=why,
                        history=replace(history, failures=failures, given_up=True, reason=why, next_restart_at=None))
    delay = backoff_delay(policy, len(failures), rand)
    return Decision("restart", delay=delay, reason=f"{reason}; restart {len(failures)} in {delay:g}s",
                    history=replace(history.restarted(cause), failures=failures, reason=reason,
                                    next_restart_at=now + delay, restarts=history.restarts + 1))
