"""Probes check real sockets, HTTP servers and processes, bounded in time, and wait_ready stops for the right reason."""

from __future__ import annotations

import http.server
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import psutil
import pytest

from orchestrator.core.model import Probe
from orchestrator.host.probes import ProbeResult, check, describe, wait_ready

SLOW_SECONDS = 3.0   # how long /slow would take to answer if the test did not release it


# fixtures ----------------------------------------------------------------------------------------

@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections (the kernel completes them; nobody needs to accept)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound (so nobody else takes it) but not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    release: threading.Event   # set on the class by the fixture

    def do_GET(self) -> None:
        if self.path == "/ok":
            self._answer(200, b"fine")
        elif self.path == "/moved":
            # Redirects to a failing page: a probe that followed it would fail.
            self.send_response(302)
            self.send_header("Location", "/busy")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/busy":
            self._answer(503, b"overloaded\n  retry later\n" + b"x" * 500)
        elif self.path == "/slow":
            self.release.wait(SLOW_SECONDS)
            self._answer(200, b"late")
        elif self.path == "/trickle":
            # Headers one byte at a time, until released or the client goes away.
            self.wfile.write(b"HTTP/1.0 200 OK\r\n")
            while not self.release.wait(0.05):
                self.wfile.write(b"X")
                self.wfile.flush()
        else:
            self._answer(404, b"")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False   # so server_close() joins every handler thread

    def handle_error(self, request: object, client_address: object) -> None:
        pass   # a probe that gave up closes its connection: writing the late answer fails, as expected


@pytest.fixture
def http_base() -> Iterator[str]:
    """A small HTTP server on 127.0.0.1; yields its base URL. Stopped, and its threads joined, whatever happens."""
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"release": release})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


class FakeClock:
    """clock/sleep seams: time moves only when slept; each sleep moves it by `scale` times the slice."""

    def __init__(self, scale: float = 1.0) -> None:
        self.now = 0.0
        self.scale = scale
        self.slices: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.slices.append(seconds)
        self.now += seconds * self.scale


def _gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for an unrelated parent to reap it counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _exec(script: str, **fields: float) -> Probe:
    return Probe(exec=("sh", "-c", script), **fields)


# describe ----------------------------------------------------------------------------------------

def test_describe_names_the_kind_and_target_and_quotes_exec_arguments_like_a_shell():
    assert describe(Probe(tcp="127.0.0.1:9101")) == "tcp 127.0.0.1:9101"
    assert describe(Probe(http="http://127.0.0.1:9101/health")) == "http http://127.0.0.1:9101/health"
    assert describe(Probe(exec=("sh", "-c", "x y"))) == "exec sh -c 'x y'"


# tcp ---------------------------------------------------------------------------------------------

def test_tcp_check_passes_when_the_port_accepts_a_connection(listening_port):
    result = check(Probe(tcp=f"127.0.0.1:{listening_port}"), timeout=1.0)
    assert result == ProbeResult(ok=True, detail=f"connected to 127.0.0.1:{listening_port}", elapsed=result.elapsed)
    assert result.attempts == 1
    assert 0 <= result.elapsed < 1.0


def test_tcp_check_fails_saying_the_connection_was_refused(closed_port):
    result = check(Probe(tcp=f"127.0.0.1:{closed_port}"), timeout=1.0)
    assert not result.ok
    assert result.detail == f"connection refused by 127.0.0.1:{closed_port}"


def test_tcp_check_understands_a_bracketed_ipv6_address():
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        sock.listen(1)
        target = f"[::1]:{sock.getsockname()[1]}"
        result = check(Probe(tcp=target), timeout=1.0)
    finally:
        sock.close()
    assert result.ok, result.detail
    assert result.detail == f"connected to {target}"


# http --------------------------------------------------------------------------------------------

def test_http_check_passes_on_200(http_base):
    result = check(Probe(http=f"{http_base}/ok"), timeout=2.0)
    assert result.ok
    assert result.detail == f"HTTP 200 from {http_base}/ok"


def test_http_check_counts_a_redirect_as_ready_without_following_it(http_base):
    result = check(Probe(http=f"{http_base}/moved"), timeout=2.0)
    assert result.ok, result.detail
    assert result.detail == f"HTTP 302 from {http_base}/moved"


def test_http_check_fails_on_503_quoting_the_start_of_the_body_on_one_line(http_base):
    result = check(Probe(http=f"{http_base}/busy"), timeout=2.0)
    assert not result.ok
    prefix = f"HTTP 503 from {http_base}/busy: "
    assert result.detail.startswith(prefix + "overloaded retry later xxx")
    assert "\n" not in result.detail
    assert len(result.detail) - len(prefix) <= 200


