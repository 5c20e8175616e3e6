"""The command line: each command parses its options and calls one core function.

Owned here: option parsing, output formatting (text, colored on a terminal,
or JSON for scripts), and the one place an `OrchestratorError` becomes a
message on stderr and an exit code:

    0  success
    1  invalid input or a failed operation (every problem printed as FILE:LINE:COL: ...)
    2  wrong usage of the command line (click's own code)
    70 a bug in orchestrator (an unexpected exception; never a user error)
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from orchestrator import __version__, graph, render, schema
from orchestrator.errors import Diagnostic, ManifestError, OrchestratorError, display_path
from orchestrator.manifest import LoadOptions, load
from orchestrator.model import ManifestSet

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
@click.option("--out", metavar="DIR", help="Write the files below DIR instead of printing them.")
@click.pass_obj
def render_command(options: Options, out: str | None) -> None:
    """Print the supervisord configuration that apply would write.

    supervisord.conf plus programs/NAME.conf, one file per agent. The same
    manifests always give the same bytes. With --out DIR the files are
    written there (each atomically) and their paths printed.
    """
    manifests = options.load()
    rendering = render.render(manifests)
    if out:
        for path in rendering.write(out):
            click.echo(display_path(os.path.abspath(path)))
        return
    for index, (rel, text) in enumerate(sorted(rendering.files.items(), key=lambda kv: (kv[0] != render.MAIN_CONFIG, kv[0]))):
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


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the `orchestrator` command."""
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
