"""plan, apply, up and down: the running agents made to match the manifests (or stopped), with the plan
shown, confirmed and carried out as shown."""

from __future__ import annotations

import sys
from typing import Any

import click

from orchestrator.core import graph
from orchestrator.core.errors import OrchestratorError, display_path
from orchestrator.core.events import Emit
from orchestrator.core.model import ManifestSet
from orchestrator.core.plan import Plan, to_lines
from orchestrator.interfaces.options import Options
from orchestrator.interfaces.output import renderer
from orchestrator.operations import lifecycle
from orchestrator.operations.apply import ApplyError, ApplyReport, Confirm, apply, client_for, compute


def _print_plan(result: Any) -> None:
    for line, color in to_lines(result):
        click.echo(click.style(line, fg=color) if color else line)


def _confirm_destructive(result: Any, yes: bool) -> None:
    doomed = result.names("remove", "replace")
    if doomed and not yes and sys.stdin.isatty():
        click.confirm(f"This stops {', '.join(doomed)}. Continue?", abort=True, err=True)


def _confirm_changed(yes: bool) -> Confirm:
    """apply's question when the plan changed under its lock: the new plan is shown, and asked about again on a
    terminal (unless --yes); without a terminal, or with --yes, it is carried out, saying so."""
    def confirm(shown: Plan, new: Plan) -> bool:
        click.echo(click.style("The plan changed since it was shown (the manifests, the live version or the running agents "
                               "changed). The new plan:", fg="yellow", bold=True), err=True)
        for line, color in to_lines(new):
            click.echo(click.style(line, fg=color) if color else line, err=True)
        if not yes and sys.stdin.isatty():
            return click.confirm("Carry out the new plan?", err=True)
        click.echo(click.style("Carrying out the new plan" + (" (--yes)." if yes else " (no terminal to ask on)."),
                               fg="yellow"), err=True)
        return True

    return confirm


def _finish(report: ApplyReport, manifests: ManifestSet) -> None:
    if report.version is not None:
        click.echo(f"Applied as version {report.version.number}.")
    if report.start is not None:
        started = [o.agent for o in report.start.outcomes.values() if not o.verified_only]
        others = len(manifests.agents) - len(started)
        if not others:
            click.echo(click.style(f"All {len(started)} agents are running and ready.", fg="green"))
        else:
            click.echo(click.style(f"Started {len(started)} agent{'s' if len(started) != 1 else ''}, all ready; "
                                   f"{others} other{'s' if others != 1 else ''} left as they were.", fg="green"))


@click.command("plan")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: {pending, summary, drift: [{kind, subject, agent, detail, fix}], "
                   "actions: [{action, agent, fields, reason}]} for scripts.")
@click.pass_obj
def plan_command(options: Options, output: str) -> None:
    """Show what apply would change, without changing anything.

    Actions: add, remove, replace (restarts; the changed fields are listed),
    update (no restart), start (not running). What was changed outside
    orchestrator since the last apply (an edited rendered file, a program
    added, removed, stopped or started with supervisorctl) is listed as
    drift, which apply puts back. Exit 0 when there is nothing to do, 2 when
    changes (or drift) are pending, 1 on error.
    """
    manifests = options.load()
    result, _ = compute(manifests, client_for(manifests))
    if output == "json":
        click.echo(result.to_json())
    else:
        _print_plan(result)
    sys.exit(2 if result.pending else 0)


@click.command("apply")
@click.option("-M", "--message", default="", help="A note recorded with the version (see history).")
@click.option("--yes", is_flag=True, help="Do not ask before stopping agents, nor again when the plan changed "
                                           "since it was shown (it says so, and shows the plan it carries out).")
@click.option("--rollback-on-failure/--no-rollback-on-failure", default=None,
              help="When an agent this apply changed does not become ready, roll back to the last applied version "
                   "(default: orchestrator.yaml's apply.rollback_on_failure, else off). Exit 1 either way.")
