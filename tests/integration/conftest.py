"""The fixtures of the integration tests: a project with a real supervisord in a temporary directory, and a webhook.

`project` writes a manifest set, runs the real `orchestrator` command against
it, and always tears down: `orchestrator down`, then whatever is still alive
of the supervisord it started and of the processes marked with its state
directory is ended (never anything else: nothing is killed by name).
`prometheus` is Debian's Prometheus on 127.0.0.1 on a free port, its configuration and data in the test's
temporary directory, scraping `prometheus.target` (give the project's exporter that address) every second; it
is stopped (SIGTERM, then SIGKILL) even when the test fails.
`webhook` is an HTTP server on 127.0.0.1 that keeps every notification it is
sent, by path, so one server stands for several targets.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from orchestrator.host import cgroups, orphans
from orchestrator.supervisord import launching, render

TOY = Path(__file__).resolve().parent / "toy.py"
ORCHESTRATOR = str(Path(sys.executable).parent / "orchestrator")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(predicate: Callable[[], object], timeout: float, *, interval: float = 0.05, message: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


# An agent that exits 1, 0.2 s after each start, logging both with its own clock (a shell script: its own
# start costs a millisecond, so the stamps time orchestrator, not an interpreter's start); it stays up
# while FLAG exists, if one is given.
CRASHER = """#!/bin/sh
echo "start $(date +%s.%N) $$" >> "$1"
if [ -n "$2" ] && [ -e "$2" ]; then exec sleep 3600; fi
sleep 0.2
echo "exit $(date +%s.%N) $$" >> "$1"
exit 1
"""


def crasher(project: Project, name: str, *, restart: str, extra: str = "", flag: Path | None = None) -> Path:
    """Write agent `name` running CRASHER with `restart` (a YAML mapping) and `extra` YAML lines; its log file."""
    log = project.root / f"{name}.times"
    script = project.root / "crasher.sh"
    script.write_text(CRASHER)
    script.chmod(0o755)
    args = [str(script), str(log)] + ([str(flag)] if flag else [])
    project.write(f"agents/{name}.yaml", textwrap.dedent(f"""
        name: {name}
        command: [{', '.join(json.dumps(a) for a in args)}]
        restart: {restart}
        stop_timeout: 2s
    """) + extra)
    return log


def logged(log: Path, what: str) -> list[tuple[float, str]]:
    """(time, value) of each `WHAT TIME VALUE` line a test script logged, in order (the value is a pid, or a figure).

    Only whole lines count: a line still being appended, or one whose `$(date)` was cut short because a stop signalled
    the script's process group (so `date` died and the time is missing), is skipped rather than misread."""
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().split("\n")[:-1]:  # the part after the last newline is not a whole line yet
        fields = line.split()
        if len(fields) == 3 and fields[0] == what:
            try:
                rows.append((float(fields[1]), fields[2]))
            except ValueError:
                continue
    return rows


def stamps(log: Path, what: str) -> list[float]:
    """The times the crasher logged for `what` (start or exit)."""
    return [when for when, _ in logged(log, what)]


def gaps(log: Path, *, after: float = 0.0) -> list[float]:
    """Seconds from each logged exit to the next logged start."""
    starts = [t for t in stamps(log, "start") if t >= after]
    exits = [t for t in stamps(log, "exit") if t >= after]
    return [round(start - end, 3) for end, start in zip(exits, starts[1:], strict=False)]


