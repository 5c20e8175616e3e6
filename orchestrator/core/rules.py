"""Prometheus alerting rules built from a manifest set, as plain data ready to be dumped as YAML.

Owned here: which alerts a manifest set makes, their PromQL expressions, `for`
durations, labels and annotations, and the scrape configuration that feeds
them. `orchestrator rules` and `orchestrator prometheus-config` (through
`operations.rules`) dump what this returns; the tests feed the same data to
`promtool check rules` and `promtool test rules`.

The alerts (see README, "Alert rules"):
- per agent, one for each threshold its `resources` set (`cpu_percent`,
  `memory_mb`, `open_fds`: warning, critical, limit), per process, as the
  exporter measures each process (each replica) of an agent against the
  agent's thresholds; fired at or above the threshold, after its `for`;
- per agent: given up, crash looping (restarts within the restart policy's
  window; not for the manual policy, which never restarts), down, and the
  forecast of memory or open files reaching their limit within a horizon;
- once: the exporter's scrape failing, supervisord not answering.

Every metric a rule names is one the exporter exports (a unit test reads
both). Standard library only, no clock, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orchestrator.core.model import Agent, ManifestSet, Thresholds

JOB = "orchestrator"                  # the scrape job of `prometheus-config`; ExporterDown reads its `up`
RULES_FILE = "orchestrator-rules.yml"
MB = 1024 * 1024                      # memory_mb is in MiB, as the exporter's threshold_memory_bytes
AGENT_DOWN_FOR = 120.0                # an agent down this long (a restart's backoff is usually shorter)
SERVICE_DOWN_FOR = 60.0               # the exporter's scrape or supervisord failing this long
EXHAUSTION_HORIZON = 3600.0           # PREDICTED: the limit is reached within this many seconds

# threshold -> (alert name suffix, severity label), as core.alerts' WARNING, CRITICAL, EMERGENCY
_LEVELS: tuple[tuple[str, str, str], ...] = (("warning", "Warning", "warning"), ("critical", "Critical", "critical"),
                                             ("limit", "Limit", "emergency"))
# resources field -> (alert name stem, exporter metric, factor from the manifest's unit to the metric's, unit shown)
_RESOURCES: tuple[tuple[str, str, str, float, str], ...] = (
    ("cpu_percent", "AgentCpu", "orchestrator_process_cpu_usage_ratio", 0.01, "cores"),
    ("memory_mb", "AgentMemory", "orchestrator_process_resident_memory_bytes", float(MB), "bytes"),
    ("open_fds", "AgentOpenFds", "orchestrator_process_open_fds", 1.0, "open files"),
)


def duration(seconds: float) -> str:
    """`seconds` as a Prometheus duration: 90 -> "90s", 600 -> "10m", 0.5 -> "500ms"."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _quote(value: str) -> str:
    return json.dumps(value)   # a PromQL string literal: JSON's escapes are PromQL's


