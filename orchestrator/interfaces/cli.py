"""The command line: each command parses its options and calls one core function.

The commands live in interfaces.commands, a module per kind of work; this root group imports a
module only when one of its commands runs, so `status` starts without the manifest loader or apply.

Owned here: the root group and its global options (interfaces.options), the
table of commands, and the one place an `OrchestratorError` becomes a message
on stderr and an exit code (each command formats its own results: text,
colored on a terminal, or JSON for scripts):

    0  success
    1  invalid input or a failed operation (every problem printed as FILE:LINE:COL: ...)
    2  wrong usage of the command line (click's own code); for `plan`: changes are pending
    3  for `status`: something desired is not running or not ready
    70 a bug in orchestrator (an unexpected exception; never a user error)
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import traceback
from typing import Any, NoReturn

import click

from orchestrator import __version__
from orchestrator.core.errors import ManifestError, OrchestratorError
from orchestrator.interfaces.options import Options
from orchestrator.interfaces.output import print_diagnostics, summary
from orchestrator.state.history import LOCK_TIMEOUT

PRIVATE_UMASK = 0o077
EXIT_BUG = 70


# Errors of the machine, not of orchestrator: the user's to fix, said plainly, exit 1 (70 stays for bugs).
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "the disk is full: free space there, then retry",
    errno.EDQUOT: "the disk quota is used up: free space there, then retry",
    errno.EROFS: "that filesystem is mounted read-only: remount it read-write or choose another --state-dir",
    errno.EACCES: "permission denied: run as the user who owns it, or fix its permissions",
    errno.EPERM: "not permitted: run as the user who owns it",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
    errno.ENFILE: "too many open files on this machine",
}


# command -> "module:function" under orchestrator.interfaces.commands, imported when the command runs (or for --help)
COMMANDS = {
    "validate": "manifests:validate", "render": "manifests:render_command", "graph": "manifests:graph_command",
    "schema": "manifests:schema_command",
    "plan": "changes:plan_command", "apply": "changes:apply_command", "up": "changes:up_command",
    "down": "changes:down_command",
    "status": "observe:status_command", "alerts": "observe:alerts_command",
    "start": "control:start_command", "stop": "control:stop_command", "restart": "control:restart_command",
    "start-all": "control:start_all_command", "stop-all": "control:stop_all_command",
    "restart-all": "control:restart_all_command", "emergency-stop": "control:emergency_stop_command",
    "emergency-clear": "control:emergency_clear_command",
    "recommend": "advice:recommend_command",
    "rules": "prometheus:rules_command", "prometheus-config": "prometheus:prometheus_config_command",
    "backup": "backups:backup_command", "restore": "backups:restore_command",
    "history": "versions:history_command", "show": "versions:show_command", "diff": "versions:diff_command",
    "rollback": "versions:rollback_command", "tag": "versions:tag_command",
    "grafana": "grafana:grafana_group",
    "watch": "watch:watch_command",
    "web": "web:web_command",
}


class _Group(click.Group):
    """Finds each command in its module, and maps orchestrator's errors to messages and exit codes, for every
    command at once."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, function = target.partition(":")
        command = getattr(importlib.import_module(f"orchestrator.interfaces.commands.{module}"), function)
        return command if command.name == name else None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ManifestError as exc:
            print_diagnostics(exc.diagnostics)
            click.echo(click.style(f"invalid manifests: {summary(exc.diagnostics)}", fg="red"), err=True)
            ctx.exit(exc.exit_code)
        except OrchestratorError as exc:
            click.echo(click.style(f"error: {exc}", fg="red"), err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(click.style(f"error:{where}: {exc.strerror} ({_ENVIRONMENT_ERRNOS[exc.errno]})", fg="red"), err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-m", "--manifests", default="manifests", envvar="ORCHESTRATOR_MANIFESTS", show_default=True,
              metavar="DIR", help="The manifest set: orchestrator.yaml, agents/*.yaml, templates/*.yaml, env/*.yaml. "
                                  "Also $ORCHESTRATOR_MANIFESTS.")
@click.option("--env", "env", metavar="NAME", envvar="ORCHESTRATOR_ENV",
              help="Overlay env/NAME.yaml on the manifests (for example prod). Also $ORCHESTRATOR_ENV.")
@click.option("--state-dir", metavar="DIR", envvar="ORCHESTRATOR_STATE_DIR",
              help="Rendered config, socket, logs and history. Default: .orchestrator/ beside the manifests directory.")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=LOCK_TIMEOUT, show_default=True,
              envvar="ORCHESTRATOR_LOCK_TIMEOUT", metavar="SECONDS",
              help="How long apply, up, rollback, restore and watch wait for another of them to finish (one at a time), "
                   "before failing with its PID, command and start. Also $ORCHESTRATOR_LOCK_TIMEOUT.")
@click.version_option(__version__, prog_name="orchestrator")
@click.pass_context
def cli(ctx: click.Context, manifests: str, env: str | None, state_dir: str | None, lock_timeout: float) -> None:
    """Declarative supervisor for long-running agent processes, built on supervisord.

    Describe agents in YAML manifests; orchestrator validates them, renders
    supervisord configuration, and starts agents in dependency order.

    Exit codes: 0 success, 1 invalid manifests or a failed operation,
    2 wrong usage.
    """
    ctx.obj = Options(manifests=manifests, env=env, state_dir=state_dir, lock_timeout=lock_timeout)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the `orchestrator` command."""
    # Everything written into the state directory (versions with their environment values, locks,
    # runtime state) is the operator's alone: files 0600, directories 0700.
    os.umask(PRIVATE_UMASK)
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
