"""The manifest's fields: names, types, defaults and documentation, declared once.

Owned here: the `Record` declarations of an agent manifest, an `extends`
template, `orchestrator.yaml` and an environment overlay, and their export as
JSON Schema (draft-07, what yaml-language-server reads) for `orchestrator schema`.
Called by `manifest` (checking and building the model) and `cli` (schema).
Cross-field rules (threshold order, policy fields, probes, dependencies) are
the named validators of `validators`.
"""

from __future__ import annotations

from typing import Any

from orchestrator.core import model
from orchestrator.config.spec import (
    AnyMapping, AnyValue, Bool, Duration, Enum, Field, Int, ListOf, MapOf, Number, OneOf, Record, Size, Spec, Str,
)

AGENT_NAME = r"[a-z0-9][a-z0-9_-]{0,62}"
AGENT_NAME_WHAT = "a name of lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters"
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"

_name = Str(what=AGENT_NAME_WHAT, pattern=AGENT_NAME)
_command = OneOf(
    # an argument may hold any text but NUL (validators): the launch file carries it, not supervisord
    options=((list, ListOf(Str(numbers=True, multiline=True), min_items=1)), (str, Str())),
    what="a list of strings (program and arguments), or one string split like a shell would",
)


def _probe(*, liveness: bool) -> Record:
    fields = {
        "tcp": Field(Str(what="HOST:PORT"), "connect to this HOST:PORT; ready once it accepts"),
        "http": Field(Str(what="an http:// or https:// URL"), "GET this URL; ready on a 2xx or 3xx answer"),
        "exec": Field(ListOf(Str(numbers=True), min_items=1), "run this command; ready when it exits 0"),
        "timeout": Field(Duration(min=0.001),
                         "how long one check may take" if liveness else "how long to wait for readiness before the start fails",
                         default=2.0 if liveness else 30.0),
        "period": Field(Duration(min=0.01), "time between checks", default=10.0 if liveness else 0.25),
        "initial_delay": Field(Duration(), "wait this long after start before the first check", default=0.0),
    }
    if liveness:
        fields["failures"] = Field(Int(min=1), "consecutive failed checks before the agent is restarted", default=3)
    else:
        fields["retries"] = Field(Int(min=0, max=100), "times a start that never became ready is retried before apply fails", default=0)

    def build(**values: Any) -> model.Probe:
        return model.Probe(**values)

    return Record(fields=fields, build=build, what="a probe mapping with one of tcp, http, exec",
                  doc="liveness probe" if liveness else "readiness probe")


_thresholds = Record(
    fields={
        "warning": Field(Number(min=0), "alert at warning severity above this"),
        "critical": Field(Number(min=0), "alert at critical severity above this"),
        "limit": Field(Number(min=0, exclusive_min=True), "enforced (resources.on_limit): the agent is restarted at this"),
        "for": Field(Duration(), "a level fires only after the value stays at or above it this long", default=0.0),
        "hysteresis": Field(Number(min=0, max=0.9), "a firing level resolves below itself less this fraction of it",
                            default=0.1),
    },
    build=lambda **values: model.Thresholds(**{k: v for k, v in values.items() if k != "for"}, for_seconds=values["for"]),
    what="a mapping of warning, critical, limit",
)

RESTART = Record(
    fields={
        "policy": Field(Enum(choices=model.RESTART_POLICIES, noun="policy"), "how a crashed agent is restarted",
                        default="exponential-backoff"),
        "delay": Field(Duration(), "delay before a restart (exponential-backoff: the first delay)", default=1.0),
        "multiplier": Field(Number(min=1), "exponential-backoff: each delay is the previous times this", default=2.0),
        "max_delay": Field(Duration(), "exponential-backoff: the longest delay", default=60.0),
        "jitter": Field(Number(min=0, max=1), "exponential-backoff: random spread of each delay, as a fraction", default=0.0),
        "max_attempts": Field(Int(min=1), "restarts allowed within `window` before the agent is given up", default=5),
        "window": Field(Duration(min=0.001), "the time window that max_attempts counts in", default=600.0),
        "reset_after": Field(Duration(), "stable uptime after which the restart count starts again", default=300.0),
        "exit_codes": Field(ListOf(Int(min=0, max=255), unique=True), "exit codes that are expected and not failures", default=()),
    },
    build=model.RestartPolicy,
    what="a restart mapping",
)

# Fields of `restart` that only some policies use; the others are errors.
POLICY_FIELDS: dict[str, frozenset[str]] = {
    "immediate": frozenset({"max_attempts", "window", "reset_after", "exit_codes"}),
    "delayed": frozenset({"delay", "max_attempts", "window", "reset_after", "exit_codes"}),
    "exponential-backoff": frozenset(RESTART.fields) - {"policy"},
    "manual": frozenset({"exit_codes"}),
}

