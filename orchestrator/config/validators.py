"""Named cross-field validators of a manifest set; each yields every problem it finds.

Owned here: the rules a single field's type cannot express: unique names,
known dependencies, dependency cycles (printed whole, with every edge's
location), threshold order, fields that do not belong to the chosen restart
policy, probe targets, commands that cannot be run, values supervisord could
not read back, and CPUs this machine does not have (a warning: manifests
travel). Called by `manifest.load` after every agent has been merged,
templated and type-checked; nothing here raises or stops at the first error.
"""

from __future__ import annotations

import graphlib
import grp
import os
import pwd
import shlex
import shutil
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from orchestrator.core.addresses import host_port_problem, is_loopback, split_host_port
from orchestrator.core import model, svsyntax
from orchestrator.core.errors import Diagnostic, Location
from orchestrator.config.schema import POLICY_FIELDS
from orchestrator.config.spec import INVALID, choices_hint, describe
from orchestrator.config.yamltree import Node


@dataclass
class Draft:
    """One agent on its way to the model: its merged, templated tree and, when valid, its checked values."""

    file: str
    node: Node
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        """Every field passed its type check (the draft can become a model.Agent)."""
        return bool(self.values) and all(v is not INVALID for v in self.values.values())

    def value(self, key: str) -> Any:
        """The checked value of a field, or None when it is absent or failed its check."""
        value = self.values.get(key)
        return None if value is INVALID else value

    @property
    def name(self) -> str | None:
        name = self.node.get("name")
        return name.value if name is not None and isinstance(name.value, str) else None

    @property
    def name_loc(self) -> Location:
        name = self.node.get("name")
        return name.loc if name is not None else self.node.loc


@dataclass
class Context:
    """What validators may consult about this machine (a seam for tests)."""

    project_dir: str
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cpu_count: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    check_commands: bool = True
    # Names of agents whose files could not be read (their stems): depending on
    # them is not an "unknown agent" error, the file's own error says enough.
    unreadable: frozenset[str] = frozenset()
    settings: model.Settings = field(default_factory=lambda: model.Settings())
    manifests_dir: str = ""   # where the set was read: its agents/, templates/ and env/ are copied into every version
    # whether supervisord (started by this user) runs as root: then an agent without a user runs as root
    as_root: bool = field(default_factory=lambda: os.geteuid() == 0)


AgentValidator = Callable[[Draft, Context], Iterable[Diagnostic]]
SetValidator = Callable[[Sequence[Draft], Context], Iterable[Diagnostic]]


def _error(loc: Location, key: str, message: str) -> Diagnostic:
    return Diagnostic(loc, key, message)


def _child(node: Node | None, *path: str | int) -> Node | None:
    for key in path:
        if node is None:
            return None
        if isinstance(key, int):
            node = node.value[key] if isinstance(node.value, list) and key < len(node.value) else None
        else:
            node = node.get(key)
    return node


# --- rules over the whole set -------------------------------------------------

def unique_names(drafts: Sequence[Draft], ctx: Context) -> Iterator[Diagnostic]:
    first: dict[str, Draft] = {}
    for draft in drafts:
        name = draft.name
        if name is None:
            continue
        if name in first:
            yield _error(draft.name_loc, "name", f"agent '{name}' is already defined at {first[name].name_loc} (expected a unique name)")
        else:
            first[name] = draft


def known_dependencies(drafts: Sequence[Draft], ctx: Context) -> Iterator[Diagnostic]:
    names = sorted({d.name for d in drafts if d.name is not None})
    for draft in drafts:
        deps = draft.node.get("depends_on")
        if deps is None or not isinstance(deps.value, list):
            continue
        for index, item in enumerate(deps.value):
            if not isinstance(item.value, str) or item.value in names or item.value in ctx.unreadable:
                continue
            hint = choices_hint(item.value, names, label="known agents", none="there are no agents")
            yield _error(item.loc, f"depends_on[{index}]", f"unknown agent {describe(item.value)} ({hint})")


