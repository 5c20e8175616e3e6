"""Grafana's side of a manifest set as plain data: stable UIDs, the Prometheus data source, Grafana-managed alert
rules, contact points, the notification policy, and the file-provisioning documents that carry them.

Owned here: what Grafana is given besides the dashboards (which `operations.dashboards` builds), in the two
shapes Grafana takes it, its HTTP provisioning API (`grafana push`, through `interfaces.grafana`) and its
provisioning files (`grafana export`, through `operations.grafana`); and which stanzas delete what a previous
export provisioned and this one no longer has.

The alert rules are the Prometheus rules of `core.rules`, not derived again: each Grafana rule runs the
Prometheus rule's expression verbatim as its query (A), takes its last value (B), and fires while there is a
value at all (C: `is_number($B)`), which is how Prometheus fires a rule, a series per firing element; a
missing series is no alert (noDataState OK). Its `for`, labels and summary are the Prometheus rule's; only
`$value` becomes Grafana's `$values.B.Value`.

Command notification targets have no Grafana contact point: Grafana can only reach targets over the network
(a webhook), never run a command on this machine. They are named in a comment of the provisioning file.

Standard library only, no clock, no I/O.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.core import rules
from orchestrator.core.model import Grafana, ManifestSet, Notification, SEVERITIES

ORG_ID = 1
UID_MAX = 40                         # Grafana's limit on a UID's length
EXPR_DATASOURCE = "__expr__"         # Grafana's server-side expressions (reduce, math)
DEFAULT_RECEIVER = "grafana-default-email"   # the contact point every stock Grafana has: the root route must name one
QUERY_WINDOW = 600                   # seconds of data an alert query may read (its expression's own ranges apply)
BASE_INTERVAL = 10                   # Grafana evaluates rule groups at multiples of 10 s
PROMETHEUS_URL = "http://127.0.0.1:9090"

# Grafana variables a dashboard query may use, and what a plain Prometheus query needs in their place
RATE_INTERVAL = "$__rate_interval"
AGENT_VARIABLE = "$agent"

_UID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def uid(project: str, *parts: str) -> str:
    """A stable Grafana UID for `project`'s object named by `parts`: readable when it fits in 40 characters,
    else its start and a digest of the whole (the same project and parts give the same UID on every machine)."""
    text = _UID_CHARS.sub("-", "-".join((project, *parts)))
    if len(text) <= UID_MAX:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{text[:UID_MAX - len(digest) - 1]}-{digest}"


@dataclass(frozen=True)
class Uids:
    """The UIDs of one project's Grafana objects."""

    project: str

    @property
    def folder(self) -> str:
        return uid(self.project, "folder")

    @property
    def datasource(self) -> str:
        return uid(self.project, "prometheus")

    @property
    def overview(self) -> str:
        return uid(self.project, "overview")

    @property
    def agent(self) -> str:
        return uid(self.project, "agent")

    def prefix(self, kind: str) -> str:
        """What every UID of this project's objects of `kind` starts with (push finds its own by it)."""
        return uid(self.project, kind)[:UID_MAX - 13] + "-"

    def _keyed(self, kind: str, key: str) -> str:
        return self.prefix(kind) + hashlib.sha256(key.encode()).hexdigest()[:12]

    def rule(self, rule: rules.AlertRule) -> str:
        return self._keyed("rule", f"{rule.group}/{rule.alert}")

    def contact_point(self, name: str) -> str:
        return self._keyed("cp", name)


def settings_of(manifests: ManifestSet) -> Grafana:
    """The `grafana` settings, or their defaults where orchestrator.yaml has none."""
    return manifests.settings.grafana or Grafana()


def is_managed_group(group: str) -> bool:
    """Whether a rule group is one `alert_rules` makes (push deletes the rules of these no longer wanted)."""
    return group == "orchestrator" or group.startswith(rules.agent_group(""))


def group_interval(interval: float) -> int:
    """The exporter's sampling interval as a Grafana rule group's: a multiple of Grafana's 10 s, at least 10 s."""
    return max(BASE_INTERVAL, math.ceil(interval / BASE_INTERVAL) * BASE_INTERVAL)


# --- data source -----------------------------------------------------------------------------------------

def datasource(manifests: ManifestSet) -> dict[str, Any]:
    """The Prometheus data source, as the HTTP API takes it (`POST /api/datasources`)."""
    grafana = settings_of(manifests)
    return {"uid": Uids(manifests.settings.project).datasource, "name": grafana.datasource, "type": "prometheus",
            "access": "proxy", "url": grafana.prometheus, "isDefault": False,
            "jsonData": {"timeInterval": rules.duration(manifests.settings.exporter.interval), "httpMethod": "POST"}}


# --- alert rules ---------------------------------------------------------------------------------------

def _grafana_template(summary: str) -> str:
    """A Prometheus rule's summary as a Grafana template: `$value` is B's value there."""
    return summary.replace("$value", "$values.B.Value")


