"""Running readiness and liveness probes: one check, and waiting until ready.

Owned here: what a `Probe` of the model means when it is run. `check` makes
one tcp, http or exec check and answers with a `ProbeResult` (passed or not,
and one line a person understands); it never takes longer than the time it is
given and never raises for a failed check. `wait_ready` repeats checks every
`period` until one passes, a deadline passes, or the process being probed
dies. `describe` names a probe for messages.

Called by apply's sequencer and the boot listener (readiness: may a dependent
agent start?), by status (one check), and later by the runtime policies
(liveness, one `check` per period). Standard library only. Time and sleeping
are parameters of `wait_ready`, so its arithmetic can be tested with a fake
clock.

Rules kept here, because a health check must not mislead or leak:
  * http checks ignore proxy environment variables (a loopback health check
    must not be sent to a proxy) and do not follow redirects (a 3xx means the
    server answers: ready);
  * an exec check runs in its own session; on timeout its whole process group
    is killed and the child reaped, so no check leaves a process behind.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import shlex
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from orchestrator.core.addresses import split_host_port
from orchestrator.core.model import Probe

DETAIL_CHARS = 200      # longest body snippet or output line quoted in a detail
MIN_CHECK_TIMEOUT = 0.05
ALIVE_POLL = 0.1        # how often `alive` is asked while waiting between checks
_BODY_BYTES = 4096      # read at most this much of an http body, for the snippet


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one check, or of a whole `wait_ready`."""

    ok: bool
    detail: str       # one line, e.g. "connected to 127.0.0.1:9101", "exit status 1: boom"
    elapsed: float    # seconds this check (for wait_ready: the whole wait) took
    attempts: int = 1


def describe(probe: Probe) -> str:
    """The probe in a few words: "tcp 127.0.0.1:9101", "http http://...", "exec sh -c 'x'"."""
    if probe.exec is not None:
        return f"exec {shlex.join(probe.exec)}"
    return f"{probe.kind} {probe.target}"


def check(probe: Probe, *, timeout: float, env: Mapping[str, str] | None = None, cwd: str | None = None) -> ProbeResult:
    """One check, never longer than `timeout` seconds, never raises for a failed check.

    `env` and `cwd` apply to exec probes only (None: this process's).
    """
    timeout = max(timeout, MIN_CHECK_TIMEOUT)
    started = time.monotonic()
    if probe.tcp is not None:
        ok, detail = _check_tcp(probe.tcp, timeout)
    elif probe.http is not None:
        ok, detail = _check_http(probe.http, timeout)
    elif probe.exec:
        ok, detail = _check_exec(probe.exec, timeout, env, cwd)
    else:
        ok, detail = False, "probe has no check (expected one of tcp, http, exec)"
    return ProbeResult(ok=ok, detail=detail, elapsed=time.monotonic() - started)


