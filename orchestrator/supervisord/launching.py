"""Launch files: what the launcher (host.launcher) is told for each agent, rendered beside its program section.

Owned here: the content of an agent's launch file (its command, its exact
environment with its secrets, its limits, its sandbox), the file's name (the
agent's name and a digest of that content, so a change of any of it is a new
file named in a changed program section: a restart the plan shows), the live
controls file beside it (`NAME.controls`: model.LIVE_RESOURCES, changed
without a restart), the reading of secrets (from apply's environment or an
`env_file`), and the state directory's launch key.

Secrets never enter a version: the history keeps the manifests (where a
secret is only `{secret: true, from_env: NAME}`) and the rendered sections
(which name the launch file, not its content). The launch files themselves
are written, mode 0600, only into `STATE/launch/` (state.history, at record).
The digest of a launch file covers a secret through an HMAC under the
state directory's key (`STATE/launch/key`, 0600, made on first use): a
changed secret is a changed file, and the digest, which the rendered
configuration shows, tells nothing of the value.

Called by the renderer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import marshal
import os
import secrets as random
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.core.model import LIVE_RESOURCES, Agent, ManifestSet
from orchestrator.core.names import LAUNCH_DIR, TMP_DIR

KEY_FILE = "key"
ENV_FILE_MODES = 0o077   # an env_file any other user may read, write or run is refused


@dataclass(frozen=True)
class Launch:
    """One agent's launch: its file (relative to the state directory) and content, and its controls file's."""

    path: str
    content: bytes            # `encode`d
    controls_path: str
    controls: bytes
    problems: tuple[str, ...] = ()   # secrets that could not be read: apply refuses to write such a launch


def encode(data: dict[str, Any]) -> bytes:
    """A launch or controls file's bytes: the dict marshalled (the launcher reads it with the interpreter's own
    `marshal`, at every start of every agent: the json module alone would double what its start costs).
    Read one with `python -c "import marshal, pprint, sys; pprint.pprint(marshal.load(open(sys.argv[1], 'rb')))" F`."""
    return marshal.dumps(dict(sorted(data.items())))


def decode(data: bytes) -> dict[str, Any]:
    """What `encode` wrote."""
    value = marshal.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a launch or controls file")
    return value


def scope(state_dir: str) -> str:
    """The cgroups' scope of a state directory: two projects (or two test runs) on one host never share one."""
    return hashlib.sha256(os.path.abspath(state_dir).encode("utf-8")).hexdigest()[:12]


def key(state_dir: str, *, create: bool) -> bytes:
    """The state directory's launch key, made (0600) the first time a set with secrets asks for it (`create`);
    empty while there is none (a digest without secrets does not depend on it)."""
    directory = os.path.join(state_dir, LAUNCH_DIR)
    path = os.path.join(directory, KEY_FILE)
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        if not create:
            return b""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:   # made by another command in the meantime: its key is the key
        with open(path, "rb") as handle:
            return handle.read()
    value = random.token_bytes(32)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
        handle.flush()
        os.fsync(handle.fileno())
    return value


def read_env_file(path: str) -> dict[str, str]:
    """NAME=VALUE lines (blank lines and # comments skipped; the value is the rest of the line, as it is)."""
    info = os.stat(path)
    if info.st_mode & ENV_FILE_MODES:
        raise ValueError(f"{path} has mode {stat.S_IMODE(info.st_mode):04o}: an env_file holds secrets and must not "
                         "be readable by others (chmod 600)")
    values = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle.read().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, value = line.partition("=")
            if not sep or not name.strip().isidentifier():
                raise ValueError(f"{path}:{number}: expected NAME=VALUE")
            values[name.strip()] = value
    return values


def secret_values(agent: Agent, project_dir: str, environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The agent's secret values (env_file first, then each `from_env`), and what could not be read."""
    values: dict[str, str] = {}
    problems = []
    if agent.env_file:
        path = os.path.join(project_dir, agent.env_file)
        try:
            values.update(read_env_file(path))
        except (OSError, ValueError) as exc:
            problems.append(f"env_file: {exc}")
    for name, secret in agent.secrets.items():
        value = environ.get(secret.from_env)
        if value is None:
            problems.append(f"env.{name}: {secret.from_env} is not set in the environment of this command "
                            "(secrets are read from it when a launch is written: export it, then run again)")
        else:
            values[name] = value
    return values, problems


def controls(agent: Agent) -> dict[str, Any]:
    resources = agent.resources
    return {name: (list(value) if isinstance(value, tuple) else value)
            for name in LIVE_RESOURCES if (value := getattr(resources, name)) is not None}


def launch(agent: Agent, manifests: ManifestSet, state_dir: str, *, argv: list[str], key_bytes: bytes,
           environ: Mapping[str, str]) -> Launch:
    """The launch of `agent`, its command `argv` (templates rendered), in `state_dir`."""
    hidden, problems = secret_values(agent, manifests.project_dir, environ)
    sandbox, resources = agent.sandbox, agent.resources
    user = sandbox.user or (manifests.settings.default_user if os.geteuid() == 0 else None)
    controls_path = os.path.join(LAUNCH_DIR, f"{agent.name}.controls")
    spec: dict[str, Any] = {
        "agent": agent.name,
        "argv": argv,
        "env": dict(agent.env),
        "scope": scope(state_dir),
        "controls": os.path.join(state_dir, controls_path),
        "user": user,
        "group": sandbox.group,
        "umask": sandbox.umask or "022",
        "open_files": resources.open_files,
        "core_dumps": resources.core_dumps,
        "oom_score_adj": resources.oom_score_adj,
        "private_tmp": os.path.join(state_dir, TMP_DIR, agent.name) if sandbox.private_tmp else None,
        "read_only_paths": list(sandbox.read_only_paths),
        "no_network": sandbox.no_network,
        "pdeathsig": shutil.which("setpriv"),   # util-linux's: see host.launcher
    }
    # the digest sees a secret through its HMAC only: the file's name, in the rendered configuration, says nothing of it
    public = {**spec, "secrets": {name: hmac.new(key_bytes, value.encode("utf-8"), "sha256").hexdigest()
                                  for name, value in sorted(hidden.items())}, "unread": sorted(problems)}
    digest = hashlib.sha256(json.dumps(public, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    spec["env"].update(hidden)   # a secret of the same name wins over a plain value
    return Launch(path=os.path.join(LAUNCH_DIR, f"{agent.name}-{digest}.launch"),
                  content=encode(spec), controls_path=controls_path, controls=encode(controls(agent)),
                  problems=tuple(problems))