def alert_rule(rule: rules.AlertRule, *, project: str, folder_uid: str, datasource_uid: str) -> dict[str, Any]:
    """`rule` as a Grafana-managed rule, in the shape of the provisioning API (`POST /api/v1/provisioning/alert-rules`)."""
    return {
        "uid": Uids(project).rule(rule),
        "orgID": ORG_ID,
        "folderUID": folder_uid,
        "ruleGroup": rule.group,
        "title": rule.alert if not dict(rule.labels).get("agent") else f"{rule.alert} {dict(rule.labels)['agent']}",
        "condition": "C",
        "data": [
            {"refId": "A", "queryType": "", "relativeTimeRange": {"from": QUERY_WINDOW, "to": 0},
             "datasourceUid": datasource_uid,
             "model": {"refId": "A", "expr": rule.expr, "instant": True, "range": False, "editorMode": "code",
                       "datasource": {"type": "prometheus", "uid": datasource_uid}}},
            {"refId": "B", "queryType": "", "relativeTimeRange": {"from": 0, "to": 0}, "datasourceUid": EXPR_DATASOURCE,
             "model": {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last",
                       "datasource": {"type": "__expr__", "uid": EXPR_DATASOURCE}}},
            {"refId": "C", "queryType": "", "relativeTimeRange": {"from": 0, "to": 0}, "datasourceUid": EXPR_DATASOURCE,
             "model": {"refId": "C", "type": "math", "expression": "is_number($B)",
                       "datasource": {"type": "__expr__", "uid": EXPR_DATASOURCE}}},
        ],
        "noDataState": "OK",
        "execErrState": "Error",
        "for": rules.duration(rule.for_seconds) if rule.for_seconds else "0s",
        "labels": dict(rule.labels),
        "annotations": {"summary": _grafana_template(rule.summary)},
        "isPaused": False,
    }


def alert_rules(manifests: ManifestSet) -> list[dict[str, Any]]:
    """Every Grafana-managed rule of `manifests`: one per Prometheus rule of `core.rules`, in its order."""
    ids = Uids(manifests.settings.project)
    return [alert_rule(r, project=manifests.settings.project, folder_uid=ids.folder, datasource_uid=ids.datasource)
            for r in rules.alert_rules(manifests)]


def rule_groups(manifests: ManifestSet) -> dict[str, list[dict[str, Any]]]:
    """The Grafana rules by group, groups in the order `core.rules` makes them."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rule in alert_rules(manifests):
        groups.setdefault(rule["ruleGroup"], []).append(rule)
    return groups


# --- contact points and the notification policy ----------------------------------------------------------

def webhooks(manifests: ManifestSet) -> list[Notification]:
    return [n for n in manifests.settings.notifications if n.type == "webhook"]


def commands(manifests: ManifestSet) -> list[Notification]:
    """The command targets: no contact point can stand for them (Grafana cannot run a command here)."""
    return [n for n in manifests.settings.notifications if n.type == "command"]


def contact_point(manifests: ManifestSet, target: Notification) -> dict[str, Any]:
    """A webhook target as a contact point, in the provisioning API's shape."""
    return {"uid": Uids(manifests.settings.project).contact_point(target.name), "name": target.name, "type": "webhook",
            "settings": {"url": target.url, "httpMethod": "POST"}, "disableResolveMessage": False}


def contact_points(manifests: ManifestSet) -> list[dict[str, Any]]:
    return [contact_point(manifests, n) for n in webhooks(manifests)]


def severities_from(least: str) -> list[str]:
    """The severities at or above `least`, lowest first (as `notifications` send them)."""
    return list(SEVERITIES[SEVERITIES.index(least):])


def policy(manifests: ManifestSet) -> dict[str, Any]:
    """The notification policy tree: this project's alerts (its folder) go to each webhook target that their
    severity reaches; anything else to the default contact point. Provisioning it replaces the org's tree."""
    folder = settings_of(manifests).folder
    routes = [{"receiver": n.name,
               "object_matchers": [["grafana_folder", "=", folder],
                                   ["severity", "=~", "|".join(severities_from(n.min_severity))]],
               "continue": True}
              for n in webhooks(manifests)]
    return {"receiver": DEFAULT_RECEIVER, "group_by": ["grafana_folder", "alertname", "agent"], "routes": routes}


# --- file provisioning -----------------------------------------------------------------------------------

def provisioned_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """An API-shaped rule as a provisioning file lists it inside its group (no org, folder or group of its own)."""
    return {k: v for k, v in rule.items() if k not in ("orgID", "folderUID", "ruleGroup")}


def rule_group_document(manifests: ManifestSet, group: str, members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"orgId": ORG_ID, "name": group, "folder": settings_of(manifests).folder,
            "interval": f"{group_interval(manifests.settings.exporter.interval)}s",
            "rules": [provisioned_rule(r) for r in members]}