def _number(value: float) -> str:
    return f"{value:.15g}"


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule: `alert`, `expr`, `for`, labels and annotations, and the group it belongs to."""

    group: str
    alert: str
    expr: str
    for_seconds: float
    labels: tuple[tuple[str, str], ...]
    summary: str
    metrics: tuple[str, ...]          # the exporter's metric names the expression reads

    @property
    def key(self) -> tuple[str, str]:
        """What tells two rules apart: the alert name and the agent (empty for the global ones)."""
        return self.alert, dict(self.labels).get("agent", "")

    def plain(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.alert, "expr": self.expr}
        if self.for_seconds:
            rule["for"] = duration(self.for_seconds)
        rule["labels"] = dict(self.labels)
        rule["annotations"] = {"summary": self.summary}
        return rule


def _threshold_rules(agent: Agent, group: str) -> list[AlertRule]:
    rules = []
    for field, stem, metric, factor, unit in _RESOURCES:
        thresholds: Thresholds = getattr(agent.resources, field)
        for level, suffix, severity in _LEVELS:
            value = getattr(thresholds, level)
            if value is None:
                continue
            rules.append(AlertRule(
                group=group, alert=f"{stem}{suffix}",
                expr=f"{metric}{{agent={_quote(agent.name)}}} >= {_number(value * factor)}",
                for_seconds=thresholds.for_seconds,
                labels=(("agent", agent.name), ("severity", severity)),
                summary=f"{{{{ $labels.process }}}}: {field} at or above its {level} {value:g} "
                        f"({{{{ $value }}}} {unit})",
                metrics=(metric,)))
    return rules


def crash_loop_restarts(agent: Agent) -> int:
    """Restarts within the policy's window at which the agent is crash looping: half its attempts (rounded up),
    so the alert comes before the give-up. Compared with `>=`: `increase()` extrapolates to the window's ends, so
    N restarts can read as a little more than N, never as N + 1."""
    return max(1, (agent.restart.max_attempts + 1) // 2)


def _state_rules(agent: Agent, group: str) -> list[AlertRule]:
    name = _quote(agent.name)
    labels = (("agent", agent.name), ("severity", "critical"))
    rules = [
        AlertRule(group=group, alert="AgentGivenUp", expr=f"orchestrator_agent_given_up{{agent={name}}} == 1",
                  for_seconds=0.0, labels=labels,
                  summary=f"{agent.name} was given up by its restart policy: `orchestrator start {agent.name}` clears it",
                  metrics=("orchestrator_agent_given_up",)),
        AlertRule(group=group, alert="AgentDown", expr=f"orchestrator_agent_up{{agent={name}}} == 0",
                  for_seconds=AGENT_DOWN_FOR, labels=labels,
                  summary=f"{agent.name} has not been running for {duration(AGENT_DOWN_FOR)}",
                  metrics=("orchestrator_agent_up",)),
    ]
    if agent.restart.policy != "manual":
        window, least = duration(agent.restart.window), crash_loop_restarts(agent)
        rules.insert(1, AlertRule(
            group=group, alert="AgentCrashLooping",
            expr=f"sum by (agent) (increase(orchestrator_agent_restarts_total{{agent={name}}}[{window}])) >= {least}",
            for_seconds=0.0, labels=(("agent", agent.name), ("severity", "warning")),
            summary=f"{agent.name} restarted at least {least} times in {window} "
                    f"(given up after {agent.restart.max_attempts} failed attempts)",
            metrics=("orchestrator_agent_restarts_total",)))
    return rules


def _exhaustion_rules(agent: Agent, group: str, horizon: float) -> list[AlertRule]:
    resources, rules = agent.resources, []
    memory = any(getattr(resources.memory_mb, level) is not None for level, _, _ in _LEVELS)
    fds = resources.open_files is not None or any(getattr(resources.open_fds, level) is not None for level, _, _ in _LEVELS)
    for resource, stem, wanted in (("memory", "AgentMemoryExhaustionPredicted", memory),
                                   ("fds", "AgentOpenFdsExhaustionPredicted", fds)):
        if wanted:
            rules.append(AlertRule(
                group=group, alert=stem,
                expr=f"orchestrator_agent_exhaustion_seconds{{agent={_quote(agent.name)},resource={_quote(resource)}}}"
                     f" < {_number(horizon)}",
                for_seconds=0.0, labels=(("agent", agent.name), ("severity", "predicted")),
                summary=f"{agent.name}: {resource} forecast to reach its limit in {{{{ $value | humanizeDuration }}}}",
                metrics=("orchestrator_agent_exhaustion_seconds",)))
    return rules


def global_rules() -> list[AlertRule]:
    return [
        AlertRule(group="orchestrator", alert="OrchestratorExporterDown", expr=f'up{{job="{JOB}"}} == 0',
                  for_seconds=SERVICE_DOWN_FOR, labels=(("severity", "critical"),),
                  summary="Prometheus cannot scrape orchestrator's exporter ({{ $labels.instance }})",
                  metrics=("up",)),
        AlertRule(group="orchestrator", alert="OrchestratorSupervisordDown", expr="orchestrator_supervisord_up == 0",
                  for_seconds=SERVICE_DOWN_FOR, labels=(("severity", "critical"),),
                  summary="supervisord does not answer the exporter: no agent is managed",
                  metrics=("orchestrator_supervisord_up",)),
    ]


def agent_group(name: str) -> str:
    return f"orchestrator-agent-{name}"


def alert_rules(manifests: ManifestSet, *, horizon: float = EXHAUSTION_HORIZON) -> list[AlertRule]:
    """Every alerting rule of `manifests`: the global ones, then each agent's, agents by name."""
    rules = global_rules()
    for agent in manifests.agents:
        group = agent_group(agent.name)
        rules += _threshold_rules(agent, group) + _state_rules(agent, group) + _exhaustion_rules(agent, group, horizon)
    return rules


def rule_groups(rules: list[AlertRule], *, interval: float) -> dict[str, Any]:
    """The rule file's content: `{"groups": [...]}`, one group a name in the order first seen."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rule in rules:
        groups.setdefault(rule.group, []).append(rule.plain())
    return {"groups": [{"name": name, "interval": duration(interval), "rules": members}
                       for name, members in groups.items()]}


def rules_document(manifests: ManifestSet) -> dict[str, Any]:
    """The rule file of `manifests`, evaluated at the exporter's sampling interval."""
    return rule_groups(alert_rules(manifests), interval=manifests.settings.exporter.interval)


def scrape_config(manifests: ManifestSet, rules_path: str) -> dict[str, Any]:
    """A Prometheus configuration scraping the exporter (job `orchestrator`) and loading `rules_path`."""
    exporter = manifests.settings.exporter
    interval = duration(exporter.interval)
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [rules_path],
        "scrape_configs": [{"job_name": JOB, "scrape_interval": interval, "metrics_path": "/metrics",
                            "static_configs": [{"targets": [exporter.listen],
                                                "labels": {"project": manifests.settings.project}}]}],
    }