def test_http_check_fails_saying_the_connection_was_refused(closed_port):
    url = f"http://127.0.0.1:{closed_port}/health"
    result = check(Probe(http=url), timeout=1.0)
    assert not result.ok
    assert result.detail == f"connection refused by {url}"


def test_http_check_gives_up_at_its_timeout_when_the_server_is_slow(http_base):
    started = time.monotonic()
    result = check(Probe(http=f"{http_base}/slow"), timeout=0.3)
    took = time.monotonic() - started
    assert not result.ok
    assert result.detail == f"timed out after 0.3s waiting for {http_base}/slow"
    assert 0.25 <= took < 0.8


def test_http_check_ends_at_its_timeout_and_leaves_no_request_behind_when_the_server_trickles(http_base):
    started = time.monotonic()
    result = check(Probe(http=f"{http_base}/trickle"), timeout=0.3)
    took = time.monotonic() - started
    assert result.detail == f"timed out after 0.3s waiting for {http_base}/trickle"
    assert took < 0.8
    # Every read gets a byte in time, so only cutting the connection ends the request's thread.
    give_up = time.monotonic() + 0.5
    while _probe_threads() and time.monotonic() < give_up:
        time.sleep(0.01)
    assert not _probe_threads()


def _probe_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("probe ")]


def test_http_check_ignores_proxy_environment_variables(http_base, closed_port, monkeypatch):
    dead_proxy = f"http://127.0.0.1:{closed_port}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # The environment really does reroute urllib's default opener to the dead proxy...
    with pytest.raises(urllib.error.URLError):
        urllib.request.build_opener().open(f"{http_base}/ok", timeout=2.0).close()
    # ...but not the probe.
    result = check(Probe(http=f"{http_base}/ok"), timeout=2.0)
    assert result.ok, result.detail


# exec --------------------------------------------------------------------------------------------

def test_exec_check_passes_when_the_command_exits_0():
    result = check(_exec("exit 0"), timeout=5.0)
    assert result.ok
    assert result.detail == "exit status 0"


def test_exec_check_fails_with_the_exit_status_and_the_last_stderr_line():
    result = check(_exec("echo early >&2; echo boom >&2; echo; exit 3"), timeout=5.0)
    assert not result.ok
    assert result.detail == "exit status 3: boom"


def test_exec_check_quotes_stdout_when_stderr_is_empty():
    result = check(_exec("echo not yet; exit 1"), timeout=5.0)
    assert result.detail == "exit status 1: not yet"


def test_exec_check_truncates_a_long_output_line_to_200_characters():
    result = check(_exec("printf '%0300d\\n' 0 >&2; exit 1"), timeout=5.0)
    assert result.detail.startswith("exit status 1: 000")
    assert len(result.detail) == len("exit status 1: ") + 200


def test_exec_check_of_a_missing_program_fails_with_a_clear_detail_instead_of_raising():
    result = check(Probe(exec=("definitely-not-a-program-7f3a",)), timeout=5.0)
    assert not result.ok
    assert result.detail == "cannot run definitely-not-a-program-7f3a: No such file or directory"


def test_exec_check_runs_with_the_given_environment_and_working_directory(tmp_path):
    env = {"PATH": os.environ.get("PATH", os.defpath), "PROBE_VAR": "yes", "EXPECTED": str(tmp_path.resolve())}
    probe = _exec('test "$PROBE_VAR" = yes && test "$(pwd -P)" = "$EXPECTED"')
    assert check(probe, timeout=5.0, env=env, cwd=str(tmp_path)).ok
    assert not check(probe, timeout=5.0, env={**env, "PROBE_VAR": "no"}, cwd=str(tmp_path)).ok


def test_exec_check_kills_and_reaps_a_command_that_outlives_its_timeout(tmp_path):
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    result = check(_exec(f"echo $$ > {pidfile}; exec sleep 30"), timeout=0.5)
    took = time.monotonic() - started
    assert not result.ok
    assert result.detail == "timed out after 0.5s (process group killed)"
    assert 0.45 <= took < 1.5
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):   # killed and reaped: not even a zombie is left
        os.kill(pid, 0)


