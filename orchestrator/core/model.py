"""The typed, immutable model of a manifest set: what every other layer reads.

Owned here: the frozen dataclasses an `Agent`, its probes, restart policy,
resources and the global `Settings` are made of. Built only by `manifest`
(through the declarations in `schema`), after validation; nothing here parses
or checks input. Standard library only, so every layer may import it.

Durations are float seconds, sizes int bytes, lists tuples and maps read-only
mappings sorted by key, so two loads of the same manifests compare equal.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from collections.abc import Mapping

from orchestrator.core.errors import Diagnostic, Location

ProbeKind = Literal["tcp", "http", "exec"]
RestartPolicyName = Literal["immediate", "delayed", "exponential-backoff", "manual"]
DependencyFailure = Literal["restart", "stop", "ignore"]

RESTART_POLICIES: tuple[str, ...] = ("immediate", "delayed", "exponential-backoff", "manual")
LIMIT_ACTIONS: tuple[str, ...] = ("restart", "stop", "alert")   # resources.on_limit
DEPENDENCY_FAILURE_ACTIONS: tuple[str, ...] = ("restart", "stop", "ignore")
STOP_SIGNALS: tuple[str, ...] = ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")

EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return EMPTY


@dataclass(frozen=True)
class Probe:
    """A readiness or liveness check: exactly one of `tcp`, `http`, `exec` is set."""

    tcp: str | None = None
    http: str | None = None
    exec: tuple[str, ...] | None = None
    timeout: float = 10.0
    period: float = 1.0
    failures: int = 3
    retries: int = 0
    initial_delay: float = 0.0

    @property
    def kind(self) -> ProbeKind:
        if self.tcp is not None:
            return "tcp"
        if self.http is not None:
            return "http"
        return "exec"

    @property
    def target(self) -> str:
        if self.exec is not None:
            return " ".join(self.exec)
        return self.tcp or self.http or ""


@dataclass(frozen=True)
class RestartPolicy:
    policy: str = "exponential-backoff"
    delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.0
    max_attempts: int = 5
    window: float = 600.0
    reset_after: float = 300.0
    exit_codes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Thresholds:
    """warning < critical < limit; any may be absent. `limit` is enforced, the others alert (see core.alerts)."""

    warning: float | None = None
    critical: float | None = None
    limit: float | None = None
    for_seconds: float = 0.0    # `for` in a manifest: how long a value stays above a level before it fires
    hysteresis: float = 0.1     # a firing level resolves below (1 - hysteresis) x itself


@dataclass(frozen=True)
class Resources:
    cpu_percent: Thresholds = field(default_factory=Thresholds)
    memory_mb: Thresholds = field(default_factory=Thresholds)
    open_fds: Thresholds = field(default_factory=Thresholds)
    on_limit: str = "restart"   # what a reached limit does: restart, stop, or alert only
    open_files: int | None = None
    nice: int | None = None
    cpu_affinity: tuple[int, ...] | None = None
    warmup: float = 30.0
    cooldown: float = 60.0
    # kernel-enforced, each process in a cgroup of its own (host.cgroups); applied by the launcher before the
    # agent's code runs. nice, cpu_affinity and these four change on a running agent without a restart (LIVE)
    max_processes: int | None = None    # pids.max: forks beyond it fail
    memory_max: int | None = None       # bytes: allocations beyond it fail, or the kernel kills inside the cgroup
    memory_high: int | None = None      # bytes: above it the kernel throttles and reclaims (cgroup v2)
    cpu_max: float | None = None        # cores: a quota (0.5 = half of one core)
    core_dumps: bool | None = None      # RLIMIT_CORE: false 0, true unlimited; None inherits
    oom_score_adj: int | None = None    # -1000..1000


# resources a running agent takes without a restart (apply writes them beside the launch file and applies them
# to its processes); the others are read by the launcher once, at its start
LIVE_RESOURCES: tuple[str, ...] = ("nice", "cpu_affinity", "max_processes", "memory_max", "memory_high", "cpu_max")


@dataclass(frozen=True)
class Sandbox:
    user: str | None = None
    group: str | None = None
    umask: str | None = None
    private_tmp: bool = False                   # a temporary directory of its own as TMPDIR, removed after it stops
    read_only_paths: tuple[str, ...] = ()       # mounted read-only for the agent (a mount namespace of its own)
    no_network: bool = False                    # a network namespace of its own: loopback only, and down


@dataclass(frozen=True)
class Secret:
    """An environment value kept off disk: read when a launch file is written, never stored in a version."""

    from_env: str                               # the variable of apply's own environment it is read from


@dataclass(frozen=True)
class Logs:
    max_bytes: int = 50 * 1000 * 1000
    backups: int = 5


@dataclass(frozen=True)
class Agent:
    """One long-running agent: a supervisord program of `replicas` processes."""

    name: str
    command: tuple[str, ...]
    depends_on: tuple[str, ...] = ()
    priority: int = 100
    replicas: int = 1
    env: Mapping[str, str] = field(default_factory=_empty)
    secrets: Mapping[str, Secret] = field(default_factory=_empty)   # env values marked secret (by name)
    env_file: str | None = None     # a 0600 file of NAME=VALUE lines, every value secret (relative: to the project)
    vars: Mapping[str, Any] = field(default_factory=_empty)
    directory: str | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    on_dependency_failure: str = "restart"
    resources: Resources = field(default_factory=Resources)
    sandbox: Sandbox = field(default_factory=Sandbox)
    min_uptime: float = 1.0
    stop_signal: str = "TERM"
    stop_timeout: float = 10.0
    logs: Logs = field(default_factory=Logs)
    description: str = ""
    extends: str | None = None
    source: Location = field(default=Location(""), compare=False)


@dataclass(frozen=True)
class Supervisord:
    socket: str = "supervisor.sock"
    log_level: str = "info"
    minfds: int = 1024
    minprocs: int = 200


@dataclass(frozen=True)
class Exporter:
    listen: str = "127.0.0.1:9300"
    interval: float = 5.0
    enabled: bool = True
    allow_remote: bool = False   # an address other than loopback must be asked for
    pss: bool = False            # PSS and USS (smaps_rollup): exact shared memory, at a cost per process
    horizon: float = 3600.0      # how far ahead forecasts look: PREDICTED fires for a limit reached within it


@dataclass(frozen=True)
class Notification:
    """Where alerts are sent: a webhook (a JSON POST) or a command (the same JSON on its stdin)."""

    name: str
    url: str = ""                      # type webhook
    command: tuple[str, ...] = ()      # type command
    type: str = "webhook"
    min_severity: str = "warning"      # the lowest severity sent (see SEVERITIES)


SEVERITIES: tuple[str, ...] = ("warning", "predicted", "critical", "emergency")   # lowest first


@dataclass(frozen=True)
class Grafana:
    """Where Grafana is (apply's annotations, `grafana push`), and what the generated objects are called there."""

    url: str = "http://127.0.0.1:3000"
    folder: str = "Orchestrator"
    datasource: str = "Prometheus"
    prometheus: str = "http://127.0.0.1:9090"   # the Prometheus the data source reads, as Grafana reaches it


@dataclass(frozen=True)
class WebUser:
    """Who may use the control room (`orchestrator web`), with what role: a viewer sees, an operator also acts."""

    name: str
    role: str = "viewer"               # one of WEB_ROLES


WEB_ROLES: tuple[str, ...] = ("viewer", "operator")


@dataclass(frozen=True)
class Web:
    """The control room's settings: where it listens, and its users (each with a token of its own)."""

    listen: str = "127.0.0.1:9400"
    allow_remote: bool = False         # an address other than loopback must be asked for
    users: tuple[WebUser, ...] = (WebUser("operator", "operator"),)


@dataclass(frozen=True)
class HistorySettings:
    keep: int = 50               # the newest versions kept (besides tagged ones, the live one and the last applied one)


@dataclass(frozen=True)
class ApplySettings:
    rollback_on_failure: bool = False   # the default of `apply --rollback-on-failure`


@dataclass(frozen=True)
class Settings:
    """The global settings of `orchestrator.yaml` (with the environment overlay applied)."""

    project: str = "orchestrator"
    state_dir: str = "../.orchestrator"
    supervisord: Supervisord = field(default_factory=Supervisord)
    exporter: Exporter = field(default_factory=Exporter)
    notifications: tuple[Notification, ...] = ()
    grafana: Grafana | None = None     # None: no `grafana` in orchestrator.yaml (apply posts no annotation)
    defaults: Mapping[str, Any] = field(default_factory=_empty)
    history: HistorySettings = field(default_factory=HistorySettings)
    apply: ApplySettings = field(default_factory=ApplySettings)
    web: Web | None = None             # None: no `web` in orchestrator.yaml (`orchestrator web` uses Web())
    default_user: str | None = None    # when supervisord runs as root: the user of an agent without sandbox.user
    require_user: bool = False         # when supervisord runs as root: an agent must run as some user


# A stored copy of a manifest set (history's `manifests/` of a version) holds this file, naming the
# manifests directory it was copied from and that directory's project root. history writes it when it
# stores a version; the loader reads it when present, so the copy loads as the set it was taken from.
ORIGIN_FILE = ".orchestrator-origin.json"


@dataclass(frozen=True)
class ManifestSet:
    """A whole, valid manifest set: settings and agents sorted by name.

    `manifests_dir` is where the files were read; `origin_dir` the manifests
    directory the set stands for, and `project_dir` the project root: where
    agents' relative paths resolve, and what the `manifests_dir` and
    `project_dir` template values, the rendered configuration and the
    markers of running processes name. For a live set `origin_dir` is
    `manifests_dir` and `project_dir` its parent; for a stored copy (see
    ORIGIN_FILE) they are those of the set it was copied from. The loader sets
    them once; everything else reads them and never derives them again. Left
    empty (a set built by hand), they take the live defaults.
    """

    settings: Settings
    agents: tuple[Agent, ...]
    manifests_dir: str
    state_dir: str
    env: str | None = None
    warnings: tuple[Diagnostic, ...] = ()
    origin_dir: str = ""
    project_dir: str = ""

    def __post_init__(self) -> None:
        if not self.origin_dir:
            object.__setattr__(self, "origin_dir", self.manifests_dir)
        if not self.project_dir:
            object.__setattr__(self, "project_dir", posixpath.dirname(self.origin_dir))

    def agent(self, name: str) -> Agent:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.agents)


