"""The control room's Starlette application: the page, the JSON API, the event stream, and the checks on every request.

Every request: a Host this server answers to (a page of another site rebound to 127.0.0.1 is refused), and
security headers (a Content-Security-Policy that allows scripts and styles from this origin only: no inline
script). Every API request: a session (cookie) or a bearer token, else 401. Every state-changing request is a
POST (a GET to an action URL is 405 and changes nothing) whose Origin is this server's own, and, with a
session cookie, whose X-CSRF-Token header is the session's; an operator's, else 403. Failed logins are limited
per address (429).

    GET  /                          the page (the login form without a session)
    POST /login, /logout            a token for a session cookie; the cookie ended
    GET  /api/session               {user, role, csrf}
    GET  /api/agents[/NAME]         cards; one card with its chart, its penalties and its alerts
    GET  /api/agents/NAME/logs      ?stream=stdout|stderr&lines=N: the tail of its log
    GET  /api/graph                 {waves, depends_on}
    GET  /api/history, /api/diff    the versions; ?a=&b= a comparison (as `diff --output json`)
    GET  /api/confirm               ?action=&agent=: what the action touches, in words
    GET  /api/rollback              ?version=: the plan a rollback would carry out, with its digest
    GET  /api/backup                an archive of the manifests and the history (.tar.gz)
    GET  /api/audit                 the newest audit entries
    GET  /api/events                server-sent events: agents, progress, result, audit (resumes on Last-Event-ID)
    POST /api/actions/ACTION        start, stop, restart {agent}; start-all, stop-all, restart-all; emergency-stop
                                    {word, reason}; emergency-clear; rollback {version, plan}: 202 {id}
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orchestrator.core.errors import OrchestratorError
from orchestrator.core.names import LOGS_DIR
from orchestrator.interfaces.web.auth import LoginLimit, Session, Sessions, session_key
from orchestrator.interfaces.web.board import Board, Event
from orchestrator.interfaces.web.cards import confirmation
from orchestrator.interfaces.web.desk import ACTIONS, Desk, Refused, Who, plan_digest
from orchestrator.operations import compare as comparing
from orchestrator.state import audit
from orchestrator.state.history import History

HERE = Path(__file__).resolve().parent
COOKIE = "orchestrator_session"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Referrer-Policy same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with a form POST,
# and the login (a form) could not be told from a foreign one.
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}
LOG_TAIL_MAX = 2000          # lines
LOG_TAIL_BYTES = 512 * 1024  # read no more than the end of a log file
_CARD_LINK = re.compile(r"#agent=[a-z0-9][a-z0-9_-]{0,62}")   # where a login may lead: one agent's card, nothing else
PING = 15.0                  # seconds between keep-alive comments on an idle event stream


class Web:
    """The application's shared parts: the board, the desk, the sessions, the login limit, the addresses served."""

    def __init__(self, board: Board, desk: Desk, sessions: Sessions, *, hosts: set[str] | None) -> None:
        self.board, self.desk, self.sessions = board, desk, sessions
        self.limit = LoginLimit()
        self.hosts = hosts   # None: any Host (a non-loopback listen address, asked for)
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                            undefined=jinja2.StrictUndefined)

    # -- checks ------------------------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return self.sessions.bearer(header[7:].strip())
        return self.sessions.get(request.cookies.get(COOKIE, ""))

    def same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            referer = request.headers.get("referer")
            if referer is None:
                return False
            parts = urllib.parse.urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"

    def page(self, name: str, **values: Any) -> Response:
        return Response(self.templates.get_template(name).render(**values), media_type="text/html")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


Handler = Callable[[Request], Awaitable[Response]]


def _api(web: Web, handler: Callable[[Request, Session], Awaitable[Response]]) -> Handler:
    async def checked(request: Request) -> Response:
        session = web.session(request)
        if session is None:
            return _error(401, "log in first (or send Authorization: Bearer TOKEN; `orchestrator web --show-url`)")
        try:
            return await handler(request, session)
        except Refused as exc:
            return _error(exc.status, str(exc))
        except OrchestratorError as exc:
            return _error(400, str(exc))
    return checked


