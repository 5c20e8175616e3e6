"""grafana export and grafana push: dashboards, alert rules, contact points and a data source generated from the
manifests, as Grafana provisioning files or through Grafana's HTTP API."""

from __future__ import annotations

import json
import os

import click

from orchestrator.core.errors import display_path
from orchestrator.interfaces.options import Options


@click.group("grafana")
def grafana_group() -> None:
    """Grafana dashboards, alert rules and a data source generated from the manifests."""


@grafana_group.command("export")
@click.argument("directory", required=False, metavar="[DIR]")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: [{file, status}] (status: created, changed, unchanged, removed).")
@click.pass_obj
def export_command(options: Options, directory: str | None, output: str) -> None:
    """Write Grafana provisioning files below DIR (default: grafana/ beside the manifests directory).

    DIR/provisioning holds the Prometheus data source, a dashboards provider
    with the overview and per-agent dashboards, and Grafana-managed alert
    rules (the conditions of `orchestrator rules`), a contact point per
    webhook notification target and a notification policy. Point Grafana's
    paths.provisioning at DIR/provisioning. The rules, contact points and
    data source an earlier export in DIR had and this one has not are
    deleted by Grafana at its next provisioning. The same manifests write
    the same bytes.
    """
    from orchestrator.operations import grafana as export

    manifests = options.load()
    written = export.export(manifests, directory)
    if output == "json":
        click.echo(json.dumps([{"file": w.path, "status": w.status} for w in written], indent=2))
        return
    for w in written:
        click.echo(f"{w.status:9}  {display_path(w.path)}")
    root = os.path.abspath(directory or export.default_dir(manifests))
    click.echo(f"Point Grafana's paths.provisioning at {display_path(os.path.join(root, 'provisioning'))}.")


@grafana_group.command("push")
@click.option("--url", metavar="URL", help="Grafana's address. Default: grafana.url of orchestrator.yaml.")
@click.option("--token", metavar="TOKEN", envvar="GRAFANA_TOKEN",
              help="A service account token (Editor role). Also $GRAFANA_TOKEN.")
@click.option("--folder", metavar="NAME", help="The folder of the dashboards and rules. Default: grafana.folder.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: [{kind, name, status}] (status: created, changed, unchanged, deleted).")
@click.pass_obj
def push_command(options: Options, url: str | None, token: str | None, folder: str | None, output: str) -> None:
    """Create or update the data source, folder, dashboards, contact points, notification policy and alert rules
    in a running Grafana, through its HTTP API.

    Idempotent: dashboards are updated in place by UID, and each object is
    said to be created, changed or unchanged; the rules of agents no longer
    in the manifests are deleted.
    """
    from orchestrator.core import grafana as gf
    from orchestrator.interfaces import grafana

    manifests = options.load()
    settings = gf.settings_of(manifests)
    done = grafana.push(manifests, url=url or settings.url, token=token, folder=folder or settings.folder)
    if output == "json":
        click.echo(grafana.dumps(done))
        return
    for p in done:
        click.echo(f"{p.status:9}  {p.kind} {p.name}")
