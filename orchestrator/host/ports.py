"""Whose socket answered a readiness probe: the agent's own processes, or someone else's?

Owned here: attributing the listening socket behind a tcp or http probe
target to a process tree. A probe that connects to 127.0.0.1:9102 passes
whoever listens there; if another process already holds that port, the agent
is about to die of EADDRINUSE while its probe looks fine. `owner_problem`
answers None when the socket that serves the target belongs to the agent's
tree (the PIDs supervisord reports and all their descendants), and otherwise
one line a person understands.

Called by the sequencer when a readiness probe has passed, before it calls an
agent ready. The host layer: psutil and the standard library.

How the check works:
  * the target's port and addresses come from the probe target: "HOST:PORT"
    (parsed by `probes._host_port`) or a URL (port 80/443 by scheme);
    "localhost" stands for 127.0.0.1 and ::1, other names are resolved with
    getaddrinfo as the probe did, and an unspecified target (0.0.0.0, ::) for
    the loopback address the kernel connects it to;
  * the tree is walked with `Process.children(recursive=True)` (which reads
    /proc/*/stat on Linux), and each member's TCP sockets are read with
    `Process.net_connections(kind="tcp")` (its /proc/PID/fd links, matched
    against /proc/net/tcp and tcp6; only processes holding sockets cost the
    table reads). UDP is skipped: it has no LISTEN state;
  * a socket serves the target when it is in LISTEN state on the same port,
    bound to the target's address or to a wildcard covering it: 0.0.0.0 for
    IPv4, :: for IPv6 and (dual-stack) for IPv4 too;
  * only on the failure path is the whole system's socket table read
    (`psutil.net_connections`), to name the process that does listen. It is
    also read when the tree's only match is a :: socket for an IPv4 target:
    an IPv4 listener elsewhere on that port is then the one the kernel picks
    (it can only coexist with an IPV6_V6ONLY :: socket), so it is reported.

Limits: the answer is "unknown" (None) rather than a false alarm whenever it
cannot be decided:
  * exec probes have no socket to attribute, and unparsable targets or
    unresolvable names are left to the probe itself;
  * a target address that is neither loopback nor one of this host's
    interface addresses may be served by another machine (or a forwarder);
  * permission denied (AccessDenied) reading any member's sockets means that
    member may hold the socket: the answer is unknown (None), never "nothing
    of this agent listens". When only the system table hides who listens (a
    process of another user), the message says so instead of naming a pid;
  * no PIDs (nothing running) leaves nothing to attribute to: None;
  * a name with several addresses (localhost) counts as served when the tree
    serves any of them, though the probe may have connected to another; and
    SO_REUSEPORT listeners sharing a port with the tree count as the tree.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil

from orchestrator.host import processes
from orchestrator.core.addresses import split_host_port

COMMAND_CHARS = 80        # longest command line quoted in a message
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOCALHOST = ("127.0.0.1", "::1")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# How well a listening address covers a target address; the kernel picks the highest.
NO_MATCH, DUAL_STACK, WILDCARD, EXACT = 0, 1, 2, 3


@dataclass(frozen=True)
class _Listener:
    address: IPAddress
    pid: int | None    # None: the system table does not say (another user's process)


def owner_problem(target: str, kind: str, pids: Iterable[int]) -> str | None:
    """Why the socket serving a passed probe's `target` is not the agent's; None when it is, or when that cannot be told.

    `kind` is the probe's kind ("tcp": target "HOST:PORT" or "[V6]:PORT";
    "http": target a URL; "exec": never attributable). `pids` are the agent's
    root processes; their descendants count too. Never raises for a target,
    a vanished process or a denied permission.
    """
    endpoint = _endpoint(target, kind)
    roots = [pid for pid in pids if pid > 0]
    if endpoint is None or not roots:
        return None
    host, port = endpoint
    addresses = _addresses(host)
    if not addresses:
        return None
    tree = processes.tree(roots)
    listeners, complete = _tree_listeners(tree, port)
    best = _best_score(listeners, addresses)
    if best >= WILDCARD or not complete:
        return None
    tree_pids = {process.pid for process in tree}
    where = _display(host, port)
    if best == DUAL_STACK:   # served by the tree's :: socket, unless an IPv4 listener elsewhere takes the port
        owner = _foreign_listener(port, addresses, tree_pids, at_least=WILDCARD)
        return None if owner is None else _answered_by(where, owner)
    if not any(_is_local(address) for address in addresses):
        return None
    owner = _foreign_listener(port, addresses, tree_pids, at_least=DUAL_STACK)
    return f"nothing of this agent listens on {where}" if owner is None else _answered_by(where, owner)


# the target --------------------------------------------------------------------------------------

def _endpoint(target: str, kind: str) -> tuple[str, int] | None:
    """(host, port) a tcp or http probe connects to; None for exec probes and targets that do not parse."""
    try:
        if kind == "tcp":
            host, port = split_host_port(target)
        elif kind == "http":
            url = urllib.parse.urlsplit(target)
            host, port = url.hostname or "", url.port or _DEFAULT_PORTS.get(url.scheme.lower(), 0)
        else:
            return None
    except ValueError:
        return None
    return (host, port) if host and 0 < port < 65536 else None


def _addresses(host: str) -> frozenset[IPAddress]:
    """The addresses a connection to `host` may reach; empty when the name does not resolve."""
    if host.lower() == "localhost":
        return frozenset(ipaddress.ip_address(a) for a in _LOCALHOST)
    literal = _parse(host)
    if literal is not None:
        return frozenset({_connected_to(literal)})
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return frozenset()
    found = (_parse(str(info[4][0])) for info in infos)
    return frozenset(_connected_to(address) for address in found if address is not None)


def _connected_to(address: IPAddress) -> IPAddress:
    """Where a connection to `address` lands: an unspecified address means this host's loopback."""
    if address.is_unspecified:
        return ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
    return address


