"""Rendering a manifest set to supervisord configuration, and checking it with supervisord's own parser.

Owned here: the one Jinja environment (StrictUndefined; every user value
passes a named filter from `core.svsyntax`), the file layout of a rendered
configuration (`supervisord.conf` plus `programs/NAME.conf`, one file per
agent, so a change to one agent changes one file), and `check`, which feeds
a rendering to `supervisor.options.ServerOptions` exactly as supervisord
would read it. Output is byte-stable: the same manifests give the same bytes.

Called by `cli` (render, validate) and, later, by apply.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Mapping

import jinja2

from orchestrator.core import svsyntax
from orchestrator.core.errors import Diagnostic, Location, RenderError
from orchestrator.core.model import Agent, ManifestSet
from orchestrator.supervisord import launching
from orchestrator.core.names import (CONFIG_MARKER, ENV_MARKER, EXPORTER, LISTENER, LIVE_DIR, LOGS_DIR, MAIN_CONFIG,
                                     MANIFESTS_MARKER, MARKER, PROGRAMS_DIR)

_PENDING_HASH = "PENDINGCONFIGHASH"
_PENDING_RE = re.compile(CONFIG_MARKER + r'=(["\']?)' + _PENDING_HASH)


def _with_hash(program: str) -> tuple[str, str]:
    """A rendered program section with its own hash filled in (the hash of the section as rendered before)."""
    digest = hashlib.sha256(program.encode("utf-8")).hexdigest()[:16]
    return _PENDING_RE.sub(lambda m: f"{CONFIG_MARKER}={m.group(1)}{digest}", program, count=1), digest


LAUNCHER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch.py")


def launch_argv(python: str, state_dir: str, launch: launching.Launch) -> list[str]:
    """The command supervisord runs for an agent: the launcher (host.launcher, through its stable entry point
    orchestrator/launch.py, isolated from site-packages: see there), reading its launch file. The launcher
    applies `resources` and `sandbox` and execs the agent's command in place, keeping its PID."""
    return [python, "-I", "-S", LAUNCHER, os.path.join(state_dir, launch.path)]


def template_dir() -> Path:
    """The templates shipped with orchestrator (the repository's templates/ directory)."""
    try:
        packaged = resources.files("orchestrator.templates")
        if packaged.joinpath("program.conf.j2").is_file():
            return Path(str(packaged))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - not installed as a package
        pass
    return Path(__file__).resolve().parents[2] / "templates"


def _sv_value(value: object) -> str:
    text = str(value)
    problem = svsyntax.value_problem(text)
    if problem:
        raise RenderError(f"cannot write {text!r} into supervisord configuration: it {problem}")
    return svsyntax.escape_percent(text)


def _sv_command(argv: Iterable[str]) -> str:
    argv = list(argv)
    for arg in argv:
        if svsyntax.breaks_line(arg):  # anything else in an argument, quote_command writes safely
            raise RenderError(f"cannot write command argument {arg!r}: it contains a line break")
    return svsyntax.quote_command(argv)


def _sv_environment(env: Mapping[str, str]) -> str:
    for key, value in env.items():
        problem = svsyntax.env_value_problem(value)
        if problem:
            raise RenderError(f"cannot write environment variable {key}: its value {problem}")
    return svsyntax.quote_environment(env)


def _whole_seconds(seconds: float) -> int:
    """supervisord takes whole seconds; round up, so a wait is never shorter than asked."""
    return int(math.ceil(seconds))


