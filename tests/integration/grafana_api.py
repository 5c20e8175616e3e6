"""A stand-in for a Grafana server on 127.0.0.1: the HTTP API endpoints `grafana push` and apply's annotations use.

No Grafana server can be installed on these machines (Debian has no package of it, and nothing may be downloaded
from elsewhere), so the tests run against this one. It keeps its objects in memory and answers as Grafana's HTTP
API documentation says, its error responses included:

    every request   401 {"message": "invalid API key", ...} without `Authorization: Bearer TOKEN`
    datasources     GET /api/datasources/uid/UID (404), POST /api/datasources (409: the name is taken),
                    PUT /api/datasources/uid/UID (404)
    folders         GET /api/folders/UID (404), POST /api/folders (409: the UID is taken),
                    PUT /api/folders/UID (409 version-mismatch unless `version` is the stored one or `overwrite`)
    dashboards      GET /api/dashboards/uid/UID (404), POST /api/dashboards/db (412 version-mismatch unless
                    `dashboard.version` is the stored one or `overwrite`; 412 name-exists for another dashboard of
                    the same title in the folder; 400 for an unknown folder)
    alerting        /api/v1/provisioning/contact-points (GET, POST 202, PUT/DELETE by UID 202, 404),
                    /api/v1/provisioning/policies (GET, PUT 202: every receiver must exist, else 400),
                    /api/v1/provisioning/alert-rules (GET, DELETE by UID 204),
                    /api/v1/provisioning/folder/FOLDER/rule-groups/GROUP (GET 404, PUT: 400 for an interval not a
                    multiple of 10 s, an unknown folder, a rule without uid or title)
    annotations     POST /api/annotations (400 without a `time` in ms or a text)

Every request is recorded (method, path, JSON body), so a test can say what was sent.
"""

from __future__ import annotations

import copy
import http.server
import json
import re
import threading
from typing import Any

DEFAULT_CONTACT_POINT = {"uid": "", "name": "grafana-default-email", "type": "email",
                         "settings": {"addresses": "<example@email.com>"}, "disableResolveMessage": False}


