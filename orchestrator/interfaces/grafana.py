"""Talking to a Grafana server over its HTTP API: `grafana push`, and the annotation apply leaves behind.

Owned here (the one home of grafana_client): every request to Grafana. `push` makes a Grafana hold what
`grafana export` would provision, through the API instead of files, idempotently, saying per object whether it
was created, changed, left unchanged or deleted:

    data source       GET /api/datasources/uid/UID, then POST /api/datasources or PUT /api/datasources/uid/UID
    folder            GET /api/folders/UID, then POST /api/folders or PUT /api/folders/UID (overwrite)
    dashboards        GET /api/dashboards/uid/UID, then POST /api/dashboards/db (overwrite: in place, by UID)
    contact points    GET/POST/PUT/DELETE /api/v1/provisioning/contact-points
    policy tree       GET/PUT /api/v1/provisioning/policies
    rule groups       GET/PUT /api/v1/provisioning/folder/UID/rule-groups/GROUP; a removed agent's rules
                      DELETE /api/v1/provisioning/alert-rules/UID

`annotate` posts an annotation (POST /api/annotations) after an apply, an up or an emergency stop, when
orchestrator.yaml has `grafana`; Grafana unreachable or refusing is a warning on stderr, never a failure.
The grafana_client module is imported only when Grafana is talked to, so apply starts without it.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import click

from orchestrator.core import grafana as gf
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.model import ManifestSet

TOKEN_ENV = "GRAFANA_TOKEN"
PUSH_TIMEOUT = 10.0        # seconds per request of `grafana push`
ANNOTATE_TIMEOUT = 3.0     # seconds: an unreachable Grafana must not hold up apply for long
DASHBOARD_SERVER_KEYS = ("id", "version")   # what Grafana adds to a stored dashboard


@dataclass(frozen=True)
class Pushed:
    kind: str      # datasource, folder, dashboard, contact point, policy, rule group, alert rule
    name: str
    status: str    # created, changed, unchanged, deleted

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "status": self.status}


def _api(url: str, token: str | None, timeout: float) -> Any:
    """A grafana_client GrafanaApi (untyped: Any)."""
    from grafana_client.api import GrafanaApi

    return GrafanaApi.from_url(url, credential=token or None, timeout=timeout)


def _errors() -> tuple[type[BaseException], ...]:
    from grafana_client.client import GrafanaException

    return GrafanaException, OSError   # OSError: the HTTP library's connection errors derive from it


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) and code else None


def _missing(call: Callable[[], Any]) -> Any:
    """The answer of `call`, or None when Grafana answers 404."""
    from grafana_client.client import GrafanaClientError

    try:
        return call()
    except GrafanaClientError as exc:
        if _status(exc) == 404:
            return None
        raise


def _subset(wanted: Any, actual: Any) -> bool:
    """Whether `actual` holds `wanted` (Grafana adds keys of its own to what it stores)."""
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(k in actual and _subset(v, actual[k]) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(actual, list) and len(wanted) == len(actual) and all(map(_subset, wanted, actual))
    return bool(wanted == actual)


class _Pusher:
    def __init__(self, api: Any, manifests: ManifestSet, folder: str) -> None:
        self.api = api
        self.manifests = manifests
        self.folder = folder
        self.ids = gf.Uids(manifests.settings.project)
        self.done: list[Pushed] = []
        self.stale_points: list[tuple[str, str]] = []

    def said(self, kind: str, name: str, status: str) -> None:
        self.done.append(Pushed(kind, name, status))

    def datasource(self) -> None:
        wanted = gf.datasource(self.manifests)
        found = _missing(lambda: self.api.datasource.get_datasource_by_uid(wanted["uid"]))
        if found is None:
            self.api.datasource.create_datasource(wanted)
            self.said("datasource", wanted["name"], "created")
        elif _subset(wanted, found):
            self.said("datasource", wanted["name"], "unchanged")
        else:
            self.api.datasource.update_datasource_by_uid(wanted["uid"], wanted)
            self.said("datasource", wanted["name"], "changed")

    def folder_uid(self) -> str:
        uid = self.ids.folder
        found = _missing(lambda: self.api.folder.get_folder(uid))
        if found is None:
            self.api.folder.create_folder(self.folder, uid=uid)
            self.said("folder", self.folder, "created")
        elif found.get("title") == self.folder:
            self.said("folder", self.folder, "unchanged")
        else:   # renamed in the settings: ours by its UID, whoever changed it since (overwrite, no 409)
            self.api.folder.update_folder(uid, title=self.folder, overwrite=True)
            self.said("folder", self.folder, "changed")
        return uid

    def dashboards(self, folder_uid: str) -> None:
        from orchestrator.operations import dashboards

        for board in dashboards.dashboards(self.manifests).values():
            uid = board["uid"]
            found = _missing(partial(self.api.dashboard.get_dashboard, uid))
            if found is not None:
                stored = {k: v for k, v in found.get("dashboard", {}).items() if k not in DASHBOARD_SERVER_KEYS}
                if _subset(board, stored) and found.get("meta", {}).get("folderUid") == folder_uid:
                    self.said("dashboard", board["title"], "unchanged")
                    continue
            self.api.dashboard.update_dashboard({"dashboard": {**board, "id": None}, "folderUid": folder_uid,
                                                 "overwrite": True, "message": "orchestrator grafana push"})
            self.said("dashboard", board["title"], "created" if found is None else "changed")

    def contact_points(self) -> None:
        existing = {p.get("uid"): p for p in self.api.alertingprovisioning.get_contactpoints() or []}
        wanted = gf.contact_points(self.manifests)
        for point in wanted:
            found = existing.get(point["uid"])
            if found is None:
                self.api.alertingprovisioning.create_contactpoint(point)
                self.said("contact point", point["name"], "created")
            elif _subset(point, found):
                self.said("contact point", point["name"], "unchanged")
            else:
                self.api.alertingprovisioning.update_contactpoint(point["uid"], point)
                self.said("contact point", point["name"], "changed")
        ours = self.ids.prefix("cp")
        self.stale_points = [(uid, str(found.get("name", uid))) for uid, found in sorted(existing.items(), key=lambda i: str(i[0]))
                             if isinstance(uid, str) and uid.startswith(ours) and uid not in {p["uid"] for p in wanted}]

    def stale_contact_points(self) -> None:
        """Deleted once the policy no longer routes to them (Grafana refuses to delete a contact point in use)."""
        for uid, name in self.stale_points:
            self.api.alertingprovisioning.delete_contactpoint(uid)
            self.said("contact point", name, "deleted")

    def policy(self) -> None:
        wanted = gf.policy(self.manifests)
        found = self.api.alertingprovisioning.get_notification_policy_tree()
        if _subset(wanted, found):
            self.said("policy", "notification policy tree", "unchanged")
        else:
            self.api.alertingprovisioning.set_notification_policy_tree(wanted)
            self.said("policy", "notification policy tree", "changed")

    def rules(self, folder_uid: str) -> None:
        groups = gf.rule_groups(self.manifests)
        interval = gf.group_interval(self.manifests.settings.exporter.interval)
        existing = self.api.alertingprovisioning.get_alertrules_all() or []
        for rule in sorted(existing, key=lambda r: str(r.get("uid"))):
            group = str(rule.get("ruleGroup", ""))
            if rule.get("folderUID") == folder_uid and gf.is_managed_group(group) and group not in groups:
                self.api.alertingprovisioning.delete_alertrule(rule["uid"])
                self.said("alert rule", str(rule.get("title", rule["uid"])), "deleted")
        for group, members in groups.items():
            wanted = {"title": group, "folderUid": folder_uid, "interval": interval,
                      "rules": [{**r, "folderUID": folder_uid} for r in members]}
            found = _missing(partial(self.api.alertingprovisioning.get_rule_group, folder_uid, group))
            if found is not None and _subset(wanted, found):
                self.said("rule group", group, "unchanged")
                continue
            self.api.alertingprovisioning.update_rule_group(folder_uid, group, wanted)
            self.said("rule group", group, "created" if found is None else "changed")


def push(manifests: ManifestSet, *, url: str, token: str | None, folder: str) -> list[Pushed]:
    """Make the Grafana at `url` hold this project's data source, folder, dashboards, contact points, notification
    policy and alert rules; what each object needed. Grafana refusing or unreachable is an OrchestratorError."""
    from grafana_client.client import GrafanaUnauthorizedError

    pusher = _Pusher(_api(url, token, PUSH_TIMEOUT), manifests, folder)
    try:
        pusher.datasource()
        folder_uid = pusher.folder_uid()
        pusher.dashboards(folder_uid)
        pusher.contact_points()
        pusher.policy()
        pusher.stale_contact_points()
        pusher.rules(folder_uid)
    except GrafanaUnauthorizedError as exc:
        raise OrchestratorError(f"Grafana at {url} refused the credentials (401): set --token or ${TOKEN_ENV} "
                                f"to a service account token with the Editor role ({_message(exc)})") from exc
    except _errors() as exc:
        done = "; ".join(f"{p.kind} {p.name}: {p.status}" for p in pusher.done) or "nothing"
        raise OrchestratorError(f"grafana push to {url} failed: {_message(exc)} (done before: {done})") from exc
    return pusher.done


def _message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping) and response.get("message"):
        return f"{_status(exc) or ''} {response['message']}".strip()
    text = str(exc) or type(exc).__name__
    # the HTTP stack nests the cause of a failed connection three exceptions deep: say the cause alone
    cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if cause:
        return f"cannot connect ({cause.group(1).strip()})"
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "no answer in time"
    return text


# --- annotations -----------------------------------------------------------------------------------------

def annotation(manifests: ManifestSet, *, what: str, version: int | None, message: str,
               changed: list[str], user: str, at: float) -> dict[str, Any]:
    """The annotation of one change: when, what, by whom, which agents, tagged for the dashboards' filters."""
    project = manifests.settings.project
    lines = [f"orchestrator {what}" + (f": version {version}" if version is not None else "") + f" of {project}"]
    if message:
        lines.append(message)
    lines.append(f"by {user}")
    if changed:
        lines.append("agents changed: " + ", ".join(changed))
    tags = ["orchestrator", project, what] + ([f"version-{version}"] if version is not None else [])
    return {"time": int(at * 1000), "tags": tags, "text": "\n".join(lines)}