def environment(directory: Path | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory or template_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(sv_value=_sv_value, sv_command=_sv_command, sv_environment=_sv_environment,
                       whole_seconds=_whole_seconds)
    return env


@dataclass(frozen=True)
class Rendering:
    """A rendered configuration: relative path -> file content, for one state directory."""

    files: Mapping[str, str]
    state_dir: str
    hashes: Mapping[str, str] = field(default_factory=dict)   # agent -> the configuration hash its processes carry
    # agent -> its launch: written into the state directory only (0600), never into a version (secrets)
    launches: Mapping[str, launching.Launch] = field(default_factory=dict)

    @property
    def launch_files(self) -> dict[str, bytes]:
        """The files the launches are, relative to the state directory: each launch file and controls file."""
        return {rel: text for launch in self.launches.values()
                for rel, text in ((launch.path, launch.content), (launch.controls_path, launch.controls))}

    @property
    def problems(self) -> list[str]:
        """What keeps the launches from being written (secrets that could not be read), agent by agent."""
        return [f"agent {name}: {problem}" for name, launch in sorted(self.launches.items()) for problem in launch.problems]

    @property
    def main(self) -> str:
        return self.files[MAIN_CONFIG]

    def program(self, name: str) -> str:
        return self.files[f"{PROGRAMS_DIR}/{name}.conf"]


def socket_path(manifests: ManifestSet, state_dir: str | None = None) -> str:
    return os.path.join(state_dir or manifests.state_dir, manifests.settings.supervisord.socket)


def render(manifests: ManifestSet, *, state_dir: str | None = None, templates: Path | None = None,
           single_file: bool = False, programs_dir: str | None = None, python: str = sys.executable) -> Rendering:
    """The supervisord configuration for `manifests`, with paths inside `state_dir` (default: the set's own).

    `single_file` puts every program section in supervisord.conf itself instead
    of programs/NAME.conf: the same sections, for `check` (see there).
    `programs_dir` is the directory whose NAME.conf files the main file's
    `[include]` loads (default: the state directory's `current/programs`, the
    live version apply makes; see history). `render --out DIR` passes
    DIR/programs, so the files it writes are a set supervisord loads on its own.
    """
    state = state_dir or manifests.state_dir
    included = programs_dir or os.path.join(state, LIVE_DIR, PROGRAMS_DIR)
    env = environment(templates)
    project_dir = manifests.project_dir  # set once by the loader: a stored copy renders as the set it was taken from
    marker = {MARKER: state}
    common: dict[str, Any] = {"settings": manifests.settings, "state_dir": state,
                              "manifests_dir": manifests.origin_dir}
    files = {MAIN_CONFIG: _render(
        env, "supervisord.conf.j2", common, None, socket=socket_path(manifests, state), include_programs=not single_file,
        programs_glob=os.path.join(included, "*.conf"), listener=LISTENER,
        listener_command=[python, "-m", "orchestrator.listener", "--state-dir", state],
        listener_env={**marker, MANIFESTS_MARKER: manifests.origin_dir, ENV_MARKER: manifests.env or ""},
        **_exporter(manifests, state, python, marker))}
    hashes: dict[str, str] = {}
    launches: dict[str, launching.Launch] = {}
    key = launching.key(state, create=any(a.secrets or a.env_file for a in manifests.agents))
    for agent in manifests.agents:
        directory = os.path.normpath(os.path.join(project_dir, agent.directory or "."))
        source = os.path.relpath(agent.source.file, manifests.manifests_dir) if agent.source.file else agent.name
        launches[agent.name] = launch = launching.launch(agent, manifests, state, argv=list(agent.command), key_bytes=key,
                                                         environ=os.environ)
        files[f"{PROGRAMS_DIR}/{agent.name}.conf"], hashes[agent.name] = _with_hash(_render(
            env, "program.conf.j2", common, agent, directory=directory, source=source,
            launch=launch_argv(python, state, launch),
            # the agent's own environment is in its launch file, exactly: only the markers go through supervisord
            environment={**marker, CONFIG_MARKER: _PENDING_HASH},
            log_base=os.path.join(state, LOGS_DIR, agent.name),
            # supervisord fills in each replica's number; written raw, not escaped
            replica_suffix="-%(process_num)d" if agent.replicas > 1 else "",
        ))
    if single_file:
        programs = [files.pop(rel) for rel in sorted(files) if rel != MAIN_CONFIG]
        files[MAIN_CONFIG] = "\n".join([files[MAIN_CONFIG], *programs])
    return Rendering(files=files, state_dir=state, hashes=hashes, launches=launches)


def _exporter(manifests: ManifestSet, state: str, python: str, marker: Mapping[str, str]) -> dict[str, Any]:
    """The exporter's program section values (see daemons.exporter); none when the settings turn it off."""
    settings = manifests.settings.exporter
    if not settings.enabled:
        return {"exporter": None}
    command = [python, "-m", "orchestrator.exporter", "--state-dir", state, "--socket", socket_path(manifests, state),
               "--listen", settings.listen, "--interval", f"{settings.interval:g}"]
    if settings.pss:
        command.append("--pss")
    return {"exporter": EXPORTER, "exporter_command": command, "exporter_env": dict(marker)}


def _render(env: jinja2.Environment, name: str, common: Mapping[str, Any], agent: Agent | None, **extra: Any) -> str:
    try:
        return env.get_template(name).render(**common, **extra, agent=agent)
    except RenderError as exc:
        where = f"agent {agent.name}: " if agent else ""
        raise RenderError(f"{where}{exc}") from exc
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {name}: {exc}") from exc


_SECTION = re.compile(r"section '?\[?program:([a-z0-9_-]+)")
_FILE_NOTE = re.compile(r"\s*\(file: '[^']*'\)")


def check(manifests: ManifestSet, *, templates: Path | None = None) -> list[Diagnostic]:
    """Problems supervisord would have with this manifest set's configuration, as diagnostics.

    The configuration is rendered into a scratch state directory and parsed by
    supervisord's own `ServerOptions`, as `supervisord -c` would read it, with
    one difference: the program sections sit in the main file rather than in
    included files. supervisord re-scans every section once per included file
    (its `%(here)s` replacement), which makes 500 includes cost 0.99 s against
    0.17 s for the same sections in one file; the sections parse identically,
    since orchestrator never writes `%(here)s` (see `core.svsyntax`).
    """
    from supervisor.options import ServerOptions  # imported here: it is heavy and only the check needs it

    settings_loc = Location(os.path.join(manifests.manifests_dir, "orchestrator.yaml"))
    found: list[Diagnostic] = []
    try:
        render(manifests, templates=templates)
    except RenderError as exc:
        found.append(Diagnostic(settings_loc, "", str(exc)))
        return found
    with tempfile.TemporaryDirectory(prefix="orchestrator-check-") as scratch:
        rendering = render(manifests, state_dir=scratch, templates=templates, single_file=True)
        with open(os.path.join(scratch, MAIN_CONFIG), "w", encoding="utf-8") as handle:  # single_file: all in one
            handle.write(rendering.main)
        os.makedirs(os.path.join(scratch, LOGS_DIR), exist_ok=True)
        options = ServerOptions()
        options.configfile = os.path.join(scratch, MAIN_CONFIG)
        try:
            options.process_config(do_usage=False)
        except ValueError as exc:
            message = _FILE_NOTE.sub("", str(exc)).replace(scratch, manifests.state_dir)
            match = _SECTION.search(message)
            where = settings_loc
            if match and match.group(1) in manifests.names:
                where = manifests.agent(match.group(1)).source
            found.append(Diagnostic(where, "", f"supervisord rejects the rendered configuration: {message}"))
    return found