class GrafanaAPI:
    def __init__(self, token: str = "service-account-token") -> None:
        self.token = token
        self.requests: list[tuple[str, str, Any]] = []
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}       # uid -> {"dashboard", "folderUid"}
        self.contact_points: list[dict[str, Any]] = [copy.deepcopy(DEFAULT_CONTACT_POINT)]
        self.policy: dict[str, Any] = {"receiver": "grafana-default-email", "group_by": ["grafana_folder", "alertname"]}
        self.rules: dict[str, dict[str, Any]] = {}            # uid -> rule (API shape)
        self.groups: dict[tuple[str, str], int] = {}          # (folder uid, group) -> interval
        self.annotations: list[dict[str, Any]] = []
        self._ids = 0
        self.lock = threading.Lock()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                path = self.path.split("?", 1)[0]
                with api.lock:
                    api.requests.append((self.command, path, body))
                    if self.headers.get("Authorization") != f"Bearer {api.token}":
                        status, answer = 401, {"extra": None, "message": "invalid API key", "messageId": "api-key.invalid",
                                               "statusCode": 401, "traceID": ""}
                    else:
                        status, answer = api.route(self.command, path, body)
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                if answer is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815 - http.server's names

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="grafana", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def sent(self, method: str, pattern: str) -> list[Any]:
        """The bodies of the requests of `method` whose path matches `pattern`, in order."""
        return [body for m, path, body in list(self.requests) if m == method and re.fullmatch(pattern, path)]

    def _id(self) -> int:
        self._ids += 1
        return self._ids

    # --- routing ---------------------------------------------------------------------------------------

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        for pattern, handler in (
            (r"/api/datasources/uid/([^/]+)", self.datasource), (r"/api/datasources", self.datasources_),
            (r"/api/folders/([^/]+)", self.folder), (r"/api/folders", self.folders_),
            (r"/api/dashboards/uid/([^/]+)", self.dashboard), (r"/api/dashboards/db", self.dashboard_db),
            (r"/api/v1/provisioning/contact-points/([^/]+)", self.contact_point),
            (r"/api/v1/provisioning/contact-points", self.contact_points_),
            (r"/api/v1/provisioning/policies", self.policies),
            (r"/api/v1/provisioning/alert-rules/([^/]+)", self.alert_rule),
            (r"/api/v1/provisioning/alert-rules", self.alert_rules),
            (r"/api/v1/provisioning/folder/([^/]+)/rule-groups/([^/]+)", self.rule_group),
            (r"/api/annotations", self.annotation),
        ):
            match = re.fullmatch(pattern, path)
            if match:
                return handler(method, body, *match.groups())
        return 404, {"message": "Not found"}

    # --- data sources ----------------------------------------------------------------------------------

    def datasource(self, method: str, body: Any, uid: str) -> tuple[int, Any]:
        found = self.datasources.get(uid)
        if found is None:
            return 404, {"message": "Data source not found"}
        if method == "GET":
            return 200, found
        if method == "PUT":
            found.update({k: v for k, v in body.items() if k != "id"})
            found["version"] += 1
            return 200, {"datasource": found, "id": found["id"], "message": "Datasource updated", "name": found["name"]}
        return 405, {"message": "Method not allowed"}

    def datasources_(self, method: str, body: Any) -> tuple[int, Any]:
        if method == "GET":
            return 200, list(self.datasources.values())
        if any(d["name"] == body["name"] for d in self.datasources.values()):
            return 409, {"message": "data source with the same name already exists", "traceID": ""}
        stored = {"id": self._id(), "orgId": 1, "typeLogoUrl": "", "basicAuth": False, "withCredentials": False,
                  "readOnly": False, "version": 1, **body}
        self.datasources[body["uid"]] = stored
        return 200, {"datasource": stored, "id": stored["id"], "message": "Datasource added", "name": stored["name"]}

    # --- folders ---------------------------------------------------------------------------------------

    def folder(self, method: str, body: Any, uid: str) -> tuple[int, Any]:
        found = self.folders.get(uid)
        if found is None:
            return 404, {"message": "folder not found", "status": "not-found"}
        if method == "GET":
            return 200, found
        if method == "PUT":
            if not body.get("overwrite") and body.get("version") != found["version"]:
                return 409, {"message": "the folder has been changed by someone else", "status": "version-mismatch"}
            found["title"] = body.get("title", found["title"])
            found["version"] += 1
            return 200, found
        return 405, {"message": "Method not allowed"}

    def folders_(self, method: str, body: Any) -> tuple[int, Any]:
        if method == "GET":
            return 200, [{"id": f["id"], "uid": f["uid"], "title": f["title"]} for f in self.folders.values()]
        uid = body.get("uid") or f"generated{self._ids + 1}"
        if uid in self.folders:
            return 409, {"message": "a folder with the same uid already exists"}
        stored = {"id": self._id(), "uid": uid, "title": body["title"], "url": f"/dashboards/f/{uid}/", "hasAcl": False,
                  "canSave": True, "canEdit": True, "canAdmin": True, "version": 1}
        self.folders[uid] = stored
        return 200, stored

    # --- dashboards ------------------------------------------------------------------------------------

    def dashboard(self, method: str, body: Any, uid: str) -> tuple[int, Any]:
        found = self.dashboards.get(uid)
        if found is None:
            return 404, {"message": "Dashboard not found"}
        if method == "GET":
            board = found["dashboard"]
            return 200, {"dashboard": board, "meta": {"type": "db", "slug": board["title"].lower().replace(" ", "-"),
                                                      "folderUid": found["folderUid"], "version": board["version"],
                                                      "provisioned": False}}
        if method == "DELETE":
            del self.dashboards[uid]
            return 200, {"title": found["dashboard"]["title"], "message": "Dashboard deleted", "id": found["dashboard"]["id"]}
        return 405, {"message": "Method not allowed"}

    def dashboard_db(self, method: str, body: Any) -> tuple[int, Any]:
        board = copy.deepcopy(body["dashboard"])
        folder = body.get("folderUid", "")
        if folder and folder not in self.folders:
            return 400, {"message": "folder not found", "status": "not-found"}
        uid = board.get("uid")
        found = self.dashboards.get(uid)
        if not body.get("overwrite"):
            if found is not None and board.get("version") != found["dashboard"]["version"]:
                return 412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}
            if any(d["dashboard"]["title"] == board.get("title") and d["folderUid"] == folder and k != uid
                   for k, d in self.dashboards.items()):
                return 412, {"message": "A dashboard with the same name in the folder already exists", "status": "name-exists"}
        board["id"] = found["dashboard"]["id"] if found else self._id()
        board["version"] = found["dashboard"]["version"] + 1 if found else 1
        self.dashboards[uid] = {"dashboard": board, "folderUid": folder}
        return 200, {"id": board["id"], "uid": uid, "url": f"/d/{uid}/x", "status": "success", "version": board["version"],
                     "slug": "x"}

    # --- alerting provisioning -------------------------------------------------------------------------

    def contact_points_(self, method: str, body: Any) -> tuple[int, Any]:
        if method == "GET":
            return 200, copy.deepcopy(self.contact_points)
        stored = {"uid": body.get("uid") or f"cp{self._id()}", **{k: v for k, v in body.items() if k != "uid"}}
        if any(p["uid"] == stored["uid"] for p in self.contact_points):
            return 400, {"message": "contact point with the same uid already exists"}
        self.contact_points.append(stored)
        return 202, stored

    def contact_point(self, method: str, body: Any, uid: str) -> tuple[int, Any]:
        found = next((p for p in self.contact_points if p["uid"] == uid), None)
        if found is None:
            return 404, {"message": "contact point not found"}
        if method == "PUT":
            found.update(body)
            return 202, {"message": "contactpoint updated"}
        if method == "DELETE":
            if self._routes_to(found["name"], self.policy):
                return 409, {"message": "contact point is in use by a notification policy"}
            self.contact_points.remove(found)
            return 202, {"message": "contactpoint deleted"}
        return 405, {"message": "Method not allowed"}

    def _routes_to(self, name: str, route: dict[str, Any]) -> bool:
        return route.get("receiver") == name or any(self._routes_to(name, r) for r in route.get("routes", []))

    def policies(self, method: str, body: Any) -> tuple[int, Any]:
        if method == "GET":
            return 200, copy.deepcopy(self.policy)
        names = {p["name"] for p in self.contact_points}

        def receivers(route: dict[str, Any]) -> set[str]:
            return {route.get("receiver", "")} | {n for r in route.get("routes", []) for n in receivers(r)}

        unknown = receivers(body) - names - {""}
        if unknown:
            return 400, {"message": f"invalid object specification: receiver '{sorted(unknown)[0]}' does not exist"}
        self.policy = copy.deepcopy(body)
        return 202, {"message": "policies updated"}

    def alert_rules(self, method: str, body: Any) -> tuple[int, Any]:
        if method == "GET":
            return 200, [copy.deepcopy(r) for r in self.rules.values()]
        return 405, {"message": "Method not allowed"}

    def alert_rule(self, method: str, body: Any, uid: str) -> tuple[int, Any]:
        if uid not in self.rules:
            return 404, {"message": "rule not found"}
        if method == "GET":
            return 200, copy.deepcopy(self.rules[uid])
        if method == "DELETE":
            del self.rules[uid]
            return 204, None
        return 405, {"message": "Method not allowed"}

    def rule_group(self, method: str, body: Any, folder: str, group: str) -> tuple[int, Any]:
        members = [r for r in self.rules.values() if r["folderUID"] == folder and r["ruleGroup"] == group]
        if method == "GET":
            if not members:
                return 404, {"message": "rule group not found"}
            return 200, {"title": group, "folderUid": folder, "interval": self.groups[(folder, group)],
                         "rules": copy.deepcopy(members)}
        if folder not in self.folders:
            return 400, {"message": f"folder with UID '{folder}' not found"}
        interval = body.get("interval")
        if not isinstance(interval, int) or interval <= 0 or interval % 10:
            return 400, {"message": f"invalid rule group: interval ({interval}s) should be divided exactly by scheduler interval: 10s"}
        titles = [r.get("title") for r in body.get("rules", [])]
        if any(not r.get("uid") or not r.get("title") for r in body.get("rules", [])) or len(set(titles)) != len(titles):
            return 400, {"message": "invalid rule group: every rule needs a uid and a title unique in its group"}
        for r in members:
            del self.rules[r["uid"]]
        for rule in body["rules"]:
            self.rules[rule["uid"]] = {**copy.deepcopy(rule), "folderUID": folder, "ruleGroup": group, "orgID": 1,
                                       "id": self._id(), "updated": "2026-11-27T00:00:00Z", "provenance": "api"}
        self.groups[(folder, group)] = interval
        return 200, self.rule_group("GET", None, folder, group)[1]

    # --- annotations -----------------------------------------------------------------------------------

    def annotation(self, method: str, body: Any) -> tuple[int, Any]:
        if method != "POST":
            return 200, list(self.annotations)
        if not isinstance(body.get("time"), int) or not body.get("text"):
            return 400, {"message": "bad request data"}
        stored = {"id": self._id(), **body}
        self.annotations.append(stored)
        return 200, {"id": stored["id"], "message": "Annotation added"}
