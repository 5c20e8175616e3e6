"""backup and restore: the manifest set and its history in one archive, and back again (verified first).

restore changes files only; the running agents change when apply runs (`restore --apply` runs it).
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from orchestrator.core import graph
from orchestrator.core.errors import OrchestratorError, display_path
from orchestrator.interfaces.commands.changes import _finish, show_and_apply
from orchestrator.interfaces.options import Options
from orchestrator.interfaces.output import renderer
from orchestrator.operations import backups
from orchestrator.operations.apply import ApplyError
from orchestrator.operations.reach import socket_of
from orchestrator.state.backup import Backup, RestorePlan
from orchestrator.supervisord.client import Client


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    return f"{count / 1024:.1f} KiB" if count < 1 << 20 else f"{count / (1 << 20):.1f} MiB"


def _numbers(numbers: list[int] | tuple[int, ...]) -> str:
    return ", ".join(map(str, numbers)) or "none"


def _described(made: Backup) -> str:
    versions = made.versions
    span = f"{len(versions)} version{'s' if len(versions) != 1 else ''}" + (
        f" ({versions[0]}-{versions[-1]})" if len(versions) > 1 else f" ({versions[0]})" if versions else "")
    live = f", live: {made.current}" if made.current is not None else ""
    manifests = len(made.manifests)
    return f"{manifests} manifest file{'s' if manifests != 1 else ''}, {span}{live}"


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: path, project, created, current, manifest_files, versions, files, content_bytes, archive_bytes.")
@click.pass_obj
def backup_command(options: Options, file: str, force: bool, output: str) -> None:
    """Write the manifests and the whole history to FILE (a .tar.gz).

    The archive holds orchestrator.yaml, agents/, templates/ and env/ as they
    are on disk, every stored version (history/NNNN) and an index,
    BACKUP.json, with the size and sha256 of every file and the number of the
    live version. FILE is written atomically and never replaced unless
    --force. Nothing running is touched. Restore it with `orchestrator
    restore FILE`.
    """
    state_dir = options.state_dir_only()
    made = backups.backup(file, manifests_dir=os.path.abspath(options.manifests), state_dir=state_dir, force=force)
    if output == "json":
        click.echo(json.dumps(made.summary(), indent=2))
        return
    files = sum(1 for m in made.members if m.kind == "file")
    click.echo(f"Wrote {display_path(made.path)} ({_size(made.archive_bytes)}): {_described(made)}; "
               f"{files} files, {_size(sum(m.size for m in made.members))} before compression.")


def _show_restore(plan: RestorePlan) -> None:
    made = plan.backup
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(made.created))
    project = f" of project {made.project}" if made.project else ""
    click.echo(f"{display_path(made.path)}: verified; a backup{project} taken {when} by orchestrator "
               f"{made.orchestrator}: {_described(made)}.")
    where = display_path(plan.manifests_dir)
    for rel in plan.write:
        click.echo(click.style(f"  write   {where}/{rel}", fg="yellow"))
    for rel in plan.delete:
        click.echo(click.style(f"  delete  {where}/{rel} (not in the backup)", fg="red"))
    if plan.unchanged:
        click.echo(f"  {len(plan.unchanged)} manifest file{'s' if len(plan.unchanged) != 1 else ''} already as in the backup")
    if plan.new_versions:
        click.echo(click.style(f"  add     version{'s' if len(plan.new_versions) != 1 else ''} "
                               f"{_numbers(plan.new_versions)} to the history", fg="green"))
    if plan.replace_versions:
        click.echo(click.style(f"  replace version{'s' if len(plan.replace_versions) != 1 else ''} "
                               f"{_numbers(plan.replace_versions)} of the history (--force)", fg="red"))
    if plan.same_versions:
        click.echo(f"  keep    version{'s' if len(plan.same_versions) != 1 else ''} {_numbers(plan.same_versions)} "
                   "(already in the history)")
    if plan.untouched_versions:
        click.echo(f"  keep    version{'s' if len(plan.untouched_versions) != 1 else ''} "
                   f"{_numbers(plan.untouched_versions)} (not in the backup)")
    if plan.tags:
        click.echo("  merge   the backup's tags (a tag this history has keeps its version)")
    if plan.live is not None:
        click.echo(f"  version {plan.live} stays live until the next apply")


@click.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--yes", is_flag=True, help="Do not ask before writing (nor, with --apply, before stopping agents).")
@click.option("--force", is_flag=True, help="Replace stored versions whose number the backup has with another "
                                             "configuration (never the live one).")
@click.option("--apply", "then_apply", is_flag=True, help="Then apply the restored manifests, recording a version "
                                                          "whose message names FILE.")
@click.pass_obj
def restore_command(options: Options, file: str, yes: bool, force: bool, then_apply: bool) -> None:
    """Write the manifests and the history of backup FILE back.

    FILE is read whole and verified first: a file that is not an
    orchestrator backup, or is truncated, corrupt, altered, or holds a
    link, a device or a path outside its place, is refused (exit 1) and
    nothing is changed. Then the manifest files are written back byte for
    byte (files of the set that the backup lacks are deleted), and its
    versions are added to the history: a version already stored with the
    same configuration is kept; one with another configuration is an error
    unless --force, and the live version is never replaced. Whatever the
    restore overwrites is first archived in STATE/backups/pre-restore-*.
    Nothing running changes: `orchestrator plan` then shows, and `apply`
    makes, the change; --apply applies at once.
    """
    state_dir = options.state_dir_only()
    manifests_dir = os.path.abspath(options.manifests)
    if then_apply and not Client(socket_of(state_dir)).is_running():
        raise OrchestratorError(f"supervisord is not running for {state_dir}: restore without --apply, then "
                                f"`orchestrator up`; nothing was changed")
    plan = backups.prepare_restore(file, manifests_dir=manifests_dir, state_dir=state_dir, force=force)
    _show_restore(plan)
    if plan.changes:
        if not yes and sys.stdin.isatty():
            click.confirm("Restore?", abort=True, err=True)
        safety = backups.restore(plan, force=force, lock_timeout=options.lock_timeout, emit=renderer())
        if safety is not None:
            click.echo(f"What was here is kept in {display_path(safety.path)}.")
        click.echo(click.style("Restored.", fg="green"))
    else:
        click.echo("Nothing to restore: the manifests and the history already hold the backup.")
    where = display_path(manifests_dir)
    if not then_apply:
        click.echo(f"Nothing running was changed: `orchestrator -m {where} plan` shows what "
                   f"`orchestrator -m {where} apply` changes to make the running agents match.")
        return
    _apply_restored(options, file, yes)


def _apply_restored(options: Options, file: str, yes: bool) -> None:
    manifests = options.load()
    try:
        report = show_and_apply(manifests, yes, message=f"restored from {os.path.abspath(file)}",
                                emit=renderer(graph.Graph.of(manifests)), lock_timeout=options.lock_timeout)
    except ApplyError as exc:
        raise OrchestratorError(f"apply failed:\n{exc}") from exc
    if report is None:
        return
    _finish(report, manifests)
    from orchestrator.interfaces.grafana import annotate_change
    annotate_change(lambda: manifests, report, f"restored from {os.path.abspath(file)}", what="restore")