@dataclass(frozen=True)
class Previous:
    """What an earlier export provisioned (read from its files by `operations.grafana`); empty for the first."""

    rule_uids: frozenset[str] = frozenset()
    deleted_rule_uids: frozenset[str] = frozenset()
    contact_point_uids: frozenset[str] = frozenset()
    deleted_contact_point_uids: frozenset[str] = frozenset()
    datasource_names: frozenset[str] = frozenset()
    deleted_datasource_names: frozenset[str] = frozenset()


def _gone(previous: Iterable[str], earlier: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """What to delete: what the previous export had, and what it deleted (Grafana may not have read that export
    yet), less what this one has again."""
    return sorted((set(previous) | set(earlier)) - set(wanted))


def alerting_document(manifests: ManifestSet, previous: Previous) -> dict[str, Any]:
    """The provisioning file of the global rule group, the contact points, the policy, and the deletions of the
    rules and contact points the previous export had and this one has not (each agent's group has a file of
    its own: `agent_rules_document`)."""
    groups = rule_groups(manifests)
    wanted_rules = {r["uid"] for members in groups.values() for r in members}
    points = contact_points(manifests)
    document: dict[str, Any] = {"apiVersion": 1}
    global_group = groups.get("orchestrator", [])
    document["groups"] = [rule_group_document(manifests, "orchestrator", global_group)]
    deleted = _gone(previous.rule_uids, previous.deleted_rule_uids, wanted_rules)
    if deleted:
        document["deleteRules"] = [{"orgId": ORG_ID, "uid": u} for u in deleted]
    if points:
        document["contactPoints"] = [{"orgId": ORG_ID, "name": p["name"],
                                      "receivers": [{k: v for k, v in p.items() if k != "name"}]} for p in points]
    deleted = _gone(previous.contact_point_uids, previous.deleted_contact_point_uids, {p["uid"] for p in points})
    if deleted:
        document["deleteContactPoints"] = [{"orgId": ORG_ID, "uid": u} for u in deleted]
    document["policies"] = [{"orgId": ORG_ID, **policy(manifests)}]
    return document


def agent_rules_document(manifests: ManifestSet, group: str, members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": 1, "groups": [rule_group_document(manifests, group, members)]}


def datasources_document(manifests: ManifestSet, previous: Previous) -> dict[str, Any]:
    source = datasource(manifests)
    document: dict[str, Any] = {"apiVersion": 1}
    deleted = _gone(previous.datasource_names, previous.deleted_datasource_names, {source["name"]})
    if deleted:
        document["deleteDatasources"] = [{"name": name, "orgId": ORG_ID} for name in deleted]
    document["datasources"] = [{"orgId": ORG_ID, "editable": False, **source}]
    return document


def dashboards_provider(manifests: ManifestSet, dashboards_path: str) -> dict[str, Any]:
    """The dashboards provider: the JSON files below `dashboards_path` (an absolute path, as Grafana wants),
    in the settings' folder, removed from Grafana when their file goes."""
    return {"apiVersion": 1, "providers": [{
        "name": f"orchestrator-{manifests.settings.project}", "orgId": ORG_ID, "type": "file",
        "folder": settings_of(manifests).folder, "folderUid": Uids(manifests.settings.project).folder,
        "disableDeletion": False, "allowUiUpdates": False, "updateIntervalSeconds": 30,
        "options": {"path": dashboards_path, "foldersFromFilesStructure": False}}]}


def previous_from(alerting: Mapping[str, Any] | None, agent_files: Iterable[Mapping[str, Any]],
                  datasources: Mapping[str, Any] | None) -> Previous:
    """`Previous` from the plain data of an earlier export's files (any may be missing or foreign: what is not
    shaped as this module writes it is ignored)."""
    def listed(document: Mapping[str, Any] | None, key: str) -> list[Mapping[str, Any]]:
        value = document.get(key) if isinstance(document, Mapping) else None
        return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []

    def strings(values: Iterable[Any]) -> frozenset[str]:
        return frozenset(v for v in values if isinstance(v, str))

    rule_uids = [r.get("uid") for doc in (alerting, *agent_files) for g in listed(doc, "groups") for r in listed(g, "rules")]
    points = [r.get("uid") for c in listed(alerting, "contactPoints") for r in listed(c, "receivers")]
    return Previous(
        rule_uids=strings(rule_uids),
        deleted_rule_uids=strings(d.get("uid") for d in listed(alerting, "deleteRules")),
        contact_point_uids=strings(points),
        deleted_contact_point_uids=strings(d.get("uid") for d in listed(alerting, "deleteContactPoints")),
        datasource_names=strings(d.get("name") for d in listed(datasources, "datasources")),
        deleted_datasource_names=strings(d.get("name") for d in listed(datasources, "deleteDatasources")))


# --- dashboard queries as Prometheus runs them -------------------------------------------------------------

def expand(expr: str, *, agent: str, rate_interval: str = "1m") -> str:
    """A dashboard query as Prometheus itself would be sent it by Grafana: the agent variable and Grafana's
    rate interval replaced."""
    return expr.replace(AGENT_VARIABLE, agent).replace(RATE_INTERVAL, rate_interval)
