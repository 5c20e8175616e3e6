"""rules and prometheus-config: Prometheus alerting rules and a scrape configuration generated from the manifests."""

from __future__ import annotations

import json

import click

from orchestrator.core import rules as rule_defs
from orchestrator.core.errors import OrchestratorError, display_path
from orchestrator.interfaces.options import Options
from orchestrator.operations import rules as prom_rules


@click.command("rules")
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


@click.command("prometheus-config")
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
