"""The reports that reach the restart keeper through supervisord: an agent not ready, at a limit, removed.

Owned here: their wire form. Each is a REMOTE_COMMUNICATION event of type
COMM_TYPE (supervisord's sendRemoteCommEvent), with a JSON body whose `kind`
says what it reports, so it reaches the listener as an event, in order with
the process events, and is acknowledged only once the keeper has decided.

    not-ready  a starter (operations.sequencer) stopped an agent that did not become ready
    limit      the exporter saw an agent at a limit of its resources (core.alerts.on_limit)
    removed    apply removed agents: the keeper resolves what it holds open for them

Sent by the sequencer, the exporter and apply; read by daemons.restarts. Kept
apart from the sequencer so the exporter, which only reports, does not load it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from orchestrator.supervisord.client import Client

# The REMOTE_COMMUNICATION type a starter uses to report a failed readiness wait to the restart keeper.
COMM_TYPE = "orchestrator"


def report_not_ready(client: Client, agent: str, *, exits: int, detail: str) -> None:
    """A starter stopped `agent` because it did not become ready: the keeper decides what follows.

    Sent through supervisord (sendRemoteCommEvent), so it reaches the listener as an
    event, acknowledged only once decided; `exits` is the count the starter saw, so
    a report about an attempt the keeper has already decided on is ignored.
    """
    client.send_remote_comm(COMM_TYPE, json.dumps({"kind": "not-ready", "agent": agent, "exits": exits, "detail": detail}))


def report_limit(client: Client, agent: str, *, reason: str, detail: str, action: str) -> None:
    """The exporter saw `agent` at a limit of its resources (core.alerts.on_limit): the keeper acts on it.

    Sent through supervisord like `report_not_ready`; `action` is the manifest's on_limit (restart or stop);
    `reason` (memory_limit, cpu_limit, fds_limit) is what the restart is counted as.
    """
    client.send_remote_comm(COMM_TYPE, json.dumps({"kind": "limit", "agent": agent, "reason": reason,
                                                   "detail": detail, "action": action}))


def report_removed(client: Client, agents: Sequence[str]) -> None:
    """apply removed `agents`: the keeper resolves what it holds open for them (their exit alerts).

    Sent through supervisord like `report_not_ready`: a removed agent that was already down makes no event."""
    client.send_remote_comm(COMM_TYPE, json.dumps({"kind": "removed", "agents": list(agents)}))
