"""What commands print beyond their own results: diagnostics, and the event stream of long operations.

Owned here: the colors and layout of FILE:LINE diagnostics on stderr, their summary line, and the
progress of up, apply, start, stop and down (each start step with its wave and elapsed time, each
stop step under its agent, each note as a line).
"""

from __future__ import annotations

import click

from orchestrator.core import graph
from orchestrator.core.errors import Diagnostic
from orchestrator.core.events import Emit, Event, Note, StopEvent


def _style_diagnostic(diag: Diagnostic) -> str:
    text = str(diag)
    location = str(diag.location)
    color = "yellow" if diag.severity == "warning" else "red"
    return click.style(location, bold=True) + click.style(text[len(location):], fg=color) if text.startswith(location) else text


def print_diagnostics(diagnostics: list[Diagnostic]) -> None:
    for diag in diagnostics:
        click.echo(_style_diagnostic(diag), err=True)


def summary(diagnostics: list[Diagnostic]) -> str:
    errors = sum(1 for d in diagnostics if d.severity == "error")
    warnings = len(diagnostics) - errors
    parts = [f"{errors} error{'s' if errors != 1 else ''}"]
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    return ", ".join(parts)


def renderer(order: graph.Graph | None = None) -> Emit:
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