def within(actual: float, expected: float) -> bool:
    """A restart's timing tolerance: 15% or 100 ms, whichever is larger."""
    return abs(actual - expected) <= max(0.15 * expected, 0.1)


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests = root / "manifests"
        self.state = root / ".orchestrator"
        self.log = root / "events.log"
        (self.manifests / "agents").mkdir(parents=True)
        # each project's exporter on a port of its own: two tests (or two runs) never wait for one another's port
        (self.manifests / "orchestrator.yaml").write_text(f"project: test\nexporter: {{listen: \"127.0.0.1:{free_ports(1)[0]}\"}}\n")

    def write(self, rel: str, text: str) -> None:
        path = self.manifests / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))

    def remove(self, rel: str) -> None:
        (self.manifests / rel).unlink()

    def toy(self, name: str, port: int, *, depends_on: list[str] = (), delay: float = 0.0, extra: list[str] = (),
            timeout: str = "10s", retries: int = 0, more: str = "") -> None:
        """An agent running toy.py, ready once it listens on `port`."""
        argv = [sys.executable, str(TOY), name, "--port", str(port), "--log", str(self.log), "--delay", str(delay), *extra]
        command = ", ".join(f'"{a}"' for a in argv)
        self.write(f"agents/{name}.yaml", textwrap.dedent(f"""
            name: {name}
            command: [{command}]
            depends_on: [{', '.join(depends_on)}]
            readiness: {{tcp: "127.0.0.1:{port}", timeout: {timeout}, period: 50ms, retries: {retries}}}
            stop_timeout: 5s
        """) + textwrap.dedent(more))

    def run(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([ORCHESTRATOR, "-m", str(self.manifests), *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "NO_COLOR": "1"}, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"orchestrator {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def events(self) -> list[tuple[str, str, float, int]]:
        """(agent, start|ready|stop, time, pid) lines the toys wrote, in order."""
        if not self.log.exists():
            return []
        rows = []
        for line in self.log.read_text().splitlines():
            name, what, when, pid = line.split()
            rows.append((name, what, float(when), int(pid)))
        return rows

    def runtime(self, agent: str) -> dict[str, object]:
        """The restart keeper's record of `agent` (empty until it has one)."""
        import json
        path = self.state / "runtime" / f"{agent}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def supervisord_pid(self) -> int | None:
        return _pid_in(self.state / "supervisord.pid")

    def pids(self) -> dict[str, int]:
        """Agent -> pid of its running process, from `status --output json`."""
        import json
        done = self.run("status", "--output", "json")
        assert done.returncode in (0, 3), done.stderr
        return {row["agent"]: row["pid"] for row in json.loads(done.stdout) if row["pid"]}

    def teardown(self) -> None:
        """Stop everything the test started, even where a failed test left it: `down`, then, for every state
        directory under this test's root that running processes are marked with (a test may move it),
        its supervisord killed by the pid in its pid file, every marked process ended, and whatever is still in its
        agents' cgroups killed, the cgroups removed."""
        self.run("down", "--yes", timeout=120)
        states = {str(self.state)} | {state for state in _marked_states() if state.startswith(str(self.root) + os.sep)}
        for state in sorted(states):
            pid = _pid_in(Path(state) / "supervisord.pid")
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            orphans.sweep(state)
            layout, scope = cgroups.detect(), launching.scope(state)   # and whatever is left in its agents' cgroups
            for agent in cgroups.agents(layout, scope):
                cgroups.kill(layout, scope, agent)
            cgroups.remove(layout, scope)


def _pid_in(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def _marked_states() -> set[str]:
    """The state directories running processes are marked with."""
    found = set()
    for process in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            state = process.environ().get(render.MARKER)
            if state:
                found.add(state)
    return found


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    instance = Project(tmp_path)
    try:
        yield instance
    finally:
        instance.teardown()


class Webhook:
    """A notification target on 127.0.0.1: answers every POST 204 and keeps its JSON body, by path."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict]] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.bodies.append((self.path, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def received(self, path: str | None = None) -> list[dict]:
        """The bodies POSTed (to `path`, or to any), in the order they arrived."""
        return [body for at, body in list(self.bodies) if path is None or at == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


class Prometheus:
    def __init__(self, root: Path, port: int, target: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.target = target
        config = root / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [{"job_name": "orchestrator", "static_configs": [{"targets": [target]}]}]}))
        self.log = (root / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def query(self, expr: str) -> list[dict[str, object]]:
        answer = self.ask(expr)
        return list(answer["data"]["result"]) if answer.get("status") == "success" else []

    def ask(self, expr: str) -> dict[str, Any]:
        """Prometheus's whole answer to an instant query: {"status": "success", "data": ...}, or {"status": "error",
        "errorType", "error"} (a query that does not parse is `bad_data`); {} when Prometheus cannot be reached."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return dict(json.load(reply))
        except urllib.error.HTTPError as exc:   # 400 and 422 carry Prometheus's error as JSON
            try:
                return dict(json.load(exc))
            except ValueError:
                return {}
        except OSError:
            return {}

    def names(self, selector: str) -> set[str]:
        return {str(row["metric"]["__name__"]) for row in self.query(f"count by (__name__) ({selector})")}  # type: ignore[index]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    if not shutil.which("prometheus"):
        pytest.fail("Debian's prometheus is not installed (make test installs it)")
    ports = free_ports(2)
    instance = Prometheus(tmp_path, ports[0], f"127.0.0.1:{ports[1]}")
    try:
        yield instance
    finally:
        instance.stop()