_resources = Record(
    fields={
        "cpu_percent": Field(_thresholds, "CPU use in percent of one core", default=model.Thresholds()),
        "memory_mb": Field(_thresholds, "resident memory in MB (all replicas' processes count alone)", default=model.Thresholds()),
        "open_fds": Field(_thresholds, "open file descriptors of the agent's processes", default=model.Thresholds()),
        "on_limit": Field(Enum(choices=model.LIMIT_ACTIONS, noun="action"),
                          "what a reached limit does: restart (through the restart policy), stop, or alert only",
                          default="restart"),
        "open_files": Field(Int(min=1), "limit on open file descriptors (RLIMIT_NOFILE)"),
        "nice": Field(Int(min=-20, max=19), "scheduling niceness (changed live)"),
        "cpu_affinity": Field(ListOf(Int(min=0), min_items=1, unique=True), "CPUs the agent may run on (changed live)"),
        "max_processes": Field(Int(min=1), "most processes and threads at once (cgroup pids.max; changed live)"),
        "memory_max": Field(Size(), "memory the kernel lets each process's cgroup use: allocations beyond fail or are "
                                    "killed inside it (cgroup memory.max; changed live)"),
        "memory_high": Field(Size(), "memory above which the kernel throttles and reclaims (cgroup v2 memory.high; "
                                     "changed live)"),
        "cpu_max": Field(Number(min=0, exclusive_min=True), "CPU quota in cores, 0.5 = half a core (cgroup cpu.max; "
                                                             "changed live)"),
        "core_dumps": Field(Bool(), "allow core dumps (RLIMIT_CORE unlimited) or forbid them (0)"),
        "oom_score_adj": Field(Int(min=-1000, max=1000), "the kernel OOM killer's preference (-1000 never, 1000 first)"),
        "warmup": Field(Duration(), "after a start, no threshold or liveness action for this long", default=30.0),
        "cooldown": Field(Duration(), "no second automatic action on the agent within this time", default=60.0),
    },
    build=model.Resources,
    what="a resources mapping",
)

_sandbox = Record(
    fields={
        "user": Field(Str(what="a user name", pattern=r"[A-Za-z_][A-Za-z0-9_.-]*\$?"), "run as this user (supervisord must run as root)"),
        "group": Field(Str(what="a group name", pattern=r"[A-Za-z_][A-Za-z0-9_.-]*\$?"), "run with this group (default: the user's)"),
        "umask": Field(Str(what="an octal umask such as \"027\"", pattern=r"0?[0-7]{3}"), "file mode creation mask, octal, quoted"),
        "private_tmp": Field(Bool(), "a temporary directory of its own as TMPDIR, removed after the agent stops",
                             default=False),
        "read_only_paths": Field(ListOf(Str(what="an absolute path", pattern=r"/.*"), unique=True),
                                 "paths the agent sees read-only (a mount namespace of its own)", default=()),
        "no_network": Field(Bool(), "no network: a network namespace of its own with loopback down", default=False),
    },
    build=model.Sandbox,
    what="a sandbox mapping",
)

_env_value = Str(numbers=True, multiline=True)   # any text: the launch file carries it, not supervisord


def _build_secret(*, secret: bool, from_env: str) -> model.Secret:
    return model.Secret(from_env=from_env)


_secret = Record(
    fields={
        "secret": Field(Bool(), "true: the value is kept off disk (false is refused: write a plain value instead)",
                        required=True),
        "from_env": Field(Str(what="an environment variable name", pattern=ENV_NAME),
                          "the variable of apply's environment the value is read from", required=True),
    },
    build=_build_secret,
    what="a secret mapping",
)

_logs = Record(
    fields={
        "max_bytes": Field(Size(), "rotate a log file when it reaches this size", default=model.Logs.max_bytes),
        "backups": Field(Int(min=0, max=1000), "rotated log files kept", default=model.Logs.backups),
    },
    build=model.Logs,
    what="a logs mapping",
)


