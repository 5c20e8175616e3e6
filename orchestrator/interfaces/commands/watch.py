"""watch: apply each saved change of the manifests (daemons.watcher), showing the plan, the errors and the progress."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType

import click

from orchestrator.core import graph
from orchestrator.core.errors import Diagnostic
from orchestrator.core.events import Emit
from orchestrator.core.model import ManifestSet
from orchestrator.core.plan import Plan, to_lines
from orchestrator.daemons.watcher import Watcher
from orchestrator.interfaces.options import Options
from orchestrator.interfaces.output import print_diagnostics, renderer, summary


class _Terminal:
    """The watcher's View: its lines and plans on stdout, the errors and the apply's progress on stderr, as apply
    prints them."""

    def say(self, line: str) -> None:
        click.echo(click.style("watch: ", bold=True) + line)

    def rejected(self, diagnostics: Sequence[Diagnostic]) -> None:
        print_diagnostics(list(diagnostics))
        click.echo(click.style(f"invalid manifests: {summary(list(diagnostics))}", fg="red"), err=True)

    def planned(self, plan: Plan) -> None:
        for line, color in to_lines(plan):
            click.echo(click.style(line, fg=color) if color else line)

    def progress(self, manifests: ManifestSet) -> Emit:
        return renderer(graph.Graph.of(manifests))


@click.command("watch")
@click.option("--plan-only", is_flag=True, help="Only validate and print the plan of each change; apply nothing.")
@click.pass_obj
def watch_command(options: Options, plan_only: bool) -> None:
    """Apply each saved change of the manifests, until Ctrl-C or SIGTERM.

    Follows the manifests directory; once a burst of saves is over (0.2 s
    without a change), validates the manifests, prints the plan and applies
    it, as apply does (one at a time: under the same lock). An invalid save
    touches nothing running and prints each error as FILE:LINE:COL. Every
    change applied, rejected or failed is logged to STATE/logs/watch.log and
    sent to the notifications of orchestrator.yaml. The first Ctrl-C (or
    SIGTERM) ends watch once an apply in progress is done; a second one at once.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo(click.style("watch: ", bold=True) + f"stopping ({signal.Signals(signum).name})", err=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        Watcher(manifests_dir=options.manifests, state_dir=options.state_dir_only(), load=options.load, view=_Terminal(),
                stop=stop, plan_only=plan_only, lock_timeout=options.lock_timeout).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(click.style("watch: ", bold=True) + "stopped")
