"""owner_problem tells a port the agent's own process tree listens on from one another process holds, with real processes."""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil
import pytest

from orchestrator.host.ports import owner_problem

READY_WITHIN = 10.0   # seconds a child gets to print its "ready" line
END_WITHIN = 5.0      # seconds a child gets to exit once signalled

# Listens on argv[1], port chosen by the kernel; prints "ready PORT".
LISTEN = """
import signal, socket, sys
sock = socket.socket()
sock.bind((sys.argv[1], 0))
sock.listen()
print("ready", sock.getsockname()[1], flush=True)
signal.pause()
"""

# Listens on nothing.
IDLE = """
import signal
print("ready", flush=True)
signal.pause()
"""

# Forks a grandchild that holds the listening socket; the child only waits for it.
FORK_LISTEN = """
import os, signal, socket
child = os.fork()
if child == 0:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    print("ready", sock.getsockname()[1], flush=True)
    signal.pause()
else:
    os.waitpid(child, 0)
"""

# An agent that starts too late: its port (argv[1]) is taken, so it dies of EADDRINUSE.
CLASH = """
import socket, sys
sock = socket.socket()
try:
    sock.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as exc:
    print("ready", exc.errno, flush=True)
    sys.exit(1)
"""


@dataclass(frozen=True)
class Child:
    process: subprocess.Popen[str]
    said: list[str]    # the words after "ready"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.said[0])


Spawn = Callable[..., Child]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """spawn(CODE, *args) runs `python -c CODE args` and returns once it printed "ready"; all are ended afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> Child:
        process = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, text=True)
        started.append(process)
        return Child(process, _ready_words(process))

    try:
        yield start
    finally:
        for process in reversed(started):
            _end(process)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 nobody listens on: bound by this test (so nobody else takes it), not listening."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _ready_words(process: subprocess.Popen[str]) -> list[str]:
    """The words after "ready" on the child's first line, waiting at most READY_WITHIN."""
    stdout = process.stdout
    if stdout is None:
        raise RuntimeError("child started without a stdout pipe")
    deadline = time.monotonic() + READY_WITHIN
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([stdout], [], [], left)
        if readable:
            words = stdout.readline().split()
            if words[:1] == ["ready"]:
                return words[1:]
            if not words:
                break   # end of output: the child died
    pytest.fail(f"child did not say ready within {READY_WITHIN}s (exit status {process.poll()})")