def test_exec_check_timeout_kills_the_commands_children_too(tmp_path):
    pidfile = tmp_path / "pid"
    result = check(_exec(f"sleep 30 & echo $! > {pidfile}; wait"), timeout=0.5)
    assert result.detail.startswith("timed out after 0.5s")
    pid = int(pidfile.read_text())
    give_up = time.monotonic() + 2.0
    while not _gone(pid) and time.monotonic() < give_up:
        time.sleep(0.02)
    assert _gone(pid)


# wait_ready --------------------------------------------------------------------------------------

def test_wait_ready_retries_until_a_port_that_opens_late_accepts(tmp_path):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    opener = threading.Timer(0.5, sock.listen)
    try:
        sock.bind(("127.0.0.1", 0))   # reserved, refusing connections until the timer calls listen()
        probe = Probe(tcp=f"127.0.0.1:{sock.getsockname()[1]}", period=0.1)
        opener.start()
        result = wait_ready(probe, deadline=time.monotonic() + 5.0)
    finally:
        opener.cancel()
        opener.join(5)
        sock.close()
    assert result.ok, result.detail
    assert result.attempts > 1
    assert 0.45 <= result.elapsed < 2.0


def test_wait_ready_fails_at_the_deadline_with_the_last_checks_detail(closed_port):
    probe = Probe(tcp=f"127.0.0.1:{closed_port}", period=0.2)
    result = wait_ready(probe, deadline=time.monotonic() + 1.0)
    assert not result.ok
    assert re.fullmatch(rf"not ready after 1\.[01]s: connection refused by 127\.0\.0\.1:{closed_port}", result.detail), result.detail
    assert 0.95 <= result.elapsed < 1.5
    assert result.attempts >= 3


def test_wait_ready_stops_within_a_tenth_of_a_second_once_the_process_has_died(closed_port):
    dies_at = time.monotonic() + 0.3

    def alive() -> str | None:
        return "exited with status 1" if time.monotonic() >= dies_at else None

    probe = Probe(tcp=f"127.0.0.1:{closed_port}", period=10.0)   # a long period: death is noticed between checks
    started = time.monotonic()
    result = wait_ready(probe, deadline=started + 20.0, alive=alive)
    assert result == ProbeResult(ok=False, detail="exited with status 1", elapsed=result.elapsed, attempts=1)
    assert time.monotonic() - started < 0.3 + 0.25


def test_wait_ready_checks_nothing_when_the_process_is_already_dead(closed_port):
    result = wait_ready(Probe(tcp=f"127.0.0.1:{closed_port}"), deadline=time.monotonic() + 5.0,
                        alive=lambda: "exited with status 1")
    assert (result.ok, result.detail, result.attempts) == (False, "exited with status 1", 0)


def test_wait_ready_deadline_arithmetic_on_a_fake_clock(closed_port):
    fake = FakeClock()
    polls: list[float] = []

    def alive() -> None:
        polls.append(fake.now)

    probe = Probe(tcp=f"127.0.0.1:{closed_port}", period=1.0, initial_delay=0.5)
    result = wait_ready(probe, deadline=5.0, alive=alive, clock=fake.clock, sleep=fake.sleep)
    # Checks at 0.5, 1.5, 2.5, 3.5 and 4.5; the wait after the last one reaches the deadline.
    assert not result.ok
    assert result.attempts == 5
    assert result.detail == f"not ready after 5.0s: connection refused by 127.0.0.1:{closed_port}"
    assert result.elapsed == pytest.approx(5.0)
    assert sum(fake.slices) == pytest.approx(5.0)
    assert max(fake.slices) <= 0.1 + 1e-9   # slept in slices, asking alive() in between
    assert len(polls) >= 50
    assert all(b - a <= 0.1 + 1e-9 for a, b in zip(polls, polls[1:], strict=False))


@pytest.mark.parametrize(("period", "deadline", "scale", "expected"), [
    (5.0, 0.3, 1.0, "not ready after 0.3s: timed out after 0.3s"),      # the time left to the deadline
    (0.2, 0.0, 1.0, "not ready after 0.0s: timed out after 0.05s"),     # never less than 0.05 s; one check even past the deadline
    (0.2, 3.0, 100.0, "not ready after 10.0s: timed out after 1s"),     # never more than max(period, 1 s)
])
def test_wait_ready_gives_each_check_the_time_left_within_bounds(period, deadline, scale, expected):
    fake = FakeClock(scale)
    probe = _exec("exec sleep 30", period=period)
    result = wait_ready(probe, deadline=deadline, clock=fake.clock, sleep=fake.sleep)
    assert not result.ok
    assert result.attempts == 1
    assert result.detail == expected + " (process group killed)"