def build(web: Web) -> Starlette:
    """The application of `web`."""

    async def index(request: Request) -> Response:
        session = web.session(request)
        if session is None:
            return web.page("login.html.j2", error=request.query_params.get("error", ""))
        found = web.board.graph()
        # the first picture comes with the page (a JSON data block: no script runs from it, the CSP stands), so the
        # grid is drawn without waiting for the API or the event stream
        initial = {"session": {"user": session.user, "role": session.role, "csrf": session.csrf},
                   "graph": {"waves": [list(w) for w in found.waves], "depends_on": {k: list(v) for k, v in found.depends_on.items()}},
                   "agents": web.board.snapshot()}
        data = json.dumps(initial).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return web.page("page.html.j2", user=session.user, role=session.role, initial=data)

    async def login(request: Request) -> Response:
        address = request.client.host if request.client else "?"
        if not web.same_origin(request):
            return _error(403, "this login did not come from this page (Origin)")
        wait = web.limit.wait(address)
        if wait > 0:
            return _error(429, f"too many failed logins: try again in {wait:.0f} s", retry_after=round(wait))
        fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (fields.get("token") or [""])[0].strip()
        user = web.sessions.user_of(token) if token else None
        if user is None:
            web.limit.failed(address)
            web.desk.audit(Who("?", "-"), "login", address, "refused", "wrong token")
            return RedirectResponse("/?error=wrong+token", status_code=303)
        session = web.sessions.open(user)
        then = (fields.get("next") or [""])[0]
        response = RedirectResponse("/" + then if _CARD_LINK.fullmatch(then) else "/", status_code=303)
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    async def logout(request: Request) -> Response:
        session = web.session(request)
        if session is not None and session.id:
            if not web.same_origin(request) or request.headers.get("x-csrf-token") != session.csrf:
                return _error(403, "a logout needs this page's Origin and CSRF token")
            web.sessions.close(session.id)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def who(request: Request, session: Session) -> Response:
        return JSONResponse({"user": session.user, "role": session.role, "csrf": session.csrf})

    async def agents(request: Request, session: Session) -> Response:
        return JSONResponse(web.board.snapshot())

    async def agent(request: Request, session: Session) -> Response:
        name = request.path_params["name"]
        found = [c for c in web.board.snapshot()["agents"] if c["agent"] == name]
        if not found:
            return _error(404, f"unknown agent {name!r}")
        return JSONResponse({**found[0], "chart": web.board.chart(name)})

    async def logs(request: Request, session: Session) -> Response:
        name = request.path_params["name"]
        if name not in web.board.agents():
            return _error(404, f"unknown agent {name!r}")
        stream = request.query_params.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            return _error(400, f"unknown stream {stream!r} (expected stdout or stderr)")
        try:
            count = max(1, min(LOG_TAIL_MAX, int(request.query_params.get("lines", "100"))))
        except ValueError:
            return _error(400, "lines: expected a whole number")
        path = os.path.join(web.board.state_dir, LOGS_DIR, f"{name}.{'out' if stream == 'stdout' else 'err'}.log")
        return JSONResponse({"agent": name, "stream": stream, "lines": await asyncio.to_thread(_tail, path, count)})

    async def graph(request: Request, session: Session) -> Response:
        found = web.board.graph()
        return JSONResponse({"waves": [list(w) for w in found.waves], "depends_on": {k: list(v) for k, v in found.depends_on.items()}})

    async def history(request: Request, session: Session) -> Response:
        from orchestrator.interfaces.commands.versions import _rows

        return JSONResponse(await asyncio.to_thread(_rows, History(web.board.state_dir)))

    async def diff(request: Request, session: Session) -> Response:
        def compared() -> dict[str, object]:
            versions = History(web.board.state_dir)
            new = comparing.resolve(versions, b) if (b := request.query_params.get("b")) else comparing.live(versions)
            old = comparing.resolve(versions, a) if (a := request.query_params.get("a")) else comparing.previous(versions, new)
            return comparing.compare(comparing.version_side(versions, old), comparing.version_side(versions, new)).as_dict()
        return JSONResponse(await asyncio.to_thread(compared))

    async def confirm(request: Request, session: Session) -> Response:
        action, name = request.query_params.get("action", ""), request.query_params.get("agent", "")
        if action not in ACTIONS or action == "rollback":
            return _error(404, f"no confirmation for {action!r}")
        if action in ("start", "stop", "restart") and name not in web.board.agents():
            return _error(404, f"unknown agent {name!r}")
        return JSONResponse(confirmation(action, name or "all", web.board.graph(), up=web.board.up()).as_dict())

    async def rollback_plan(request: Request, session: Session) -> Response:
        from orchestrator.core.plan import to_lines

        prepared = await asyncio.to_thread(web.desk.prepare_rollback, request.query_params.get("version") or None)
        return JSONResponse({"version": prepared.target.number, "live": prepared.live.number,
                             "plan": [line for line, _ in to_lines(prepared.plan)], "changes": prepared.changes.as_dict(),
                             "files": [f.as_dict() for f in prepared.files], "left": list(prepared.left),
                             "digest": plan_digest(prepared.target.number, prepared.plan)})

    async def backup(request: Request, session: Session) -> Response:
        data = await asyncio.to_thread(web.desk.backup)
        web.desk.audit(Who(session.user, session.role), "backup", "all", "ok", f"{len(data)} bytes downloaded")
        name = time.strftime("orchestrator-backup-%Y%m%d-%H%M%S.tar.gz", time.gmtime())
        return Response(data, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def audit_log(request: Request, session: Session) -> Response:
        return JSONResponse([e.as_dict() for e in await asyncio.to_thread(audit.recent, web.board.state_dir, 100)])

    async def events(request: Request, session: Session) -> Response:
        # a browser's own reconnection sends Last-Event-ID; the page's, after the stream ended, sends ?last=
        last = request.headers.get("last-event-id") or request.query_params.get("last")
        queue = web.board.stream.subscribe()

        def message(event: Event) -> dict[str, str]:
            return {"id": web.board.stream.event_id(event), "event": event.kind, "data": json.dumps(event.data)}

        async def feed() -> AsyncIterator[dict[str, str]]:
            try:
                # first the picture now, then what this page missed of the actions (their steps and results)
                yield {"event": "agents", "data": json.dumps(web.board.snapshot())}
                for missed in web.board.stream.since(last) if last else []:
                    yield message(missed)
                while True:
                    yield message(await queue.get())
            finally:
                web.board.stream.unsubscribe(queue)

        return EventSourceResponse(feed(), ping=PING, headers={"Cache-Control": "no-store"})

    async def act(request: Request, session: Session) -> Response:
        scripted = not session.id and "origin" not in request.headers and "referer" not in request.headers
        if not scripted and not web.same_origin(request):   # a script with its token sends no Origin: no browser
            return _error(403, "this request did not come from this page (Origin)")
        if session.id and request.headers.get("x-csrf-token") != session.csrf:
            return _error(403, "missing or wrong CSRF token (X-CSRF-Token)")
        action = request.path_params["action"]
        if not session.operator:
            web.desk.audit(Who(session.user, session.role), action, "", "refused", "a viewer may not act")
            return _error(403, f"{session.user} is a viewer: only an operator may act")
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        accepted = web.desk.submit(Who(session.user, session.role), action, body)
        return JSONResponse(accepted, status_code=202)

    routes = [
        Route("/", index), Route("/login", login, methods=["POST"]), Route("/logout", logout, methods=["POST"]),
        Route("/api/session", _api(web, who)), Route("/api/agents", _api(web, agents)),
        Route("/api/agents/{name}", _api(web, agent)), Route("/api/agents/{name}/logs", _api(web, logs)),
        Route("/api/graph", _api(web, graph)), Route("/api/history", _api(web, history)), Route("/api/diff", _api(web, diff)),
        Route("/api/confirm", _api(web, confirm)), Route("/api/rollback", _api(web, rollback_plan)),
        Route("/api/backup", _api(web, backup)), Route("/api/audit", _api(web, audit_log)),
        Route("/api/events", _api(web, events)),
        Route("/api/actions/{action}", _api(web, act), methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if web.hosts is not None and request.headers.get("host", "") not in web.hosts:
            response: Response = _error(421, "this server does not answer to that Host")
        else:
            response = await call_next(request)
        for key, value in HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    return app


def _tail(path: str, count: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return []
    return lines[-count:]


def hosts_of(listen_host: str, port: int) -> set[str]:
    """The Host headers a loopback server answers to: its address and `localhost`, with the port."""
    return {f"{listen_host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}


def serve(state_dir: str, *, manifests_dir: str, env: str | None, users: Any, tokens: dict[str, str], host: str, port: int,
          remote: bool, ready: Callable[[str], None]) -> None:
    """Serve the control room of `state_dir` on host:port until interrupted (SIGTERM or SIGINT)."""
    import uvicorn

    from orchestrator.interfaces.web.board import Stream

    board = Board(state_dir, Stream())
    board.start()
    web = Web(board, Desk(board, manifests_dir=manifests_dir, env=env),
              Sessions(users, tokens, key=session_key(state_dir)),
              hosts=None if remote else hosts_of(host, port))
    config = uvicorn.Config(build(web), host=host, port=port, log_level="warning", access_log=False,
                            proxy_headers=False, server_header=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                break
            await asyncio.sleep(0.02)
        if server.started:
            ready(f"http://{host if ':' not in host else f'[{host}]'}:{port}/")
        await task

    asyncio.run(run())
    if not server.started:
        raise OrchestratorError(f"cannot listen on {host}:{port} (is the port taken?)")