def dependency_edges(drafts: Sequence[Draft]) -> dict[str, dict[str, Location]]:
    """name -> {dependency -> where the edge is written}, for known agents only (first definition wins)."""
    edges: dict[str, dict[str, Location]] = {}
    for draft in drafts:
        if draft.name is None or draft.name in edges:
            continue
        edges[draft.name] = {}
    for draft in drafts:
        deps = draft.node.get("depends_on")
        if draft.name is None or deps is None or not isinstance(deps.value, list):
            continue
        for item in deps.value:
            if isinstance(item.value, str) and item.value in edges:
                edges[draft.name].setdefault(item.value, item.loc)
    return edges


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every dependency cycle graphlib finds, as [a, b, ..., a] where a depends on b.

    graphlib names one cycle per attempt; an edge of it is removed and the
    search repeated, so every cycle is reported, each once, starting at its
    alphabetically first agent.
    """
    remaining = {node: set(deps) for node, deps in graph.items()}
    cycles: list[list[str]] = []
    while True:
        try:
            graphlib.TopologicalSorter(remaining).prepare()
            return cycles
        except graphlib.CycleError as exc:
            found = list(exc.args[1])  # each node is a dependency of the next: reverse it
            ring = list(reversed(found))[:-1]
            start = ring.index(min(ring))
            ring = ring[start:] + ring[:start]
            cycles.append(ring + [ring[0]])
            remaining[ring[0]].discard(ring[1] if len(ring) > 1 else ring[0])


def no_cycles(drafts: Sequence[Draft], ctx: Context) -> Iterator[Diagnostic]:
    edges = dependency_edges(drafts)
    for cycle in find_cycles(edges):
        pairs = list(zip(cycle, cycle[1:], strict=False))
        where = ", ".join(f"{a} -> {b} at {edges[a][b]}" for a, b in pairs)
        first = edges[pairs[0][0]][pairs[0][1]]
        yield _error(first, "depends_on", f"dependency cycle {' -> '.join(cycle)} ({where}; expected no cycle)")


# --- rules over one agent -----------------------------------------------------

def thresholds_in_order(draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    resources: model.Resources | None = draft.value("resources")
    if resources is None:
        return
    for metric in ("cpu_percent", "memory_mb", "open_fds"):
        levels: model.Thresholds = getattr(resources, metric)
        previous: tuple[str, float] | None = None
        for level in ("warning", "critical", "limit"):
            value = getattr(levels, level)
            if value is None:
                continue
            if previous is not None and value <= previous[1]:
                node = _child(draft.node, "resources", metric, level)
                key = f"resources.{metric}.{level}"
                yield _error(node.loc if node else draft.node.loc, key,
                             f"{value:g} is not above {previous[0]} {previous[1]:g} (expected warning < critical < limit)")
            previous = (level, value)


def restart_fields_match_policy(draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    restart = draft.node.get("restart")
    if restart is None or not isinstance(restart.value, dict):
        return
    policy: model.RestartPolicy | None = draft.value("restart")
    if policy is None:
        return
    allowed = POLICY_FIELDS[policy.policy]
    for key, item in restart.value.items():
        if key == "policy" or key in allowed or item.value is None:
            continue
        uses = ", ".join(sorted(allowed)) or "no other field"
        yield _error(item.where, f"restart.{key}", f"not used by policy '{policy.policy}' ({policy.policy} uses: {uses})")
    if policy.policy == "exponential-backoff" and policy.max_delay < policy.delay:
        node = restart.get("max_delay") or restart
        yield _error(node.loc, "restart.max_delay", f"{policy.max_delay:g}s is below delay {policy.delay:g}s (expected max_delay >= delay)")


_HOST_PORT = "expected HOST:PORT with a port from 1 to 65535,"


def _url_problem(text: str) -> str | None:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if port is not None and not 1 <= port <= 65535:
        return f"has an invalid port {port}"
    return None


def probes_are_valid(draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    for which in ("readiness", "liveness"):
        node = draft.node.get(which)
        if node is None or not isinstance(node.value, dict):
            continue
        kinds = [k for k in ("tcp", "http", "exec") if k in node.value and node.value[k].value is not None]
        if not kinds:
            yield _error(node.where, which, "no check given (expected one of tcp: HOST:PORT, http: URL, exec: [COMMAND...])")
            continue
        for extra in kinds[1:]:
            yield _error(node.value[extra].where, f"{which}.{extra}",
                         f"only one check per probe (found {' and '.join(kinds)}; expected one of tcp, http, exec)")
        kind = kinds[0]
        target = node.value[kind]
        if kind == "tcp" and isinstance(target.value, str):
            problem = host_port_problem(target.value)
            if problem:
                yield _error(target.loc, f"{which}.tcp", f"{describe(target.value)} {problem} ({_HOST_PORT} such as 127.0.0.1:9101)")
        elif kind == "http" and isinstance(target.value, str):
            problem = _url_problem(target.value)
            if problem:
                yield _error(target.loc, f"{which}.http", f"{describe(target.value)} {problem} (expected a URL such as http://127.0.0.1:9101/health)")
        elif kind == "exec":
            probe = draft.value(which)
            if probe is not None and probe.exec:
                yield from _runnable(probe.exec, target, f"{which}.exec", draft, ctx)


def _runnable(argv: Sequence[str], node: Node, key: str, draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    if not ctx.check_commands:
        return
    program = argv[0]
    loc = node.value[0].loc if isinstance(node.value, list) and node.value else node.loc
    if "/" in program:
        base = draft.value("directory") or ctx.project_dir
        path = program if os.path.isabs(program) else os.path.join(ctx.project_dir, base, program)
        if not os.path.exists(path):
            yield _error(loc, f"{key}[0]", f"{program!r} does not exist (expected the path of an executable file)")
        elif os.path.isdir(path) or not os.access(path, os.X_OK):
            yield _error(loc, f"{key}[0]", f"{program!r} is not executable (expected an executable file; chmod +x it)")
        return
    env = draft.value("env") or {}
    search = env.get("PATH") or ctx.environ.get("PATH", os.defpath)
    if shutil.which(program, path=search) is None:
        yield _error(loc, f"{key}[0]", f"{describe(program)} is not found on PATH (expected a program on PATH or a path to an executable)")


def command_is_runnable(draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    command = draft.node.get("command")
    argv = draft.value("command")
    if command is not None and argv:
        yield from _runnable(argv, command, "command", draft, ctx)


# Linux passes no single argument or NAME=value string longer than this to a program (execve: E2BIG);
# refusing longer ones also bounds supervisord's environment parser, whose cost grows with the square
# of a value's length (shlex builds each token a character at a time): 1 MB took it 13 s.
MAX_ARG_STRLEN = 131072


def _too_long(text: str) -> str | None:
    size = len(text.encode("utf-8", "surrogateescape")) + 1  # with its terminating NUL
    return (f"is {size - 1} bytes, longer than the {MAX_ARG_STRLEN - 1} Linux passes to a program in one argument "
            "or variable") if size > MAX_ARG_STRLEN else None


def values_fit_supervisord(draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    command = draft.node.get("command")
    if command is not None and isinstance(command.value, list):
        for index, item in enumerate(command.value):
            problem = _too_long(item.value) if isinstance(item.value, str) else None
            if problem:
                yield _error(item.loc, f"command[{index}]", f"argument {problem} (expected a shorter argument; "
                             "pass large data in a file the agent reads)")
            elif isinstance(item.value, str) and "\0" in item.value:
                yield _error(item.loc, f"command[{index}]", "argument contains a NUL character, which no argument "
                             "can hold (expected text without \\0)")
    env = draft.node.get("env")
    if env is not None and isinstance(env.value, dict):
        for key, item in env.value.items():
            problem = _too_long(f"{key}={item.value}") if isinstance(item.value, str) else None
            if problem:
                yield _error(item.loc, f"env.{key}", f"{key}={{value}} {problem} (expected a shorter value; "
                             "put large data in a file the agent reads)")
            elif isinstance(item.value, str) and "\0" in item.value:
                # any other value reaches the agent byte for byte (its launch file carries it, not supervisord)
                yield _error(item.loc, f"env.{key}", "value contains a NUL character, which no environment can hold "
                             "(expected text without \\0)")
    directory = draft.node.get("directory")
    if directory is not None and isinstance(directory.value, str) and not svsyntax.breaks_line(directory.value):
        problem = svsyntax.value_problem(directory.value)
        if problem:
            yield _error(directory.loc, "directory", f"path {problem} (expected a plain path)")


def secrets_are_marked(draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    """`{secret: false, ...}` is refused (a plain value is written as itself); a secret whose variable is not set
    here is a warning: apply, which reads it, refuses then."""
    env = draft.node.get("env")
    if env is None or not isinstance(env.value, dict):
        return
    for key, item in env.value.items():
        if not isinstance(item.value, dict):
            continue
        secret = item.value.get("secret")
        if secret is not None and secret.value is False:
            yield _error(secret.loc, f"env.{key}.secret", "false is not a secret (expected true; a plain value is "
                         "written as the value itself)")
        source = item.value.get("from_env")
        if source is not None and isinstance(source.value, str) and source.value not in ctx.environ:
            yield Diagnostic(source.loc, f"env.{key}.from_env", f"{source.value} is not set in this environment: "
                             "apply reads the secret from it, and refuses without it", "warning")


def env_file_is_private(draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    value = draft.value("env_file")
    node = draft.node.get("env_file")
    if not value or node is None:
        return
    path = os.path.join(ctx.project_dir, value)
    if ctx.manifests_dir:
        inside = os.path.relpath(os.path.realpath(path), os.path.realpath(ctx.manifests_dir)).split(os.sep)[0]
        if inside in ("agents", "templates", "env"):
            yield _error(node.loc, "env_file", f"{path} is inside manifests/{inside}/, which every version and backup "
                         "copies: its secrets would be kept there (expected a file outside agents/, templates/ and env/)")
            return
    try:
        info = os.stat(path)
    except OSError as exc:
        yield _error(node.loc, "env_file", f"cannot read {path}: {exc.strerror} (expected a file of NAME=VALUE lines)")
        return
    if info.st_mode & 0o077:
        yield _error(node.loc, "env_file", f"{path} has mode {info.st_mode & 0o777:04o}: its values are secrets "
                     "(expected mode 0600: chmod 600 it)")


def run_as_someone(drafts: Sequence[Draft], ctx: Context) -> Iterator[Diagnostic]:
    """Under a root supervisord, an agent without `sandbox.user` runs as `default_user`, or else as root: said
    once for the set (an error at each such agent with `require_user`)."""
    if not ctx.as_root or ctx.settings.default_user:
        return
    rooted = [d for d in drafts if d.name and isinstance(sandbox := d.value("sandbox"), model.Sandbox) and not sandbox.user]
    if not rooted:
        return
    why = ("supervisord runs as root and neither sandbox.user nor default_user (orchestrator.yaml) names a user, so "
           "the agent and everything it starts may change anything on this machine")
    if ctx.settings.require_user:
        for draft in rooted:
            yield _error(draft.name_loc, "sandbox.user", f"would run as root: {why}; require_user is set "
                         "(expected sandbox.user, or default_user for every agent)")
        return
    names = ", ".join(sorted(str(d.name) for d in rooted))
    yield Diagnostic(rooted[0].name_loc, "sandbox.user", f"{len(rooted)} agent(s) will run as root ({names}): {why} "
                     "(set sandbox.user, or default_user for every agent; require_user: true makes this an error)",
                     "warning")


def sandbox_is_possible(draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    """Namespaces (read_only_paths, no_network) need root; a group must exist."""
    sandbox: model.Sandbox | None = draft.value("sandbox")
    if sandbox is None:
        return
    if (sandbox.read_only_paths or sandbox.no_network) and not ctx.as_root:
        key = "read_only_paths" if sandbox.read_only_paths else "no_network"
        node = _child(draft.node, "sandbox", key)
        if node is not None:
            yield _error(node.loc, f"sandbox.{key}", "needs supervisord to run as root, to make the agent's mount "
                         "and network namespaces (expected to run orchestrator as root, or no such sandbox)")
    for index, path in enumerate(sandbox.read_only_paths):
        node = _child(draft.node, "sandbox", "read_only_paths", index)
        if node is not None and not os.path.exists(path):
            yield _error(node.loc, f"sandbox.read_only_paths[{index}]", f"{path} does not exist on this machine "
                         "(expected an existing path to mount read-only)")
    node = _child(draft.node, "sandbox", "group")
    if sandbox.group and node is not None:
        try:
            grp.getgrnam(sandbox.group)
        except KeyError:
            yield _error(node.loc, "sandbox.group", f"group {sandbox.group!r} does not exist on this machine "
                         "(expected an existing group name)")


def user_exists(draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    sandbox: model.Sandbox | None = draft.value("sandbox")
    node = _child(draft.node, "sandbox", "user")
    if sandbox is None or not sandbox.user or node is None:
        return
    try:
        pwd.getpwnam(sandbox.user)
    except KeyError:
        yield _error(node.loc, "sandbox.user", f"user {sandbox.user!r} does not exist on this machine "
                     "(expected an existing user name; supervisord rejects the configuration otherwise)")


def directory_exists(draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    directory = draft.value("directory")
    node = draft.node.get("directory")
    if directory and node is not None and not os.path.isdir(os.path.join(ctx.project_dir, directory)):
        yield Diagnostic(node.loc, "directory", f"{describe(directory)} does not exist on this machine "
                         "(supervisord will fail to start the agent here)", "warning")


def cpus_exist(draft: Draft, ctx: Context) -> Iterator[Diagnostic]:
    resources: model.Resources | None = draft.value("resources")
    if resources is None or not resources.cpu_affinity:
        return
    for index, cpu in enumerate(resources.cpu_affinity):
        if cpu >= ctx.cpu_count:
            node = _child(draft.node, "resources", "cpu_affinity", index)
            have = "CPU 0" if ctx.cpu_count == 1 else f"CPUs 0-{ctx.cpu_count - 1}"
            yield Diagnostic(node.loc if node else draft.node.loc, f"resources.cpu_affinity[{index}]",
                             f"CPU {cpu} does not exist on this machine (it has {have}); kept, since manifests move between machines",
                             "warning")


SET_VALIDATORS: tuple[SetValidator, ...] = (unique_names, known_dependencies, no_cycles, run_as_someone)
AGENT_VALIDATORS: tuple[AgentValidator, ...] = (
    thresholds_in_order, restart_fields_match_policy, probes_are_valid, command_is_runnable,
    values_fit_supervisord, user_exists, directory_exists, cpus_exist, secrets_are_marked, env_file_is_private,
    sandbox_is_possible,
)


def validate_agents(drafts: Sequence[Draft], ctx: Context) -> list[Diagnostic]:
    """Every problem of the set: set-level rules over all drafts, agent rules over the type-valid ones."""
    found: list[Diagnostic] = []
    for set_rule in SET_VALIDATORS:
        found.extend(set_rule(drafts, ctx))
    for draft in drafts:
        for rule in AGENT_VALIDATORS:
            found.extend(rule(draft, ctx))
    return found


def validate_settings(node: Node, values: Mapping[str, Any], *, socket: str, state: str = "") -> list[Diagnostic]:
    """Problems in the settings' fields that passed their type checks; `socket` is the socket's resolved path,
    which must stay inside the resolved state directory `state`."""
    found: list[Diagnostic] = []
    exporter = values.get("exporter")
    if isinstance(exporter, model.Exporter):
        problem = host_port_problem(exporter.listen)
        if problem:
            where = _child(node, "exporter", "listen")
            found.append(_error(where.loc if where else node.loc, "exporter.listen",
                                f"{describe(exporter.listen)} {problem} ({_HOST_PORT} such as 127.0.0.1:9300)"))
        else:
            found.extend(_remote_exporter(node, exporter))
    web = values.get("web")
    if isinstance(web, model.Web):
        found.extend(_web(node, web))
    urls: list[tuple[str, Node | None, str]] = []
    grafana = values.get("grafana")
    if isinstance(grafana, model.Grafana):
        urls.append(("grafana.url", _child(node, "grafana", "url"), grafana.url))
        urls.append(("grafana.prometheus", _child(node, "grafana", "prometheus"), grafana.prometheus))
    notifications = values.get("notifications")
    if isinstance(notifications, tuple):
        for i, target in enumerate(notifications):
            needs, other = ("url", "command") if target.type == "webhook" else ("command", "url")
            if not getattr(target, needs):
                where = _child(node, "notifications", i)
                found.append(_error(where.loc if where else node.loc, f"notifications[{i}]",
                                    f"a {target.type} target needs `{needs}` (expected {needs} set)"))
            elif getattr(target, other):
                where = _child(node, "notifications", i, other)
                found.append(_error(where.loc if where else node.loc, f"notifications[{i}].{other}",
                                    f"a {target.type} target takes no `{other}` (expected type: {other} "
                                    "for it, in a target of its own)"))
        urls += [(f"notifications[{i}].url", _child(node, "notifications", i, "url"), n.url)
                 for i, n in enumerate(notifications) if n.url]
    for key, where, url in urls:
        problem = _url_problem(url)
        if problem:
            found.append(_error(where.loc if where else node.loc, key, f"{describe(url)} {problem} (expected an http:// or https:// URL)"))
    state_dir = values.get("state_dir")
    where = node.get("state_dir")
    if isinstance(state_dir, str) and where is not None:
        problem = svsyntax.value_problem(state_dir)
        if problem:
            found.append(_error(where.loc, "state_dir", f"path {problem} (expected a plain path)"))
    supervisord = values.get("supervisord")
    relative = getattr(supervisord, "socket", None)
    if isinstance(relative, str) and state:
        resolved = os.path.normpath(os.path.join(state, relative))
        if os.path.commonpath([resolved, state]) != state or resolved == state:
            where = _child(node, "supervisord", "socket") or node
            found.append(_error(where.where, "supervisord.socket",
                                f"{describe(relative)} leaves the state directory "
                                "(expected a file name inside it, such as supervisor.sock)"))
    if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        where = _child(node, "supervisord", "socket") or node.get("state_dir") or node
        found.append(_error(where.where, "supervisord.socket",
                            f"the socket path {socket} is {len(os.fsencode(socket))} bytes, longer than the {MAX_SOCKET_PATH} "
                            "a unix socket allows (expected a shorter state directory or socket name)"))
    return found


def _remote_exporter(node: Node, exporter: model.Exporter) -> list[Diagnostic]:
    """An exporter listening beyond loopback shows every agent's figures to the network: only when asked for,
    and then with a warning."""
    host, _ = split_host_port(exporter.listen)
    if is_loopback(host):
        return []
    where = _child(node, "exporter", "listen")
    loc = where.loc if where else node.loc
    if not exporter.allow_remote:
        return [_error(loc, "exporter.listen", f"{describe(exporter.listen)} is not a loopback address (expected 127.0.0.1:PORT, "
                                               "or set exporter.allow_remote: true to listen beyond this machine)")]
    return [Diagnostic(loc, "exporter.listen", f"{describe(exporter.listen)} is not a loopback address: "
                                               "the metrics of every agent are readable from the network", "warning")]


def _web(node: Node, web: model.Web) -> list[Diagnostic]:
    """The control room's address (loopback unless `allow_remote`, and then with a warning) and its users (each once)."""
    where = _child(node, "web", "listen")
    loc = where.loc if where else node.loc
    problem = host_port_problem(web.listen)
    if problem:
        return [_error(loc, "web.listen", f"{describe(web.listen)} {problem} ({_HOST_PORT} such as 127.0.0.1:9400)")]
    found: list[Diagnostic] = []
    if not is_loopback(split_host_port(web.listen)[0]):
        found.append(_error(loc, "web.listen", f"{describe(web.listen)} is not a loopback address (expected 127.0.0.1:PORT, "
                                               "or set web.allow_remote: true to serve the control room beyond this machine)")
                     if not web.allow_remote else
                     Diagnostic(loc, "web.listen", f"{describe(web.listen)} is not a loopback address: the control room is "
                                                   "reachable from the network (put TLS in front of it)", "warning"))
    seen: set[str] = set()
    for i, user in enumerate(web.users):
        if user.name in seen:
            at = _child(node, "web", "users", i, "name")
            found.append(_error(at.loc if at else loc, f"web.users[{i}].name",
                                f"user {user.name!r} is listed twice (expected each user once, with one role)"))
        seen.add(user.name)
    return found


# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def split_command(text: str) -> tuple[str, ...]:
    """A command written as one string, split like a POSIX shell would (ValueError on a stray quote)."""
    return tuple(shlex.split(text))