# --- plain-data form, for versions on disk and the boot listener ---------------

def kept_settings(manifests: ManifestSet) -> dict[str, Any]:
    """What a version keeps of the settings, beside its agents, for the daemons that read them (the exporter's
    forecast horizon, the notification targets of both daemons, the control room run under supervisord), as
    JSON-ready data: a change of any of them is a change `plan` shows and apply records, though no agent restarts."""
    settings = manifests.settings
    return {"project": settings.project, "notifications": to_plain(settings.notifications),
            "exporter": to_plain(settings.exporter), "web": to_plain(settings.web)}


def to_plain(value: Any) -> Any:
    """`value` (a model object) as JSON-ready data: dataclasses as dicts, tuples as lists."""
    if hasattr(value, "__dataclass_fields__"):
        return {f: to_plain(getattr(value, f)) for f in value.__dataclass_fields__}
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    return value


def _tuple(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def agent_from_plain(data: Mapping[str, Any]) -> Agent:
    """The Agent that `to_plain` turned into `data`."""
    def probe(d: Mapping[str, Any] | None) -> Probe | None:
        return None if d is None else Probe(**{**d, "exec": _tuple(d.get("exec"))})

    resources = data["resources"]
    restart = data["restart"]
    return Agent(**{
        **data,
        "command": tuple(data["command"]),
        "depends_on": tuple(data["depends_on"]),
        "env": MappingProxyType(dict(data["env"])),
        "secrets": MappingProxyType({k: Secret(**v) for k, v in data.get("secrets", {}).items()}),
        "vars": MappingProxyType(dict(data["vars"])),
        "readiness": probe(data.get("readiness")),
        "liveness": probe(data.get("liveness")),
        "restart": RestartPolicy(**{**restart, "exit_codes": tuple(restart["exit_codes"])}),
        "resources": Resources(**{**resources, "cpu_percent": Thresholds(**resources["cpu_percent"]),
                                  "memory_mb": Thresholds(**resources["memory_mb"]),
                                  "open_fds": Thresholds(**resources.get("open_fds", {})),
                                  "cpu_affinity": _tuple(resources.get("cpu_affinity"))}),
        "sandbox": Sandbox(**{**data["sandbox"], "read_only_paths": tuple(data["sandbox"].get("read_only_paths", ()))}),
        "logs": Logs(**data["logs"]),
        "source": Location(**data["source"]),
    })