def _agent_fields(*, template: bool) -> dict[str, Field]:
    return {
        "name": Field(_name, "the agent's name, unique in the manifest set", required=not template),
        "description": Field(Str(), "what the agent does", default=""),
        "extends": Field(Str(what="the name of a file in templates/ without .yaml", pattern=AGENT_NAME),
                         "inherit fields from templates/NAME.yaml"),
        "command": Field(_command, "program and arguments; Jinja templates allowed", required=not template),
        "vars": Field(MapOf(AnyValue(), key_pattern=r"[A-Za-z_][A-Za-z0-9_]*", key_what="an identifier"),
                      "values for templates, as {{ vars.NAME }}", default=model.EMPTY),
        "depends_on": Field(ListOf(Str(what="an agent name"), unique=True), "agents that must be ready before this one starts", default=()),
        "priority": Field(Int(min=0, max=999), "order among agents of one dependency level; lower first", default=100),
        "replicas": Field(Int(min=1, max=1000), "number of processes (supervisord numprocs)", default=1),
        "env": Field(MapOf(OneOf(options=((str, _env_value), (int, _env_value), (float, _env_value),
                                          (dict, _secret)), what="a string or {secret: true, from_env: NAME}"),
                           key_pattern=ENV_NAME, key_what="an environment variable name"),
                     "environment variables, passed byte for byte; {secret: true, from_env: NAME} reads one from "
                     "apply's environment and keeps it off disk", default=model.EMPTY),
        "env_file": Field(Str(what="a file path"), "a file of NAME=VALUE lines, mode 0600, every value secret "
                                                   "(relative: to the project directory)"),
        "directory": Field(Str(what="a directory path"), "working directory (relative paths: to the project directory)"),
        "readiness": Field(_probe(liveness=False), "when the agent counts as ready; without it: RUNNING after min_uptime"),
        "liveness": Field(_probe(liveness=True), "checked while the agent runs; failing it restarts the agent"),
        "restart": Field(RESTART, "restart policy", default=model.RestartPolicy()),
        "on_dependency_failure": Field(Enum(choices=model.DEPENDENCY_FAILURE_ACTIONS, noun="action"),
                                       "what this agent does when a dependency stops being ready", default="restart"),
        "resources": Field(_resources, "resource thresholds and limits", default=model.Resources()),
        "sandbox": Field(_sandbox, "user, group, umask, private /tmp, read-only paths, no network", default=model.Sandbox()),
        "min_uptime": Field(Duration(), "uptime after which a start counts as successful (supervisord startsecs)", default=1.0),
        "stop_signal": Field(Enum(choices=model.STOP_SIGNALS, noun="signal"), "signal that asks the agent to stop", default="TERM"),
        "stop_timeout": Field(Duration(), "time between the stop signal and SIGKILL", default=10.0),
        "logs": Field(_logs, "log rotation", default=model.Logs()),
    }


def _build_agent(**values: Any) -> dict[str, Any]:
    return values  # `manifest` adds the source location and builds the Agent


AGENT = Record(fields=_agent_fields(template=False), build=_build_agent, what="an agent mapping",
               doc="An orchestrator agent manifest (agents/NAME.yaml)")
TEMPLATE = Record(fields={k: v for k, v in _agent_fields(template=True).items() if k != "name"},
                  build=_build_agent, what="a template mapping",
                  doc="An orchestrator agent template (templates/NAME.yaml), extended by agents")

