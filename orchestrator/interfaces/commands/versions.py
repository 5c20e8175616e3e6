"""history, show, diff, rollback and tag: the versions apply recorded, what they differ by, and going back to one.

Each command parses, asks and prints; finding versions and comparing them is operations.compare, a
rollback operations.rollback. A VERSION is a number (3, 0003, v3) or a tag.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from orchestrator.core import graph
from orchestrator.core.errors import OrchestratorError, StateError, display_path
from orchestrator.core.versions import FileDiff
from orchestrator.interfaces.options import Options
from orchestrator.interfaces.output import renderer
from orchestrator.operations import compare as comparing
from orchestrator.state.history import History

if TYPE_CHECKING:
    from orchestrator.core.events import Emit
    from orchestrator.core.model import ManifestSet
    from orchestrator.operations.apply import ApplyError
    from orchestrator.operations.rollback import Prepared

_OUTPUT = click.Choice(["text", "json"])


def _when(created: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))


def _row(meta: Mapping[str, Any], *, tags: list[str], live: bool) -> dict[str, Any]:
    created = float(meta.get("created") or 0.0)
    return {"number": meta.get("number"), "semver": meta.get("semver") or None, "time": _iso(created), "created": created,
            "user": meta.get("user") or None, "command": meta.get("command") or None, "status": meta.get("status", "applied"),
            "message": meta.get("message", ""), "tags": tags, "rollback_of": meta.get("rollback_of"), "live": live,
            "env": meta.get("env"), "content_hash": meta.get("content_hash") or None}


def _rows(history: History) -> list[dict[str, Any]]:
    tagged: dict[int, list[str]] = {}
    for name, number in sorted(history.tags().items()):
        tagged.setdefault(number, []).append(name)
    live = history.live_number()
    rows = []
    for number in history.numbers():
        try:
            meta = history.meta(number)
        except StateError as exc:
            meta = {"number": number, "status": f"unreadable ({exc})"}
        rows.append(_row({**meta, "number": number}, tags=tagged.get(number, []), live=number == live))
    return rows


@click.command("history")
@click.option("--output", type=_OUTPUT, default="text", show_default=True,
              help="json: an array, oldest first: number, semver, time (UTC), created, user, command, status, message, "
                   "tags, rollback_of, live, env, content_hash.")
@click.pass_obj
def history_command(options: Options, output: str) -> None:
    """List the versions apply, up and rollback recorded, oldest first; * marks the live one.

    A version's semver says how big its change was: major when agents were
    added or removed, minor when an agent restarted, patch when nothing
    restarted (probes, thresholds, settings). Works when the manifests are broken.
    """
    rows = _rows(History(options.state_dir_only()))
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No versions yet: apply or up records one.")
        return
    header = ["", "VERSION", "SEMVER", "TIME", "USER", "COMMAND", "STATUS", "TAGS", "MESSAGE"]
    table = [header]
    for row in rows:
        message = row["message"]
        if row["rollback_of"] is not None:
            message = f"[rollback of {row['rollback_of']}] {message}".rstrip()
        table.append(["*" if row["live"] else "", str(row["number"]), row["semver"] or "-", _when(row["created"]),
                      row["user"] or "-", row["command"] or "-", row["status"], ",".join(row["tags"]) or "-", message])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    colors = {"failed": "red", "applying": "yellow"}
    for index, cells in enumerate(table):
        text = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        if index == 0:
            click.echo(click.style(text, bold=True))
        else:
            click.echo(click.style(text, fg=colors.get(cells[6]), bold=cells[0] == "*"))


@click.command("show")
@click.argument("version")
@click.option("--file", "path", metavar="PATH", help="Print this stored manifest file (as listed) byte for byte.")
@click.option("--output", type=_OUTPUT, default="text", show_default=True, help="json: the metadata and the files.")
@click.pass_obj
def show_command(options: Options, version: str, path: str | None, output: str) -> None:
    """Show a version: when, who, how and why it was recorded, its agents, and its stored manifest files.

    VERSION is a number or a tag. With --file, print one stored manifest file,
    as it was applied (agents/NAME.yaml, orchestrator.yaml, ...).
    """
    history = History(options.state_dir_only())
    found = comparing.resolve(history, version)
    files = history.stored_files(found)
    if path is not None:
        wanted = path.strip("/")
        if wanted not in files:
            raise StateError(f"version {found.number} stored no {path!r}; its files: {', '.join(sorted(files))}")
        sys.stdout.buffer.write(files[wanted])
        sys.stdout.flush()
        return
    tags = sorted(t for t, n in history.tags().items() if n == found.number)
    row = _row(history.meta(found.number), tags=tags, live=found.number == history.live_number())
    if output == "json":
        click.echo(json.dumps({**row, "agents": sorted(found.agents), "files": sorted(files),
                               "manifests_dir": found.manifests_dir}, indent=2))
        return
    title = f"version {found.number}" + (f" ({found.semver})" if found.semver else "") + (" (live)" if row["live"] else "")
    click.echo(click.style(title, bold=True))
    for label, value in (("time", _when(found.created)), ("user", found.user or "-"), ("command", found.command or "-"),
                         ("status", found.status), ("message", found.message or "-"),
                         ("rollback of", str(found.rollback_of) if found.rollback_of is not None else None),
                         ("tags", ", ".join(tags) or None), ("env", found.env),
                         ("manifests", display_path(found.manifests_dir) if found.manifests_dir else None),
                         ("content hash", found.content_hash or None), ("agents", ", ".join(sorted(found.agents)) or "none")):
        if value is not None:
            click.echo(f"  {label + ':':<14}{value}")
    click.echo("  files:")
    for name in sorted(files):
        click.echo(f"    {name}")


def _print_files(diffs: tuple[FileDiff, ...]) -> None:
    for diff in diffs:
        for line in diff.lines:
            if line.startswith(("---", "+++")):
                click.echo(click.style(line, bold=True))
            elif line.startswith("@@"):
                click.echo(click.style(line, fg="cyan"))
            elif line.startswith("+"):
                click.echo(click.style(line, fg="green"))
            elif line.startswith("-"):
                click.echo(click.style(line, fg="red"))
            else:
                click.echo(line)


_MARKS = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}


def _print_agents(comparison: comparing.Comparison) -> None:
    old, new = comparison.old.label, comparison.new.label
    if comparison.same:
        click.echo(f"No difference between {old} and {new}.")
        return
    click.echo(click.style(f"Agents, {old} -> {new}:", bold=True) if comparison.agents else f"No agent changes, {old} -> {new}.")
    for change in comparison.agents:
        mark, color = _MARKS[change.change]
        color = "yellow" if change.restarts else "cyan" if change.change == "changed" else color
        click.echo(click.style(f"  {mark} {change.agent}: {change.change}, {change.effect}", fg=color))
        for field in change.fields:
            click.echo(f"      {field.text()}")
        if change.change == "changed" and not change.fields:
            click.echo(f"      {', '.join(change.why)}")
    if comparison.plan.settings:
        click.echo(click.style(f"  ~ settings changed: {', '.join(comparison.plan.settings)} (no agent restarts)", fg="cyan"))


@click.command("diff")
@click.argument("a", required=False)
@click.argument("b", required=False)
@click.option("--output", type=_OUTPUT, default="text", show_default=True,
              help="json: {from, to, same, agents: [{agent, change, action, restart, effect, fields: [{field, old, new}]}], "
                   "settings, files: [{path, status, diff}]}.")
@click.pass_obj
def diff_command(options: Options, a: str | None, b: str | None, output: str) -> None:
    """Show what differs between two versions, or a version and the manifests on disk.

    No VERSION: the live version against the manifests on disk (what apply
    would record). A alone: version A against the disk. A and B: A against B.
    Prints each agent added, removed or changed (each field, old -> new; env
    values are not shown), whether it would restart or only be updated, and
    the unified diff of the manifest files.
    """
    if b is not None:
        history = History(options.state_dir_only())
        old, new = comparing.resolve(history, a or ""), comparing.resolve(history, b)
        comparison = comparing.compare(comparing.version_side(history, old), comparing.version_side(history, new))
    else:
        manifests = options.load()
        history = History(manifests.state_dir)
        old = comparing.resolve(history, a) if a is not None else comparing.live(history)
        comparison = comparing.compare(comparing.version_side(history, old), comparing.disk_side(manifests))
    if output == "json":
        click.echo(json.dumps(comparison.as_dict(), indent=2))
        return
    _print_agents(comparison)
    if comparison.files:
        click.echo()
        _print_files(comparison.files)


def show_rollback(prepared: Prepared) -> None:
    """What a rollback will do: the agents that change, the plan, the manifest files written onto disk."""
    from orchestrator.operations.rollback import NOT_DATA
    from orchestrator.interfaces.commands.changes import _print_plan

    target, current = prepared.target, prepared.live
    about = f"{target.semver}, " if target.semver else ""
    click.echo(click.style(f"Rollback to version {target.number} ({about}{_when(target.created)}"
                           f"{': ' + target.message if target.message else ''}), from the live version {current.number}.",
                           bold=True))
    _print_agents(prepared.changes)
    click.echo()
    _print_plan(prepared.plan)
    if prepared.files:
        click.echo()
        click.echo(click.style(f"Manifest files written onto {display_path(prepared.manifests_dir)}:", bold=True))
        _print_files(prepared.files)
    for path in prepared.left:
        click.echo(click.style(f"  {path}: not a manifest of version {target.number}, left as it is", fg="yellow"))
    click.echo()
    click.echo(click.style(NOT_DATA, fg="yellow", bold=True))


@click.command("rollback")
@click.argument("version", required=False)
@click.option("-M", "--message", default="", help="A note recorded with the new version (default: rollback to version N).")
@click.option("--yes", is_flag=True, help="Do not ask (and carry out the new plan if it changed since it was shown).")
@click.pass_obj
def rollback_command(options: Options, version: str | None, message: str, yes: bool) -> None:
    """Go back to an earlier version's configuration (default: the version before the live one).

    Shows the plan and the diff, asks on a terminal (--yes for scripts;
    without a terminal it proceeds, saying so), writes that version's stored
    manifest files back into the manifests directory byte for byte (comments
    and formatting too; manifest files it did not have are removed), then
    applies them: only agents that differ restart. The new version is
    recorded as a rollback. It restores configuration, not data: what the
    agents wrote (positions, files, databases) stays as it is.
    """
    from orchestrator.interfaces.commands.changes import _confirm_changed
    from orchestrator.operations import rollback
    from orchestrator.operations.apply import ApplyError

    state_dir = options.state_dir_only()
    prepared = rollback.prepare(state_dir, manifests_dir=os.path.abspath(options.manifests), env=options.env,
                                version=version)
    show_rollback(prepared)
    if not yes and sys.stdin.isatty():
        click.confirm(f"Roll back to version {prepared.target.number}?", abort=True, err=True)
    elif not yes:
        click.echo(click.style(f"Rolling back to version {prepared.target.number} (no terminal to ask on).", fg="yellow"),
                   err=True)
    try:
        report = rollback.carry_out(prepared, confirm=_confirm_changed(yes), message=message,
                                    emit=renderer(graph.Graph.of(_agents_of(prepared))), lock_timeout=options.lock_timeout)
    except ApplyError as exc:
        raise OrchestratorError(f"rollback to version {prepared.target.number} failed (its manifests are on disk; "
                                f"`orchestrator apply` tries again):\n{exc}") from exc
    recorded = report.version
    click.echo(click.style(f"Rolled back to version {prepared.target.number}"
                           + (f": recorded as version {recorded.number} ({recorded.semver})." if recorded else "."),
                           fg="green"))
    from orchestrator.interfaces.grafana import annotate_change
    annotate_change(options.load, report, message or f"rollback to version {prepared.target.number}", what="rollback")


def _agents_of(prepared: Prepared) -> ManifestSet:
    """The stored set's agents as a manifest set, for the progress renderer's waves."""
    from orchestrator.core.model import ManifestSet, Settings

    return ManifestSet(settings=Settings(), agents=tuple(prepared.target.agents[n] for n in sorted(prepared.target.agents)),
                       manifests_dir=prepared.manifests_dir, state_dir=prepared.state_dir)


@click.command("tag")
@click.argument("number")
@click.argument("name")
@click.option("--force", is_flag=True, help="Move the tag when another version has it.")
@click.pass_obj
def tag_command(options: Options, number: str, name: str, force: bool) -> None:
    """Tag version NUMBER as NAME. A tagged version is never deleted by
    retention (history.keep), and NAME stands for it in show, diff and rollback."""
    history = History(options.state_dir_only())
    found = comparing.resolve(history, number)
    with history.lock():
        moved = history.tag(found.number, name, force=force)
    click.echo(f"Tagged version {found.number} as {name}" + (f" (moved from version {moved})." if moved else "."))


def roll_back_after(failure: ApplyError, manifests: ManifestSet, emit: Emit) -> None:
    """apply --rollback-on-failure: when an agent the failed apply changed is not ready, roll back to the last
    applied version through the rollback path, and raise the error that reports both (exit 1). Returns (nothing
    rolled back) when the failure is not one of a changed agent."""
    from orchestrator.operations import rollback
    from orchestrator.interfaces.commands.changes import _confirm_changed

    failed = rollback.failed_changes(failure)
    recorded = failure.report.version
    if not failed or recorded is None:
        click.echo(click.style("Not rolling back: no agent this apply changed failed.", fg="yellow"), err=True)
        return
    target = rollback.last_good(manifests.state_dir, recorded.number)
    if target is None:
        raise OrchestratorError(f"apply failed (version {recorded.number}):\n{failure}\n"
                                "no earlier applied version to roll back to") from failure
    click.echo(click.style(f"apply failed (version {recorded.number}, recorded as failed):\n{failure}", fg="red"), err=True)
    click.echo(click.style(f"Rolling back to version {target.number}, the last applied version "
                           f"({', '.join(failed)} did not become ready).", fg="yellow", bold=True), err=True)
    prepared = rollback.prepare(manifests.state_dir, manifests_dir=manifests.origin_dir, env=manifests.env, target=target)
    show_rollback(prepared)
    try:
        report = rollback.carry_out(prepared, confirm=_confirm_changed(True),
                                    message=f"rollback after version {recorded.number} failed", emit=emit)
    except ApplyError as again:
        raise OrchestratorError(f"apply failed (version {recorded.number}), and so did the rollback to version "
                                f"{target.number}:\n{again}") from again
    new = report.version
    raise OrchestratorError(
        f"apply failed (version {recorded.number}): {', '.join(failed)} did not become ready; "
        f"rolled back to version {target.number}" + (f": recorded as version {new.number}" if new else "") + ". "
        f"The failed manifests are kept as version {recorded.number} "
        f"(orchestrator show {recorded.number}, orchestrator diff {target.number} {recorded.number}).") from failure