def wait_ready(probe: Probe, *, deadline: float, alive: Callable[[], str | None] = lambda: None,
               env: Mapping[str, str] | None = None, cwd: str | None = None,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> ProbeResult:
    """Check `probe` every `period` (after `initial_delay`) until it passes, `deadline` passes, or the process dies.

    `deadline` is a `clock()` value. `alive()` says why the probed process is
    no longer up (e.g. "exited with status 1") or None while it is; it is
    asked before each check and at least every 0.1 s in between, and a reason
    ends the wait at once with that reason as the detail. At least one check
    is made. Each check gets the time left until the deadline, but no more
    than max(period, 1 s) and no less than 0.05 s. The result's `elapsed` is
    the whole wait and `attempts` the number of checks made.
    """
    started = clock()
    attempts = 0

    def outcome(ok: bool, detail: str, elapsed: float | None = None) -> ProbeResult:
        return ProbeResult(ok=ok, detail=detail, elapsed=clock() - started if elapsed is None else elapsed, attempts=attempts)

    died = _pause(min(started + probe.initial_delay, deadline), alive, clock, sleep)
    if died:
        return outcome(False, died)
    while True:
        now = clock()
        limit = max(MIN_CHECK_TIMEOUT, min(deadline - now, max(probe.period, 1.0)))
        result = check(probe, timeout=limit, env=env, cwd=cwd)
        attempts += 1
        if result.ok:
            return outcome(True, result.detail)
        died = _pause(min(now + probe.period, deadline), alive, clock, sleep)
        if died:
            return outcome(False, died)
        now = clock()
        if now >= deadline:
            return outcome(False, f"not ready after {now - started:.1f}s: {result.detail}", now - started)


def _pause(until: float, alive: Callable[[], str | None], clock: Callable[[], float],
           sleep: Callable[[float], None]) -> str | None:
    """Sleep until `until` in slices of ALIVE_POLL, asking `alive` before each; its reason, or None."""
    while True:
        reason = alive()
        if reason:
            return reason
        now = clock()
        if now >= until:
            return None
        sleep(min(ALIVE_POLL, until - now))


# tcp ---------------------------------------------------------------------------------------------

def _check_tcp(target: str, timeout: float) -> tuple[bool, str]:
    try:
        host, port = split_host_port(target)
    except ValueError:
        return False, f"cannot connect to {target}: not HOST:PORT"
    deadline = time.monotonic() + timeout
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return False, f"cannot resolve {target}: {_reason(exc, timeout)}"
    # One connection attempt per address, all within `timeout` together
    # (socket.create_connection would give each address the whole timeout).
    error: OSError = TimeoutError()
    for family, kind, proto, _, address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            error = TimeoutError()
            break
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(left)
                sock.connect(address)
            return True, f"connected to {target}"
        except OSError as exc:
            error = exc
    if isinstance(error, ConnectionRefusedError):
        return False, f"connection refused by {target}"
    if isinstance(error, TimeoutError):
        return False, f"timed out after {_seconds(timeout)} connecting to {target}"
    return False, f"cannot connect to {target}: {_reason(error, timeout)}"


# http --------------------------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer (ready), not a place to go: urllib then raises HTTPError with the 3xx code."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        return None


class _Connections:
    """The connections urllib opens for one check, so a check that ran out of time can cut them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened: list[http.client.HTTPConnection] = []

    def factory(self, cls: type[http.client.HTTPConnection]) -> Callable[..., http.client.HTTPConnection]:
        def make(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            connection = cls(host, **kwargs)
            with self._lock:
                self._opened.append(connection)
            return connection
        return make

    def cut(self) -> None:
        with self._lock:
            opened = list(self._opened)
        for connection in opened:
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)   # wakes a thread blocked reading it


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, connections: _Connections) -> None:
        super().__init__()
        self._connections = connections

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connections.factory(http.client.HTTPConnection), req)


@functools.lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    """The one TLS context of every https probe: making one loads the system's certificates, and a context for
    each probe was most of the CPU of a page watching five agents (two probes each, twice a second)."""
    return ssl.create_default_context()


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, connections: _Connections) -> None:
        self._tls = _tls()
        super().__init__(context=self._tls)
        self._connections = connections

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connections.factory(http.client.HTTPSConnection), req, context=self._tls)


def _check_http(url: str, timeout: float) -> tuple[bool, str]:
    """GET `url` in a worker thread, so that the check ends at `timeout` whatever the server does."""
    connections = _Connections()
    answer: list[tuple[bool, str]] = []

    def get() -> None:
        try:
            answer.append(_get(url, timeout, connections))
        except Exception as exc:   # whatever urllib raises is this check's answer, not the caller's problem
            answer.append((False, f"cannot reach {url}: {_reason(exc, timeout)}"))

    worker = threading.Thread(target=get, name=f"probe {url}", daemon=True)
    worker.start()
    worker.join(timeout)
    if answer:
        return answer[0]
    connections.cut()   # the worker then fails at once and ends
    return False, f"timed out after {_seconds(timeout)} waiting for {url}"


def _get(url: str, timeout: float, connections: _Connections) -> tuple[bool, str]:
    # ProxyHandler({}): no proxies whatever http_proxy/HTTP_PROXY/... say.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                         _HTTPHandler(connections), _HTTPSHandler(connections))
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "orchestrator-probe", "Connection": "close"})
        with opener.open(request, timeout=timeout) as response:
            status: int = response.status
            body: bytes = response.read(_BODY_BYTES)
    except urllib.error.HTTPError as exc:
        status = exc.code
        try:
            body = exc.read(_BODY_BYTES)
        except (OSError, http.client.HTTPException):
            body = b""
        finally:
            exc.close()
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return False, f"connection refused by {url}"
        if isinstance(reason, TimeoutError):
            return False, f"timed out after {_seconds(timeout)} waiting for {url}"
        return False, f"cannot reach {url}: {_reason(reason, timeout)}"
    except TimeoutError:
        return False, f"timed out after {_seconds(timeout)} waiting for {url}"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return False, f"cannot reach {url}: {_reason(exc, timeout)}"
    if 200 <= status < 400:
        return True, f"HTTP {status} from {url}"
    snippet = _one_line(body.decode("utf-8", errors="replace"))
    return False, f"HTTP {status} from {url}" + (f": {snippet}" if snippet else "")


# exec --------------------------------------------------------------------------------------------

def _check_exec(argv: tuple[str, ...], timeout: float, env: Mapping[str, str] | None,
                cwd: str | None) -> tuple[bool, str]:
    try:
        child = subprocess.Popen(argv, env=dict(env) if env is not None else None, cwd=cwd,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
    except OSError as exc:
        where = f" (working directory {cwd})" if cwd is not None and exc.filename == cwd else ""
        return False, f"cannot run {argv[0]}{where}: {exc.strerror or exc}"
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        return False, f"timed out after {_seconds(timeout)} (process group killed)"
    except BaseException:
        _kill_group(child)
        raise
    status = child.returncode
    if status == 0:
        return True, "exit status 0"
    if status < 0:
        try:
            how = f"killed by signal {signal.Signals(-status).name}"
        except ValueError:
            how = f"killed by signal {-status}"
    else:
        how = f"exit status {status}"
    line = _last_line(err) or _last_line(out)
    return False, how + (f": {line}" if line else "")


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group (its own session), then reap the child and close its pipes.

    The pipes are closed, not read: a process that left the group could hold
    them open forever.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)   # the child is not reaped yet, so its pid is still its group's
    child.wait()
    for pipe in (child.stdout, child.stderr):
        if pipe is not None:
            pipe.close()


def _last_line(data: bytes) -> str:
    for line in reversed(data.decode("utf-8", errors="replace").splitlines()):
        if line.strip():
            return _one_line(line)
    return ""


# wording -----------------------------------------------------------------------------------------

def _one_line(text: str) -> str:
    """Whitespace collapsed to single spaces, cut to DETAIL_CHARS."""
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS - 3] + "..."


def _seconds(value: float) -> str:
    return f"{round(value, 2):g}s"


def _reason(exc: BaseException | str, timeout: float) -> str:
    if isinstance(exc, str):
        return exc
    if isinstance(exc, TimeoutError):
        return f"timed out after {_seconds(timeout)}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _one_line(str(exc)) or type(exc).__name__