def _is_local(address: IPAddress) -> bool:
    """Whether a connection to `address` stays on this host (loopback, or one of its interface addresses)."""
    if address.is_loopback:
        return True
    try:
        interfaces = psutil.net_if_addrs()
    except (psutil.Error, OSError):
        return False
    return any(_parse(entry.address) == address for entries in interfaces.values() for entry in entries)


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# the tree and its sockets ------------------------------------------------------------------------

def _tree_listeners(tree: list[psutil.Process], port: int) -> tuple[list[_Listener], bool]:
    """The tree's listening sockets on `port`, and whether every member's sockets could be read."""
    listeners: list[_Listener] = []
    complete = True
    for process in tree:
        try:
            sockets = _sockets_of(process)
        except psutil.AccessDenied:
            complete = False
            continue
        except psutil.Error:   # exited meanwhile (or a zombie): holds nothing
            continue
        listeners.extend(_listening(sockets, port, process.pid))
    return listeners, complete


def _sockets_of(process: psutil.Process) -> list[Any]:
    read = getattr(process, "net_connections", None) or process.connections   # psutil < 6: connections
    return list(read(kind="tcp"))


def _listening(sockets: Iterable[Any], port: int, pid: int | None) -> list[_Listener]:
    """Those of `sockets` in LISTEN state on `port`; `pid` None: each socket's own pid."""
    found = []
    for sock in sockets:
        if sock.status != psutil.CONN_LISTEN or not sock.laddr or sock.laddr.port != port:
            continue
        address = _parse(sock.laddr.ip)
        if address is not None:
            found.append(_Listener(address, pid if pid is not None else getattr(sock, "pid", None)))
    return found


def _parse(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


# matching ----------------------------------------------------------------------------------------

def _score(listen: IPAddress, target: IPAddress) -> int:
    """How a socket bound to `listen` covers connections to `target` (NO_MATCH .. EXACT)."""
    if isinstance(listen, ipaddress.IPv6Address) and listen.ipv4_mapped is not None:
        listen = listen.ipv4_mapped
    if listen == target:
        return EXACT
    if listen.is_unspecified:
        if listen.version == target.version:
            return WILDCARD
        return DUAL_STACK if listen.version == 6 else NO_MATCH
    return NO_MATCH


def _best_score(listeners: Iterable[_Listener], addresses: Iterable[IPAddress]) -> int:
    return max((_score(lst.address, target) for lst in listeners for target in addresses), default=NO_MATCH)


def _foreign_listener(port: int, addresses: frozenset[IPAddress], tree_pids: set[int], *, at_least: int) -> _Listener | None:
    """The system's best listener on `port` outside the tree that covers the target at least `at_least`; None if none is seen."""
    try:
        system = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    candidates = [lst for lst in _listening(system, port, None) if lst.pid not in tree_pids]
    scored = [(max(_score(lst.address, target) for target in addresses), lst) for lst in candidates]
    scored = [(score, lst) for score, lst in scored if score >= at_least]
    if not scored:
        return None
    return max(scored, key=lambda pair: (pair[0], pair[1].pid is not None))[1]


# wording -----------------------------------------------------------------------------------------

def _answered_by(where: str, owner: _Listener) -> str:
    if owner.pid is None:
        return f"{where} is answered by a process this user cannot see, not by this agent's processes"
    return f"{where} is answered by pid {owner.pid}{_command(owner.pid)}, not by this agent's processes"


def _command(pid: int) -> str:
    """" (command line)" of `pid`, cut to COMMAND_CHARS; "" when it cannot be read."""
    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return ""
    command = " ".join(command.split())
    if len(command) > COMMAND_CHARS:
        command = command[:COMMAND_CHARS - 3] + "..."
    return f" ({command})" if command else ""
