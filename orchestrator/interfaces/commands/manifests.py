"""validate, render, graph and schema: the manifests read, checked and shown; nothing running is touched."""

from __future__ import annotations

import json
import os
import sys

import click

from orchestrator.config import schema
from orchestrator.core import graph
from orchestrator.core.errors import ManifestError, display_path
from orchestrator.core.names import MAIN_CONFIG, PROGRAMS_DIR
from orchestrator.interfaces.options import Options
from orchestrator.interfaces.output import print_diagnostics
from orchestrator.state.files import write_tree
from orchestrator.supervisord import render


@click.command()
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


@click.command("render")
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


@click.command("graph")
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


@click.command("schema")
@click.option("--kind", type=click.Choice(sorted(schema.KINDS)), default="agent", show_default=True,
              help="agent: agents/*.yaml; template: templates/*.yaml; settings: orchestrator.yaml; env: env/*.yaml.")
def schema_command(kind: str) -> None:
    """Print the JSON Schema of a manifest, for editors.

    With yaml-language-server, put the schema in a file and add to the top of
    a manifest:  # yaml-language-server: $schema=PATH
    """
    click.echo(json.dumps(schema.json_schema(kind), indent=2))
