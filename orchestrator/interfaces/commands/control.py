"""start, stop, restart (one agent, some, or all) in dependency order, and the emergency stop and its latch."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from orchestrator.core import graph
from orchestrator.core.errors import OrchestratorError, display_path
from orchestrator.core.events import Emit
from orchestrator.interfaces.options import Options
from orchestrator.interfaces.output import renderer
from orchestrator.operations import control
from orchestrator.operations.reach import require_running, socket_of
from orchestrator.state import runtime
from orchestrator.state.history import History
from orchestrator.supervisord.client import Client

EMERGENCY_RPC_TIMEOUT = 2.0  # a hung supervisord must not hold up an emergency stop


class _Live:
    """The live state directory, its agents' order, and a client of its supervisord."""

    def __init__(self, options: Options) -> None:
        self.state_dir = options.state_dir_only()
        self.client = Client(socket_of(self.state_dir))
        require_running(self.state_dir, self.client, shown_as=display_path(self.state_dir))
        current = History(self.state_dir).current()
        self.agents = dict(current.agents) if current else {}
        self.graph = graph.Graph.of_agents(self.agents)

    def progress(self) -> Emit:
        return renderer(self.graph)


def _confirm_stop(what: str, yes: bool) -> None:
    if not yes and sys.stdin.isatty():
        click.confirm(f"This stops {what}. Continue?", abort=True, err=True)


def _started(result: Any) -> None:
    if not result.ok:
        raise OrchestratorError("start failed:\n" + "\n".join(result.problems()))
    click.echo(f"Started {', '.join(result.started)}; all ready." if result.started else "Already running and ready.")


def _start(options: Options, names: tuple[str, ...] | None, no_deps: bool, *, restarting: Sequence[str] = ()) -> None:
    live = _Live(options)
    _started(control.start(live.state_dir, live.client, names, no_deps=no_deps, emit=live.progress(),
                           restarting=restarting))


def _stop(options: Options, names: tuple[str, ...] | None, no_deps: bool, yes: bool) -> list[str]:
    live = _Live(options)
    _confirm_stop(", ".join(names) + ("" if no_deps else " and whatever depends on them") if names else "every agent", yes)
    stopped = control.stop(live.state_dir, live.client, names, no_deps=no_deps, emit=live.progress())
    click.echo(f"Stopped {', '.join(stopped)}." if stopped else "Nothing to stop.")
    return stopped


_NO_DEPS = click.option("--no-deps", is_flag=True, help="Only the agents named: not their dependencies (start) "
                                                        "or dependents (stop).")
_YES = click.option("--yes", is_flag=True, help="Do not ask for confirmation.")


@click.command("start")
@click.argument("names", nargs=-1, required=True)
@_NO_DEPS
@click.pass_obj
def start_command(options: Options, names: tuple[str, ...], no_deps: bool) -> None:
    """Start agents, their dependencies first, each once what it needs is ready.

    A given-up agent is cleared by a manual start. Refused while an
    emergency stop is latched.
    """
    _start(options, names, no_deps)


@click.command("stop")
@click.argument("names", nargs=-1, required=True)
@_NO_DEPS
@_YES
@click.pass_obj
def stop_command(options: Options, names: tuple[str, ...], no_deps: bool, yes: bool) -> None:
    """Stop agents, whatever depends on them first (each level in parallel)."""
    _stop(options, names, no_deps, yes)


@click.command("restart")
@click.argument("names", nargs=-1, required=True)
@_NO_DEPS
@_YES
@click.pass_obj
def restart_command(options: Options, names: tuple[str, ...], no_deps: bool, yes: bool) -> None:
    """Stop, then start agents (and, unless --no-deps, what depends on them), in order."""
    stopped = _stop(options, names, no_deps, yes)
    _start(options, tuple(stopped), True, restarting=stopped)


@click.command("start-all")
@click.pass_obj
def start_all_command(options: Options) -> None:
    """Start every agent of the live version in dependency order."""
    _start(options, None, False)


@click.command("stop-all")
@_YES
@click.pass_obj
def stop_all_command(options: Options, yes: bool) -> None:
    """Stop every agent, dependents first, each level in parallel (supervisord keeps running)."""
    _stop(options, None, False, yes)


@click.command("restart-all")
@_YES
@click.pass_obj
def restart_all_command(options: Options, yes: bool) -> None:
    """Stop every agent in reverse dependency order, then start them all in order."""
    stopped = _stop(options, None, False, yes)
    _start(options, None, False, restarting=stopped)


@click.command("emergency-stop")
@click.option("--reason", default="", help="Recorded with the latch and shown by status.")
@_YES
@click.pass_obj
def emergency_stop_command(options: Options, reason: str, yes: bool) -> None:
    """Kill every agent now: SIGTERM to every process group at once, SIGKILL after 3 s.

    No ordering. It latches: nothing restarts automatically, and apply and
    start refuse, until `orchestrator emergency-clear`. It needs nothing but
    the kernel: the agents are found by the marker in their environment, so
    it works when supervisord hangs, the disk is full or read-only, or the
    manifests are broken; what it could not record it says.
    """
    state_dir = options.state_dir_only()
    _confirm_stop("EVERY agent at once, with no ordering", yes)
    client = Client(socket_of(state_dir), timeout=EMERGENCY_RPC_TIMEOUT)
    report = control.emergency_stop(state_dir, client, reason=reason, emit=renderer())
    for problem in report.problems:
        click.echo(click.style(f"warning: {problem}", fg="yellow"), err=True)
    latched = "latched until `orchestrator emergency-clear`" if report.latched else "NOT latched (see the warning above)"
    click.echo(click.style(f"Emergency stop: {report.signalled} process(es) signalled, {report.killed} of them killed; "
                           f"{latched}.", fg="red", bold=True))
    from orchestrator.interfaces.grafana import annotate_emergency
    annotate_emergency(options.load, reason)




@click.command("emergency-clear")
@click.pass_obj
def emergency_clear_command(options: Options) -> None:
    """Lift the emergency-stop latch. Agents stay stopped: start them with start-all or apply."""
    latch = control.emergency_clear(options.state_dir_only())
    click.echo(f"Cleared: {runtime.describe_latch(latch)}." if latch else "No emergency stop was latched.")
