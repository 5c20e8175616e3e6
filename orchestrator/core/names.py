"""The names every layer agrees on: files of a state directory, environment markers, internal groups, process names.

Owned here, and written nowhere else: the layout of a state directory as the
other layers see it (the rendered files, the live version, logs, runtime
notes), the environment variables orchestrator puts on every process it starts,
which supervisord groups are orchestrator's own, and how an agent's processes
are named in supervisord. The renderer writes these names, supervisord's
extension and the host layer read them back from running processes, state
keeps its files under them; all import them from here, so none has to load
another's libraries (jinja2, supervisor, psutil) for a constant.

Standard library only, no I/O.
"""

from __future__ import annotations

from orchestrator.core.model import Agent

# -- the state directory ------------------------------------------------------
MAIN_CONFIG = "supervisord.conf"
PROGRAMS_DIR = "programs"    # programs/NAME.conf, one file per agent
LOGS_DIR = "logs"
TMP_DIR = "tmp"              # tmp/AGENT/PROCESS: an agent's private temporary directory (sandbox.private_tmp)
LAUNCH_DIR = "launch"        # launch/NAME-DIGEST.launch (0600), NAME.controls and the key (supervisord.launching)
LIVE_DIR = "current"         # the live version (a link into history/)
RUNTIME_DIR = "runtime"      # runtime/NAME.json, each agent's restart history (see state.runtime)
EXITS_DIR = "exits"          # runtime/exits/GROUP:PROCESS: how a process last ended, written by supervisord's extension

# -- groups -------------------------------------------------------------------
LISTENER = "_orchestrator"   # orchestrator's own event listener
EXPORTER = "_exporter"       # orchestrator's metrics exporter (see daemons.exporter)
INTERNAL_PREFIX = "_"        # agent names cannot start with it (see config.schema)


def is_internal(group: str) -> bool:
    """A supervisord group of orchestrator's own (its listener, its exporter; later its web page): never an
    agent, never planned, stopped, listed or counted as one."""
    return group.startswith(INTERNAL_PREFIX)


def process_names(agent: Agent) -> list[str]:
    """supervisord's full names (`group:process`) of the agent's processes, as program.conf.j2 names them."""
    if agent.replicas == 1:
        return [f"{agent.name}:{agent.name}"]
    return [f"{agent.name}:{agent.name}_{i}" for i in range(agent.replicas)]


# -- markers: environment variables on the processes orchestrator starts -------
# Every process carries this one, naming its state directory: how orphans of a killed
# supervisord and the targets of an emergency stop are found (never by name).
MARKER = "ORCHESTRATOR_STATE_DIR"
# Every agent process also carries the hash of the program section it was started from, so a
# process still running an older configuration (after an interrupted apply) is never taken for
# an up-to-date one: plan compares it with the hash of what it would render now.
CONFIG_MARKER = "ORCHESTRATOR_CONFIG"
# orchestrator's listener also carries the manifests directory (and environment) it was rendered from (a stored
# copy's origin, not the copy: see ManifestSet.origin_dir),
# so `down`, `status` and `emergency-stop` find a running project's state directory from its processes
# when neither --state-dir nor the pointer `up` leaves names it (see host.orphans.state_dirs_of).
MANIFESTS_MARKER = "ORCHESTRATOR_MANIFESTS"
ENV_MARKER = "ORCHESTRATOR_ENV"
