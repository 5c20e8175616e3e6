"""recommend: resource settings suggested from the evidence the exporter kept."""

from __future__ import annotations

import json
import time

import click

from orchestrator.core.errors import require_known
from orchestrator.core.recommend import recommend
from orchestrator.core.units import parse_duration
from orchestrator.interfaces.options import Options
from orchestrator.state import evidence
from orchestrator.state.history import History


@click.command("recommend")
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
