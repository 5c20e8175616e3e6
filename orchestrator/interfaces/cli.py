"""The command line: each command parses its options and calls one core function.

Owned here: option parsing, output formatting (text, colored on a terminal,
or JSON for scripts), and the one place an `OrchestratorError` becomes a
message on stderr and an exit code:

    0  success
    1  invalid input or a failed operation (every problem printed as FILE:LINE:COL: ...)
    2  wrong usage of the command line (click's own code); for `plan`: changes are pending
    3  for `status`: something desired is not running or not ready
    70 a bug in orchestrator (an unexpected exception; never a user error)
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from orchestrator import __version__
from orchestrator.core.recommend import recommend
from orchestrator.core.units import parse_duration
from orchestrator.core.events import Emit, Event, Note, StopEvent
from orchestrator.config import schema
from orchestrator.core import graph
from orchestrator.core.names import MAIN_CONFIG, PROGRAMS_DIR
from orchestrator.host import orphans
from orchestrator.operations import control, lifecycle, status
from orchestrator.operations import rules as prom_rules
from orchestrator.core import rules as rule_defs
from orchestrator.state import runtime
from orchestrator.supervisord import render
from orchestrator.operations.apply import ApplyError, ApplyReport, Confirm, apply, client_for, compute
from orchestrator.supervisord.client import Client
from orchestrator.core.errors import Diagnostic, ManifestError, OrchestratorError, display_path, require_known
from orchestrator.state import alerts as alert_history, evidence, samples
from orchestrator.state.files import write_tree
from orchestrator.state.history import History, read_pointer
from orchestrator.config.manifest import LoadOptions, load
from orchestrator.core.model import ManifestSet
from orchestrator.core.plan import Plan, to_lines

PRIVATE_UMASK = 0o077
EMERGENCY_RPC_TIMEOUT = 2.0  # a hung supervisord must not hold up an emergency stop
EXIT_BUG = 70


@dataclass(frozen=True)
class Options:
    manifests: str
    env: str | None
    state_dir: str | None

    def load(self) -> ManifestSet:
        """The manifest set, type-checked, cross-checked and accepted by supervisord's parser."""
        manifests = load(LoadOptions(self.manifests, env=self.env, state_dir=self.state_dir))
        problems = render.check(manifests)
        if problems:
            raise ManifestError([*problems, *manifests.warnings])
        return manifests

    def state_dir_only(self) -> str:
        """The state directory, even when the manifests are invalid (down and status must still work)."""
        if self.state_dir:
            return os.path.abspath(self.state_dir)
        manifests_dir = os.path.abspath(self.manifests)
        noted = read_pointer(manifests_dir, self.env)  # left by `up`: no manifest needs to load
        if noted:
            return noted
        running = orphans.state_dirs_of(manifests_dir, self.env)  # the markers of a running project's processes
        if len(running) == 1:
            return running[0]
        if running:
            raise OrchestratorError(f"{len(running)} running projects were started from these manifests "
                                    f"({', '.join(map(display_path, running))}); choose one with --state-dir")
        try:
            return load(LoadOptions(self.manifests, env=self.env, check_commands=False)).state_dir
        except ManifestError:
            return os.path.join(os.path.dirname(os.path.abspath(self.manifests)), ".orchestrator")


def _style_diagnostic(diag: Diagnostic) -> str:
    text = str(diag)
    location = str(diag.location)
    color = "yellow" if diag.severity == "warning" else "red"
    return click.style(location, bold=True) + click.style(text[len(location):], fg=color) if text.startswith(location) else text


def print_diagnostics(diagnostics: list[Diagnostic]) -> None:
    for diag in diagnostics:
        click.echo(_style_diagnostic(diag), err=True)


def _summary(diagnostics: list[Diagnostic]) -> str:
    errors = sum(1 for d in diagnostics if d.severity == "error")
    warnings = len(diagnostics) - errors
    parts = [f"{errors} error{'s' if errors != 1 else ''}"]
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    return ", ".join(parts)


# Errors of the machine, not of orchestrator: the user's to fix, said plainly, exit 1 (70 stays for bugs).
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "the disk is full: free space there, then retry",
    errno.EDQUOT: "the disk quota is used up: free space there, then retry",
    errno.EROFS: "that filesystem is mounted read-only: remount it read-write or choose another --state-dir",
    errno.EACCES: "permission denied: run as the user who owns it, or fix its permissions",
    errno.EPERM: "not permitted: run as the user who owns it",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
    errno.ENFILE: "too many open files on this machine",
}


