"""Finding and reaching the live supervisord of a state directory, and telling a hung one from one not running.

Owned here: where the live version says supervisord's socket is, and the one error every command gives
when supervisord does not answer. Light on purpose: `status`, `emergency-stop` and the listener need it
without the apply machinery (and the renderer with jinja2) that lifecycle brings.
"""

from __future__ import annotations

import os
import re

from orchestrator.core.errors import StateError, not_running_message
from orchestrator.host import processes
from orchestrator.state.history import History
from orchestrator.supervisord.client import Client


def socket_of(state_dir: str) -> str:
    """The supervisord socket the live version configures (default: STATE/supervisor.sock)."""
    main = History(state_dir).current_main()
    if main is not None:
        match = re.search(r"^file=(.+)$", main, re.MULTILINE)
        if match:
            return match.group(1).replace("%%", "%")
    return os.path.join(state_dir, "supervisor.sock")


def refuse_if_hung(state_dir: str, client: Client) -> None:
    """supervisord's pid file names a live supervisord that does not answer: touching its children would be wrong."""
    try:
        with open(os.path.join(state_dir, "supervisord.pid"), encoding="utf-8") as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        return
    if processes.is_running_command(pid, "supervisord"):
        raise StateError(f"supervisord (pid {pid}) is running but does not answer on {client.socket_path} (hung); "
                         f"see its log in logs/supervisord.log, then stop it (kill {pid}) and retry")


def require_running(state_dir: str, client: Client, *, shown_as: str = "") -> None:
    """supervisord answers for `state_dir`; otherwise an error that says whether it is hung (with its pid) or not running."""
    if client.is_running():
        return
    refuse_if_hung(state_dir, client)
    raise StateError(not_running_message(shown_as or state_dir))
