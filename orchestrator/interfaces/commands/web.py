"""web: the control room, a local authenticated page and JSON API over the running agents (interfaces.web)."""

from __future__ import annotations

import json
import os

import click

from orchestrator.core.errors import OrchestratorError
from orchestrator.core.model import Web
from orchestrator.interfaces.options import Options


@click.command("web")
@click.option("--listen", metavar="HOST:PORT", help="Where to listen (default: web.listen of orchestrator.yaml, "
                                                    "or 127.0.0.1:9400).")
@click.option("--show-url", is_flag=True, help="Print the login URL with the user's token (generated on first use, "
                                               "kept in STATE/web/tokens.json, mode 0600), and exit.")
@click.option("--user", metavar="NAME", help="With --show-url: whose token (default: the first operator of web.users).")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="With --show-url, json: {url, user, role, token}.")
@click.pass_obj
def web_command(options: Options, listen: str | None, show_url: bool, user: str | None, output: str) -> None:
    """Serve the control room: every agent's card, per-agent and bulk controls in dependency order, the emergency
    stop, live updates, the graph, charts, logs, history and rollback.

    Log in with a user's token (`orchestrator web --show-url`). Users and their roles (viewer: sees; operator:
    also acts) are `web.users` of orchestrator.yaml (default: one operator, `operator`). Every action is
    recorded in STATE/web/audit.jsonl. Listens on loopback unless web.allow_remote is set.
    """
    from orchestrator.core.addresses import host_port_problem, is_loopback, split_host_port
    from orchestrator.interfaces.web import auth

    manifests = options.load()
    settings = manifests.settings.web or Web()
    state_dir = manifests.state_dir
    address = listen or settings.listen
    problem = host_port_problem(address)
    if problem:
        raise click.BadParameter(f"{address!r} {problem} (expected HOST:PORT such as 127.0.0.1:9400)", param_hint="--listen")
    host, port = split_host_port(address)
    remote = not is_loopback(host)
    if remote and not settings.allow_remote:
        raise OrchestratorError(f"{address} is not a loopback address: set web.allow_remote: true in orchestrator.yaml "
                                "to serve the control room beyond this machine")
    tokens = auth.tokens(state_dir, settings.users)
    roles = {u.name: u.role for u in settings.users}
    if show_url:
        chosen = user or next((u.name for u in settings.users if u.role == "operator"), settings.users[0].name)
        if chosen not in tokens:
            raise click.BadParameter(f"no user {chosen!r} in web.users (expected one of {', '.join(sorted(tokens))})",
                                     param_hint="--user")
        shown = "localhost" if host in ("127.0.0.1", "::1", "0.0.0.0", "::") else host
        url = f"http://{shown}:{port}/#token={tokens[chosen]}"
        if output == "json":
            click.echo(json.dumps({"url": url, "user": chosen, "role": roles[chosen], "token": tokens[chosen]}))
        else:
            click.echo(url)
        return
    if remote:
        click.echo(click.style(f"warning: {address} is not a loopback address: the control room is reachable from the "
                               "network (put TLS in front of it)", fg="yellow"), err=True)
    from orchestrator.interfaces.web.app import serve

    def ready(url: str) -> None:
        click.echo(f"The control room is at {url} (log in with `orchestrator web --show-url`'s link).", err=True)

    serve(state_dir, manifests_dir=os.path.abspath(options.manifests), env=options.env, users=settings.users,
          tokens=tokens, host=host, port=port, remote=remote, ready=ready)