def _end(process: subprocess.Popen[str]) -> None:
    """Kill the child's descendants (its waitpid reaps them), then the child; wait for all of them."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    for descendant in descendants:
        with contextlib.suppress(psutil.Error):
            descendant.kill()
    psutil.wait_procs(descendants, timeout=END_WITHIN)
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(END_WITHIN)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


# the tree owns the port --------------------------------------------------------------------------

def test_a_port_the_agent_itself_listens_on_is_no_problem(spawn: Spawn) -> None:
    agent = spawn(LISTEN, "127.0.0.1")

    assert owner_problem(f"127.0.0.1:{agent.port}", "tcp", [agent.pid]) is None


def test_a_grandchild_holding_the_socket_counts_as_the_agent(spawn: Spawn) -> None:
    agent = spawn(FORK_LISTEN)
    holder = psutil.Process(agent.pid).children()
    assert len(holder) == 1 and holder[0].pid != agent.pid

    assert owner_problem(f"127.0.0.1:{agent.port}", "tcp", [agent.pid]) is None


def test_a_wildcard_listener_covers_the_loopback_address(spawn: Spawn) -> None:
    agent = spawn(LISTEN, "0.0.0.0")
    bystander = spawn(IDLE)

    assert owner_problem(f"127.0.0.1:{agent.port}", "tcp", [agent.pid]) is None
    problem = owner_problem(f"127.0.0.1:{agent.port}", "tcp", [bystander.pid])
    assert problem is not None
    assert problem.startswith(f"127.0.0.1:{agent.port} is answered by pid {agent.pid} ({sys.executable} -c import signal")
    assert problem.endswith("...), not by this agent's processes")   # the command line, cut short


def test_an_http_target_is_matched_by_the_url_host_and_port(spawn: Spawn) -> None:
    agent = spawn(LISTEN, "127.0.0.1")
    bystander = spawn(IDLE)
    url = f"http://127.0.0.1:{agent.port}/health"

    assert owner_problem(url, "http", [agent.pid]) is None
    problem = owner_problem(url, "http", [bystander.pid])
    assert problem is not None and problem.startswith(f"127.0.0.1:{agent.port} is answered by pid {agent.pid} (")


def test_localhost_stands_for_the_loopback_addresses(spawn: Spawn) -> None:
    agent = spawn(LISTEN, "127.0.0.1")
    bystander = spawn(IDLE)

    assert owner_problem(f"localhost:{agent.port}", "tcp", [agent.pid]) is None
    assert owner_problem(f"http://localhost:{agent.port}/", "http", [agent.pid]) is None
    problem = owner_problem(f"localhost:{agent.port}", "tcp", [bystander.pid])
    assert problem is not None and problem.startswith(f"localhost:{agent.port} is answered by pid {agent.pid} (")


# someone else owns the port, or nobody -----------------------------------------------------------

def test_a_port_another_process_listens_on_is_reported_with_that_process_pid(spawn: Spawn) -> None:
    other = spawn(LISTEN, "127.0.0.1")
    agent = spawn(IDLE)

    problem = owner_problem(f"127.0.0.1:{other.port}", "tcp", [agent.pid])

    assert problem is not None
    assert problem.startswith(f"127.0.0.1:{other.port} is answered by pid {other.pid} (")
    assert problem.endswith("), not by this agent's processes")


def test_an_agent_that_died_of_eaddrinuse_is_told_who_holds_its_port(spawn: Spawn) -> None:
    other = spawn(LISTEN, "127.0.0.1")
    agent = spawn(CLASH, str(other.port))
    agent.process.wait(END_WITHIN)
    assert agent.process.returncode == 1

    problem = owner_problem(f"127.0.0.1:{other.port}", "tcp", [agent.pid])

    assert problem is not None and problem.startswith(f"127.0.0.1:{other.port} is answered by pid {other.pid} (")


def test_a_port_nobody_listens_on_is_reported_as_not_the_agents(spawn: Spawn, closed_port: int) -> None:
    agent = spawn(IDLE)

    assert owner_problem(f"127.0.0.1:{closed_port}", "tcp", [agent.pid]) == f"nothing of this agent listens on 127.0.0.1:{closed_port}"
    assert owner_problem(f"[::1]:{closed_port}", "tcp", [agent.pid]) == f"nothing of this agent listens on [::1]:{closed_port}"


def test_a_listener_on_another_address_does_not_serve_the_target(spawn: Spawn) -> None:
    agent = spawn(LISTEN, "127.0.0.1")

    assert owner_problem(f"127.0.0.2:{agent.port}", "tcp", [agent.pid]) == f"nothing of this agent listens on 127.0.0.2:{agent.port}"
    assert owner_problem(f"[::1]:{agent.port}", "tcp", [agent.pid]) == f"nothing of this agent listens on [::1]:{agent.port}"


# what cannot be decided is not reported ----------------------------------------------------------

@pytest.mark.parametrize(("target", "kind"), [
    ("curl -fs http://127.0.0.1:{port}/", "exec"),
    ("nonsense", "tcp"),
    ("127.0.0.1:notaport", "tcp"),
    ("ftp://127.0.0.1/", "http"),
    ("192.0.2.1:{port}", "tcp"),            # TEST-NET-1: not this host's, may be served by another machine
    ("http://192.0.2.1:{port}/", "http"),
], ids=["exec", "no-port", "bad-port", "no-default-port", "other-host", "other-host-url"])
def test_a_probe_whose_listener_cannot_be_attributed_is_not_reported(spawn: Spawn, target: str, kind: str) -> None:
    other = spawn(LISTEN, "127.0.0.1")
    agent = spawn(IDLE)

    assert owner_problem(target.format(port=other.port), kind, [agent.pid]) is None


def test_an_agent_without_processes_is_not_reported(spawn: Spawn) -> None:
    other = spawn(LISTEN, "127.0.0.1")

    assert owner_problem(f"127.0.0.1:{other.port}", "tcp", []) is None
    assert owner_problem(f"127.0.0.1:{other.port}", "tcp", [0]) is None