class _Group(click.Group):
    """Maps orchestrator's errors to messages and exit codes, for every command at once."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ManifestError as exc:
            print_diagnostics(exc.diagnostics)
            click.echo(click.style(f"invalid manifests: {_summary(exc.diagnostics)}", fg="red"), err=True)
            ctx.exit(exc.exit_code)
        except OrchestratorError as exc:
            click.echo(click.style(f"error: {exc}", fg="red"), err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(click.style(f"error:{where}: {exc.strerror} ({_ENVIRONMENT_ERRNOS[exc.errno]})", fg="red"), err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-m", "--manifests", default="manifests", envvar="ORCHESTRATOR_MANIFESTS", show_default=True,
              metavar="DIR", help="The manifest set: orchestrator.yaml, agents/*.yaml, templates/*.yaml, env/*.yaml. "
                                  "Also $ORCHESTRATOR_MANIFESTS.")
@click.option("--env", "env", metavar="NAME", envvar="ORCHESTRATOR_ENV",
              help="Overlay env/NAME.yaml on the manifests (for example prod). Also $ORCHESTRATOR_ENV.")
@click.option("--state-dir", metavar="DIR", envvar="ORCHESTRATOR_STATE_DIR",
              help="Rendered config, socket, logs and history. Default: .orchestrator/ beside the manifests directory.")
@click.version_option(__version__, prog_name="orchestrator")
@click.pass_context
def cli(ctx: click.Context, manifests: str, env: str | None, state_dir: str | None) -> None:
    """Declarative supervisor for long-running agent processes, built on supervisord.

    Describe agents in YAML manifests; orchestrator validates them, renders
    supervisord configuration, and starts agents in dependency order.

    Exit codes: 0 success, 1 invalid manifests or a failed operation,
    2 wrong usage.
    """
    ctx.obj = Options(manifests=manifests, env=env, state_dir=state_dir)


@cli.command()
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one object with 'valid', 'agents' and every diagnostic, on stdout.")
@click.pass_obj
def validate(options: Options, output: str) -> None:
    """Check the manifests without touching anything running.

    Every problem is printed on stderr as FILE:LINE:COL: key.path: what is
    wrong (what would be valid), sorted by file and line. Exit 0 when valid
    (warnings allowed), 1 when not.
    """
    try:
        manifests = options.load()
    except ManifestError as exc:
        if output == "json":
            click.echo(json.dumps({"valid": False, "agents": [], "diagnostics": [d.as_dict() for d in exc.diagnostics]}, indent=2))
            sys.exit(exc.exit_code)
        raise
    warnings = list(manifests.warnings)
    if output == "json":
        click.echo(json.dumps({"valid": True, "agents": list(manifests.names),
                               "diagnostics": [d.as_dict() for d in warnings]}, indent=2))
        return
    print_diagnostics(warnings)
    count = len(manifests.agents)
    where = display_path(manifests.manifests_dir)
    env = f" (env {manifests.env})" if manifests.env else ""
    click.echo(click.style("valid", fg="green") + f": {count} agent{'s' if count != 1 else ''} in {where}{env}"
               + (f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''}" if warnings else ""))


@cli.command("render")
@click.option("--out", metavar="DIR", help="Write a self-contained set below DIR instead of printing the files.")
@click.pass_obj
def render_command(options: Options, out: str | None) -> None:
    """Print the supervisord configuration that apply would write.

    supervisord.conf plus programs/NAME.conf, one file per agent. The same
    manifests always give the same bytes. With --out DIR the files are
    written there (each atomically) and their paths printed. The set is
    self-contained: DIR/supervisord.conf includes programs/*.conf relative to
    itself (supervisord resolves an include from the including file's
    directory), so `supervisord -c DIR/supervisord.conf` loads the programs
    written there, wherever DIR is moved. Use an empty DIR: older files in it
    are kept.
    """
    manifests = options.load()
    rendering = render.render(manifests, programs_dir=PROGRAMS_DIR if out else None)
    if out:
        for path in write_tree(out, rendering.files):
            click.echo(display_path(os.path.abspath(path)))
        return
    for index, (rel, text) in enumerate(sorted(rendering.files.items(), key=lambda kv: (kv[0] != MAIN_CONFIG, kv[0]))):
        if index:
            click.echo()
        click.echo(f"; ==> {rel} <==")
        click.echo(text, nl=False)


@cli.command("graph")
@click.option("--format", "fmt", type=click.Choice(sorted(graph.FORMATS)), default="text", show_default=True,
              help="text for people, dot for Graphviz, mermaid for Markdown, json for scripts.")
@click.pass_obj
def graph_command(options: Options, fmt: str) -> None:
    """Show the dependency graph: waves that start in parallel, start and stop order.

    Agents of one wave depend only on earlier waves; inside a wave, lower
    priority starts first. Stop order is the reverse of start order.
    """
    manifests = options.load()
    click.echo(graph.FORMATS[fmt](graph.Graph.of(manifests)), nl=False)


@cli.command("schema")
@click.option("--kind", type=click.Choice(sorted(schema.KINDS)), default="agent", show_default=True,
              help="agent: agents/*.yaml; template: templates/*.yaml; settings: orchestrator.yaml; env: env/*.yaml.")
def schema_command(kind: str) -> None:
    """Print the JSON Schema of a manifest, for editors.

    With yaml-language-server, put the schema in a file and add to the top of
    a manifest:  # yaml-language-server: $schema=PATH
    """
    click.echo(json.dumps(schema.json_schema(kind), indent=2))


def _renderer(order: graph.Graph | None = None) -> Emit:
    """The event stream rendered on stderr: each start step with its wave and elapsed time, each stop step
    under its agent, each note as a line."""
    total = len(order.waves) if order is not None else 0
    colors = {"ready": "green", "failed": "red", "skipped": "yellow", "retrying": "yellow"}

    def show(event: Event) -> None:
        if isinstance(event, Note):
            click.echo(event.text, err=True)
        elif isinstance(event, StopEvent):
            click.echo(f"  {event.agent}: {event.what}", err=True)
        else:
            wave = order.wave_of(event.agent) + 1 if order is not None and event.agent in order.depends_on else 0
            detail = f"  {event.detail}" if event.detail else ""
            line = f"[{event.elapsed:6.1f}s] wave {wave}/{total}  {event.agent:<24} {event.kind}{detail}"
            click.echo(click.style(line, fg=colors.get(event.kind)), err=True)

    return show


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


@cli.command("plan")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: {pending, summary, actions: [{action, agent, fields, reason}]} for scripts.")
@click.pass_obj
def plan_command(options: Options, output: str) -> None:
    """Show what apply would change, without changing anything.

    Actions: add, remove, replace (restarts; the changed fields are listed),
    update (no restart), start (not running). Exit 0 when there is nothing to
    do, 2 when changes are pending, 1 on error.
    """
    manifests = options.load()
    result, _ = compute(manifests, client_for(manifests))
    if output == "json":
        click.echo(result.to_json())
    else:
        _print_plan(result)
    sys.exit(2 if result.pending else 0)


@cli.command("apply")
@click.option("-M", "--message", default="", help="A note recorded with the version (see history).")
@click.option("--yes", is_flag=True, help="Do not ask before stopping agents, nor again when the plan changed "
                                           "since it was shown (it says so, and shows the plan it carries out).")
@click.pass_obj
def apply_command(options: Options, message: str, yes: bool) -> None:
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
    client = client_for(manifests)
    result, _ = compute(manifests, client)
    _print_plan(result)
    if not result.pending:
        return
    _confirm_destructive(result, yes)
    try:
        report = apply(manifests, result, confirm=_confirm_changed(yes), message=message,
                       emit=_renderer(graph.Graph.of(manifests)), client=client)
    except ApplyError as exc:
        raise OrchestratorError(f"apply failed:\n{exc}") from exc
    _finish(report, manifests)


@cli.command("up")
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
                              emit=_renderer(graph.Graph.of(manifests)))
    except ApplyError as exc:
        raise OrchestratorError(f"up failed:\n{exc}") from exc
    _finish(report, manifests)
    click.echo(f"Stop everything with: orchestrator -m {display_path(manifests.manifests_dir)} down")


@cli.command("down")
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
    stopped = lifecycle.down(state_dir, emit=_renderer())
    click.echo(f"Stopped {len(stopped)} agent{'s' if len(stopped) != 1 else ''} and supervisord." if stopped
               else "Nothing was running.")


@cli.command("status")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: an array, one object per process: name, agent, state, pid, uptime_seconds, restarts, "
                   "cpu_percent, memory_rss_bytes, health, ready, score (0-100) and penalties (cause, points, detail).")
@click.argument("names", nargs=-1)
@click.pass_obj
def status_command(options: Options, output: str, names: tuple[str, ...]) -> None:
    """Show each agent's state, PID, uptime, restarts, CPU, memory, readiness and health score.

    With agent NAMEs, also every point each score lost, and why.

    Exit 0 when every agent of the live version is running and ready, 3 when
    one is not, 1 on error (supervisord not running, for instance).
    """
    state_dir = options.state_dir_only()
    current = History(state_dir).current()
    agents = dict(current.agents) if current else {}
    require_known(names, agents)
    client = Client(lifecycle.socket_of(state_dir))
    lifecycle.require_running(state_dir, client, shown_as=display_path(state_dir))
    live = runtime.load(state_dir)
    opened: dict[str, tuple[str, ...]] = {}
    for alert in alert_history.active(state_dir):
        opened[alert.agent] = (*opened.get(alert.agent, ()), alert.level)
    rows = status.collect(client, agents, list(names) or None, histories=live.agents, alerts=opened,
                          sampled=samples.read(state_dir, time.time()))
    if live.latch is not None and output != "json":
        click.echo(click.style(f"{runtime.describe_latch(live.latch)}; clear it with `orchestrator emergency-clear`",
                               fg="red", bold=True), err=True)
    if output == "json":
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        cells = status.table(rows)
        widths = [max(len(c[0][i]) for c in cells) for i in range(len(cells[0][0]))]
        for index, (row, color) in enumerate(cells):
            text = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            click.echo(click.style(text, bold=True) if index == 0 else text if color is None else
                       click.style(text, fg=color))
        for shown in rows if names else []:  # `status NAME`: every point its score lost
            for penalty in shown.penalties:
                click.echo(f"  {shown.name}: -{penalty['points']} {penalty['cause']}: {penalty['detail']}")
    desired = {n: a for n, a in agents.items() if not names or n in names}
    sys.exit(0 if status.healthy(rows, desired) else 3)


class _Live:
    """The live state directory, its agents' order, and a client of its supervisord."""

    def __init__(self, options: Options) -> None:
        self.state_dir = options.state_dir_only()
        self.client = Client(lifecycle.socket_of(self.state_dir))
        lifecycle.require_running(self.state_dir, self.client, shown_as=display_path(self.state_dir))
        current = History(self.state_dir).current()
        self.agents = dict(current.agents) if current else {}
        self.graph = graph.Graph.of_agents(self.agents)

    def progress(self) -> Emit:
        return _renderer(self.graph)


def _confirm_stop(what: str, yes: bool) -> None:
    if not yes and sys.stdin.isatty():
        click.confirm(f"This stops {what}. Continue?", abort=True, err=True)


def _started(result: Any) -> None:
    if not result.ok:
        lines = [f"{o.agent} did not become ready: {o.detail}" for o in result.failed]
        if result.blocked:
            lines.append(f"not started: {', '.join(result.blocked)}")
        raise OrchestratorError("start failed:\n" + "\n".join(lines))
    started = [o.agent for o in result.outcomes.values() if not o.verified_only]
    click.echo(f"Started {', '.join(started)}; all ready." if started else "Already running and ready.")


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


@cli.command("start")
@click.argument("names", nargs=-1, required=True)
@_NO_DEPS
@click.pass_obj
def start_command(options: Options, names: tuple[str, ...], no_deps: bool) -> None:
    """Start agents, their dependencies first, each once what it needs is ready.

    A given-up agent is cleared by a manual start. Refused while an
    emergency stop is latched.
    """
    _start(options, names, no_deps)


@cli.command("stop")
@click.argument("names", nargs=-1, required=True)
@_NO_DEPS
@_YES
@click.pass_obj
def stop_command(options: Options, names: tuple[str, ...], no_deps: bool, yes: bool) -> None:
    """Stop agents, whatever depends on them first (each level in parallel)."""
    _stop(options, names, no_deps, yes)


@cli.command("restart")
@click.argument("names", nargs=-1, required=True)
@_NO_DEPS
@_YES
@click.pass_obj
def restart_command(options: Options, names: tuple[str, ...], no_deps: bool, yes: bool) -> None:
    """Stop, then start agents (and, unless --no-deps, what depends on them), in order."""
    stopped = _stop(options, names, no_deps, yes)
    _start(options, tuple(stopped), True, restarting=stopped)


@cli.command("start-all")
@click.pass_obj
def start_all_command(options: Options) -> None:
    """Start every agent of the live version in dependency order."""
    _start(options, None, False)


@cli.command("stop-all")
@_YES
@click.pass_obj
def stop_all_command(options: Options, yes: bool) -> None:
    """Stop every agent, dependents first, each level in parallel (supervisord keeps running)."""
    _stop(options, None, False, yes)


@cli.command("restart-all")
@_YES
@click.pass_obj
def restart_all_command(options: Options, yes: bool) -> None:
    """Stop every agent in reverse dependency order, then start them all in order."""
    stopped = _stop(options, None, False, yes)
    _start(options, None, False, restarting=stopped)


@cli.command("emergency-stop")
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
    client = Client(lifecycle.socket_of(state_dir), timeout=EMERGENCY_RPC_TIMEOUT)
    report = control.emergency_stop(state_dir, client, reason=reason, emit=_renderer())
    for problem in report.problems:
        click.echo(click.style(f"warning: {problem}", fg="yellow"), err=True)
    latched = "latched until `orchestrator emergency-clear`" if report.latched else "NOT latched (see the warning above)"
    click.echo(click.style(f"Emergency stop: {report.signalled} process(es) signalled, {report.killed} of them killed; "
                           f"{latched}.", fg="red", bold=True))


@cli.command("alerts")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: {\"active\": [...], \"recent\": [...]}, each alert with key, agent, metric, level, kind, "
                   "value, threshold, at (seconds since the epoch) and summary.")
@click.option("--recent", "count", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many of the latest firings and resolutions to show.")
@click.pass_obj
def alerts_command(options: Options, output: str, count: int) -> None:
    """Show the threshold alerts firing now, and the latest firings and resolutions.

    Read from the state directory's alert history, which the exporter keeps
    (bounded); works when supervisord is down and the manifests are invalid.
    """
    state_dir = options.state_dir_only()
    firing, latest = alert_history.active(state_dir), alert_history.recent(state_dir, count) if count else []
    if output == "json":
        click.echo(json.dumps({"active": [a.as_dict() for a in firing], "recent": [a.as_dict() for a in latest]}, indent=2))
        return
    colors = {"WARNING": "yellow", "PREDICTED": "yellow", "CRITICAL": "red", "EMERGENCY": "red"}
    click.echo(click.style(f"{len(firing)} alert{'s' if len(firing) != 1 else ''} firing", bold=True) if firing
               else "No alert is firing.")
    for alert in firing:
        click.echo(click.style(f"  {_when(alert.at)}  {alert.summary}", fg=colors.get(alert.level)))
    if latest:
        click.echo(click.style("Latest firings and resolutions", bold=True))
        for alert in latest:
            click.echo(f"  {_when(alert.at)}  {alert.summary}")


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


@cli.command("recommend")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: an array of {agent, field, current, suggested, reason, figures, confidence}.")
@click.option("--min-history", default="1h", show_default=True,
              help="Suggest nothing for an agent observed for less than this (a duration: 30m, 2h).")
@click.argument("names", nargs=-1)
@click.pass_obj
def recommend_command(options: Options, output: str, min_history: str, names: tuple[str, ...]) -> None:
    """Suggest resource settings from what the exporter has observed, with the figures behind each.

    Memory limits come from the upper percentile of memory peaks (plus a
    margin, and more after a restart at the limit), CPU thresholds from CPU
    percentiles, nice or cpu_affinity for CPU-bound agents on busy cores,
    replicas for saturated ones. Each suggestion has a confidence that grows
    with the hours of history kept; below --min-history nothing is suggested.
    """
    try:
        least = parse_duration(min_history)
    except ValueError:
        raise click.BadParameter(f"{min_history!r} is not a duration (expected one such as 30m or 2h)",
                                 param_hint="--min-history") from None
    state_dir = options.state_dir_only()
    current = History(state_dir).current()
    agents = dict(current.agents) if current else {}
    require_known(names, agents)
    store, now = evidence.load(state_dir), time.time()
    found, quiet = [], []
    for name in names or sorted(agents):
        seen = store.evidence(name)
        if seen is None or now - seen.since < least:
            quiet.append(f"{name}: {'no history yet' if seen is None else f'{(now - seen.since) / 60:.0f} min of history'}"
                         f" (suggestions from {least / 60:g} min)")
            continue
        found += recommend(agents[name], seen, now, min_history=least)
    if output == "json":
        click.echo(json.dumps([{"agent": r.agent, "field": r.field, "current": r.current, "suggested": r.suggested,
                                "reason": r.reason, "figures": dict(r.figures), "confidence": r.confidence} for r in found],
                              indent=2, default=str))
        return
    for line in quiet:
        click.echo(line, err=True)
    if not found:
        click.echo("No change to suggest.")
    for item in found:
        figures = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in item.figures.items())
        click.echo(f"{item.agent}: {item.field}: {item.current} -> {item.suggested}  (confidence {item.confidence:.0%})")
        click.echo(f"    {item.reason}" + (f"; {figures}" if figures else ""))


@cli.command("emergency-clear")
@click.pass_obj
def emergency_clear_command(options: Options) -> None:
    """Lift the emergency-stop latch. Agents stay stopped: start them with start-all or apply."""
    latch = control.emergency_clear(options.state_dir_only())
    click.echo(f"Cleared: {runtime.describe_latch(latch)}." if latch else "No emergency stop was latched.")


@cli.command("rules")
@click.option("--out", metavar="DIR", help="Write the rule file below DIR. Default: prometheus/ beside the manifests "
                                          "directory (the project root).")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: {file, alerts: [{group, alert, agent, severity}], checked, check_output}.")
@click.pass_obj
def rules_command(options: Options, out: str | None, output: str) -> None:
    """Write Prometheus alerting rules generated from the manifests.

    One file, orchestrator-rules.yml: per agent, an alert for each threshold
    its resources set (cpu_percent, memory_mb, open_fds: warning, critical,
    limit, after the threshold's `for`), given up, crash looping, down, and
    memory or open files forecast to run out within an hour; and once,
    exporter down and supervisord down. The file is rewritten whole and
    atomically, so the rules of a removed agent are gone. Then `promtool
    check rules` checks it when promtool is on PATH (exit 1 if it fails);
    without promtool that is said, and the exit is 0.
    """
    manifests = options.load()
    path = prom_rules.write_rules(manifests, out)
    check = prom_rules.check_rules(path)
    generated = rule_defs.alert_rules(manifests)
    if output == "json":
        click.echo(json.dumps({"file": path, "checked": check.ok, "check_output": check.output,
                               "alerts": [{"group": r.group, "alert": r.alert, "agent": dict(r.labels).get("agent"),
                                           "severity": dict(r.labels)["severity"]} for r in generated]}, indent=2))
    else:
        click.echo(f"{display_path(path)}: {len(generated)} alerting rules for {len(manifests.agents)} agents")
        if check.ok is None:
            click.echo(f"not checked: {check.output}", err=True)
        elif check.ok:
            click.echo(f"promtool check rules: {check.output.splitlines()[-1].strip() if check.output else 'SUCCESS'}")
    if check.ok is False:
        raise OrchestratorError(f"promtool check rules failed on {display_path(path)}:\n{check.output}")


@cli.command("prometheus-config")
@click.option("--rules-dir", metavar="DIR", help="Where `orchestrator rules --out DIR` wrote the rule file. "
                                                "Default: prometheus/ beside the manifests directory.")
@click.option("--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True,
              help="The format of the configuration printed (Prometheus reads either).")
@click.pass_obj
def prometheus_config_command(options: Options, rules_dir: str | None, output: str) -> None:
    """Print a Prometheus configuration that scrapes orchestrator's exporter.

    The job `orchestrator` scrapes exporter.listen every exporter.interval
    (the exporter samples at that interval, so scraping faster gains nothing),
    and rule_files names the file `orchestrator rules` writes. Save it as
    prometheus.yml, or merge its job into yours.
    """
    manifests = options.load()
    if output == "json":
        click.echo(json.dumps(prom_rules.prometheus_config(manifests, rules_dir), indent=2))
    else:
        click.echo(prom_rules.prometheus_config_text(manifests, rules_dir), nl=False)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the `orchestrator` command."""
    # Everything written into the state directory (versions with their environment values, locks,
    # runtime state) is the operator's alone: files 0600, directories 0700.
    os.umask(PRIVATE_UMASK)
    try:
        cli.main(args=argv, prog_name="orchestrator", standalone_mode=True)
    except SystemExit:
        raise
    except Exception:  # a bug: say so plainly, keep the traceback out of the user's way unless asked
        if os.environ.get("ORCHESTRATOR_DEBUG"):
            traceback.print_exc()
        else:
            kind, value, _ = sys.exc_info()
            click.echo(f"internal error: {kind.__name__ if kind else 'error'}: {value} "
                       "(a bug in orchestrator; rerun with ORCHESTRATOR_DEBUG=1 for details)", err=True)
        sys.exit(EXIT_BUG)
    sys.exit(0)