def annotate(manifests: ManifestSet | None, *, what: str, version: int | None = None, message: str = "",
             changed: list[str] | tuple[str, ...] = ()) -> None:
    """Post an annotation to the `grafana` of orchestrator.yaml, if it has one; any failure is a warning."""
    settings = manifests.settings.grafana if manifests is not None else None
    if manifests is None or settings is None:
        return
    body = annotation(manifests, what=what, version=version, message=message, changed=sorted(changed),
                      user=_user(), at=time.time())
    try:
        api = _api(settings.url, os.environ.get(TOKEN_ENV), ANNOTATE_TIMEOUT)
        api.annotations.add_annotation(time_from=body["time"], tags=body["tags"], text=body["text"])
    except _errors() as exc:
        click.echo(click.style(f"warning: Grafana at {settings.url} did not take the {what} annotation: {_message(exc)}",
                               fg="yellow"), err=True)


def annotate_apply(manifests: ManifestSet, report: Any, message: str, *, what: str = "apply") -> None:
    """The hook of apply and up (`report`: their ApplyReport): the version recorded and the agents it changed."""
    version = getattr(report, "version", None)
    if version is None:   # up records the version before it starts supervisord, and converges on it: the live one
        from orchestrator.state.history import History

        try:
            version = History(manifests.state_dir).current()
        except (OrchestratorError, OSError):
            version = None
    plan = getattr(report, "plan", None)
    changed = sorted({a.agent for a in getattr(plan, "actions", ()) if a.kind != "unchanged"}) if plan is not None else []
    annotate(manifests, what=what, version=version.number if version is not None else None, message=message,
             changed=changed)


def annotate_change(load: Callable[[], ManifestSet], report: Any, message: str, *, what: str) -> None:
    """The hook of rollback and restore --apply: as apply's, with the manifests loaded only when asked (a set that
    no longer loads is no reason to say anything)."""
    try:
        manifests = load()
    except (OrchestratorError, OSError):
        return
    annotate_apply(manifests, report, message, what=what)


def annotate_emergency(load: Callable[[], ManifestSet], reason: str) -> None:
    """The hook of emergency-stop: the manifests may be broken then, and that is no reason to say anything."""
    try:
        manifests = load()
    except (OrchestratorError, OSError):
        return
    annotate(manifests, what="emergency-stop", message=reason)


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return str(os.getuid())


def dumps(done: list[Pushed]) -> str:
    return json.dumps([p.as_dict() for p in done], indent=2)