_settings_fields: dict[str, Field] = {
    "project": Field(Str(what=AGENT_NAME_WHAT, pattern=AGENT_NAME), "the project's name", default="orchestrator"),
    "state_dir": Field(Str(what="a directory path"), "rendered config, socket, logs, history (relative: to the manifests directory)",
                       default=model.Settings.state_dir),
    "supervisord": Field(Record(fields={
        "socket": Field(Str(what="a file path"), "unix socket (relative: to the state directory); mode 0700", default="supervisor.sock"),
        "log_level": Field(Enum(choices=("critical", "error", "warn", "info", "debug", "trace", "blather"), noun="log level"),
                           "supervisord's log level", default="info"),
        "minfds": Field(Int(min=64), "file descriptors supervisord needs", default=1024),
        "minprocs": Field(Int(min=1), "processes supervisord needs", default=200),
    }, build=model.Supervisord, what="a supervisord mapping"), "supervisord settings", default=model.Supervisord()),
    "exporter": Field(Record(fields={
        "listen": Field(Str(what="HOST:PORT"), "where the metrics exporter listens", default="127.0.0.1:9300"),
        "interval": Field(Duration(min=0.1), "sampling interval", default=5.0),
        "enabled": Field(Bool(), "run the exporter under supervisord", default=True),
        "allow_remote": Field(Bool(), "allow a listen address other than loopback", default=False),
        "pss": Field(Bool(), "also sample PSS and USS (costs a read of smaps_rollup per process)", default=False),
        "horizon": Field(Duration(min=1.0), "how far ahead forecasts of memory and open files look (PREDICTED)",
                         default=3600.0),
    }, build=model.Exporter, what="an exporter mapping"), "metrics exporter", default=model.Exporter()),
    "notifications": Field(ListOf(Record(fields={
        "name": Field(Str(), "target name", required=True),
        "type": Field(Enum(choices=("webhook", "command"), noun="type"), "kind of target", default="webhook"),
        "url": Field(Str(what="an http:// or https:// URL"), "webhook: where alerts are posted (JSON)", default=""),
        "command": Field(ListOf(Str(), min_items=1), "command: run with the alert as JSON on its stdin", default=()),
        "min_severity": Field(Enum(choices=model.SEVERITIES, noun="severity"), "lowest severity sent", default="warning"),
    }, build=lambda **values: model.Notification(**{**values, "command": tuple(values["command"])}),
        what="a notification mapping")), "alert notification targets", default=()),
    "grafana": Field(Record(fields={
        "url": Field(Str(what="an http:// or https:// URL"), "Grafana's address", default="http://127.0.0.1:3000"),
        "folder": Field(Str(), "dashboard folder", default="Orchestrator"),
        "datasource": Field(Str(), "Prometheus datasource name", default="Prometheus"),
        "prometheus": Field(Str(what="an http:// or https:// URL"), "the Prometheus the datasource reads, as Grafana reaches it",
                            default="http://127.0.0.1:9090"),
    }, build=model.Grafana, what="a grafana mapping"), "Grafana settings (apply annotates Grafana when set)", default=None),
    "default_user": Field(Str(what="a user name", pattern=r"[A-Za-z_][A-Za-z0-9_.-]*\$?"),
                          "when supervisord runs as root: the user of an agent without sandbox.user"),
    "require_user": Field(Bool(), "when supervisord runs as root: refuse an agent that would run as root", default=False),
    "defaults": Field(AnyMapping(what="a mapping of agent fields"), "agent fields every agent inherits (below any template)",
                      default=model.EMPTY),
    "history": Field(Record(fields={
        "keep": Field(Int(min=1), "the newest versions kept (tagged ones, the live one and the last applied one always are)",
                      default=model.HistorySettings.keep),
    }, build=model.HistorySettings, what="a history mapping"), "versions kept", default=model.HistorySettings()),
    "apply": Field(Record(fields={
        "rollback_on_failure": Field(Bool(), "roll back to the last applied version when an agent apply changed is not ready",
                                     default=model.ApplySettings.rollback_on_failure),
    }, build=model.ApplySettings, what="an apply mapping"), "apply's defaults", default=model.ApplySettings()),
    "web": Field(Record(fields={
        "listen": Field(Str(what="HOST:PORT"), "where the control room (`orchestrator web`) listens", default=model.Web.listen),
        "allow_remote": Field(Bool(), "allow a listen address other than loopback", default=False),
        "users": Field(ListOf(Record(fields={
            "name": Field(Str(what="a user name", pattern=AGENT_NAME), "who (named in the audit log)", required=True),
            "role": Field(Enum(choices=model.WEB_ROLES, noun="role"), "viewer: sees; operator: also acts", default="viewer"),
        }, build=model.WebUser, what="a web user mapping"), min_items=1), "the users, each with a token of its own",
            default=model.Web().users),
    }, build=lambda **values: model.Web(**{**values, "users": tuple(values["users"])}), what="a web mapping"),
        "the control room: web page and JSON API", default=None),
}

SETTINGS = Record(fields=_settings_fields, build=model.Settings, what="a settings mapping",
                  doc="orchestrator.yaml: global settings of a manifest set")

ENV_OVERLAY = Record(
    fields={
        "settings": Field(AnyMapping(what="a settings mapping"), "merged over orchestrator.yaml"),
        "agents": Field(MapOf(AnyMapping(what="an agent mapping"), key_pattern=AGENT_NAME, key_what="an agent name"),
                        "per agent, merged over its manifest"),
    },
    what="an environment overlay mapping",
    doc="env/NAME.yaml: an environment overlay, selected with --env NAME",
)

KINDS: dict[str, Record] = {"agent": AGENT, "template": TEMPLATE, "settings": SETTINGS, "env": ENV_OVERLAY}


def json_schema(kind: str = "agent") -> dict[str, Any]:
    """The JSON Schema (draft-07) of one kind of manifest file."""
    record: Spec = KINDS[kind]
    schema = record.json_schema()
    if kind == "agent":
        # An agent may inherit its command through `extends`: only one without it must say it.
        schema["required"] = [k for k in schema["required"] if k != "command"]
        schema["if"] = {"not": {"required": ["extends"]}}
        schema["then"] = {"required": ["command"]}
    return {"$schema": "http://json-schema.org/draft-07/schema#",
            "$id": f"https://orchestrator.invalid/schema/{kind}.json",
            "title": f"orchestrator {kind} manifest", **schema}