@click.pass_obj
def apply_command(options: Options, message: str, yes: bool, rollback_on_failure: bool | None) -> None:
    """Make the running agents match the manifests.

    Validates first (nothing is touched when a manifest is invalid), then
    shows the plan and carries out that plan: it starts, replaces, adds and
    removes only what changed; unchanged agents keep running with the same
    PID. Agents start in dependency order, each once what it depends on is
    ready. If the plan changed before apply took its lock (an agent stopped,
    another apply ran), the new plan is shown and asked about again (with
    --yes, or without a terminal, it is carried out, saying so). Exit 0 only
    when every agent is running and ready; 1 otherwise, naming the agent
    that failed and why.
    """
    manifests = options.load()
    if rollback_on_failure is None:
        rollback_on_failure = manifests.settings.apply.rollback_on_failure
    emit = renderer(graph.Graph.of(manifests))
    try:
        report = show_and_apply(manifests, yes, message=message, emit=emit, lock_timeout=options.lock_timeout)
    except ApplyError as exc:
        if rollback_on_failure:
            from orchestrator.interfaces.commands.versions import roll_back_after
            roll_back_after(exc, manifests, emit)
        raise OrchestratorError(f"apply failed:\n{exc}") from exc
    if report is None:
        return
    _finish(report, manifests)
    from orchestrator.interfaces.grafana import annotate_apply
    annotate_apply(manifests, report, message)


def show_and_apply(manifests: ManifestSet, yes: bool, *, message: str, emit: Emit,
                   lock_timeout: float) -> ApplyReport | None:
    """The plan for `manifests` shown, confirmed where it stops agents, and carried out as shown (asked again if it
    changed meanwhile); None when there was nothing to do. Raises ApplyError as apply does."""
    client = client_for(manifests)
    result, _ = compute(manifests, client)
    _print_plan(result)
    if not result.pending:
        return None
    _confirm_destructive(result, yes)
    return apply(manifests, result, confirm=_confirm_changed(yes), message=message, emit=emit, client=client,
                 lock_timeout=lock_timeout)


@click.command("up")
@click.option("-M", "--message", default="", help="A note recorded with the version.")
@click.option("--yes", is_flag=True, help="Do not ask before stopping agents (when supervisord runs and agents changed).")
@click.pass_obj
def up_command(options: Options, message: str, yes: bool) -> None:
    """Start supervisord if it is not running, then apply.

    supervisord runs as a daemon from the state directory (configuration,
    socket, pid file and logs are all there). When it already runs, up is
    apply: it asks before replacing or removing agents, as apply does. Exit 0
    when every agent is running and ready; 1 naming the agents given up.
    """
    manifests = options.load()
    client = client_for(manifests)
    shown = compute(manifests, client)[0] if client.is_running() else None
    if shown is not None:
        _confirm_destructive(shown, yes)
    try:
        report = lifecycle.up(manifests, shown=shown, confirm=_confirm_changed(yes), message=message,
                              emit=renderer(graph.Graph.of(manifests)), lock_timeout=options.lock_timeout)
    except ApplyError as exc:
        raise OrchestratorError(f"up failed:\n{exc}") from exc
    _finish(report, manifests)
    from orchestrator.interfaces.grafana import annotate_apply
    annotate_apply(manifests, report, message, what="up")
    click.echo(f"Stop everything with: orchestrator -m {display_path(manifests.manifests_dir)} down")


@click.command("down")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def down_command(options: Options, yes: bool) -> None:
    """Stop every agent, dependents first, then supervisord itself.

    Works even when the manifests are invalid: the order comes from the
    live version. No process is left behind.
    """
    state_dir = options.state_dir_only()
    if not yes and sys.stdin.isatty():
        click.confirm(f"Stop every agent and supervisord ({display_path(state_dir)})?", abort=True, err=True)
    stopped = lifecycle.down(state_dir, emit=renderer())
    click.echo(f"Stopped {len(stopped)} agent{'s' if len(stopped) != 1 else ''} and supervisord." if stopped
               else "Nothing was running.")
