"""The supervisord client: the one module that speaks supervisord's XML-RPC.

Owned here: the connection over supervisord's unix socket (the standard
library's XML-RPC over an HTTP connection to the socket, kept open between
calls, with a timeout on every call), the only place supervisord's camelCase
method names appear, and the translation of its fault codes into typed errors. ALREADY_STARTED, NOT_RUNNING and ALREADY_ADDED are
idempotent success: asking for what is already so is not an error.

Called by apply, the sequencer, status, the boot listener and lifecycle (up,
down). A client is safe to share between threads: calls are serialized.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import xmlrpc.client
from typing import Any

from orchestrator.core.errors import OrchestratorError
from orchestrator.core.processes import DOWN_STATES, ProcessInfo

DEFAULT_TIMEOUT = 10.0


class SupervisorError(OrchestratorError):
    """supervisord refused a request or could not be reached.

        SupervisorError
        ├── NotRunningError    nothing answers on the socket
        ├── BadNameError       no such process or group
        ├── SpawnError         supervisord could not start a process
        └── StillRunningError  a group cannot be removed while it runs
    """

    def __init__(self, message: str, *, fault: int | None = None) -> None:
        super().__init__(message)
        self.fault = fault


class NotRunningError(SupervisorError):
    """supervisord is not running (or its socket does not answer)."""


class BadNameError(SupervisorError):
    pass


class SpawnError(SupervisorError):
    pass


class StillRunningError(SupervisorError):
    pass


class Faults:
    """supervisord's XML-RPC fault codes, those this client tells apart (its API documentation lists them all;
    tests/unit/test_client.py holds them to `supervisor.xmlrpc.Faults`). Not imported from there: that module
    loads supervisor's own HTTP server, its configuration parser and more, 2.3 MB in each daemon that is only
    ever a client (the exporter, the listener)."""

    UNKNOWN_METHOD = 1
    BAD_NAME = 10
    NO_FILE = 20
    NOT_EXECUTABLE = 21
    ABNORMAL_TERMINATION = 40
    SPAWN_ERROR = 50
    ALREADY_STARTED = 60
    NOT_RUNNING = 70
    ALREADY_ADDED = 90
    STILL_RUNNING = 91


_FAULT_ERRORS: dict[int, type[SupervisorError]] = {
    Faults.BAD_NAME: BadNameError,
    Faults.SPAWN_ERROR: SpawnError,
    Faults.NO_FILE: SpawnError,
    Faults.NOT_EXECUTABLE: SpawnError,
    Faults.ABNORMAL_TERMINATION: SpawnError,
    Faults.STILL_RUNNING: StillRunningError,
}
_IDEMPOTENT = frozenset({Faults.ALREADY_STARTED, Faults.NOT_RUNNING, Faults.ALREADY_ADDED})


class _Connection(http.client.HTTPConnection):
    """An HTTP connection to supervisord's unix socket, with a timeout on connect and on every read."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class _Transport(xmlrpc.client.Transport):
    """xmlrpc.client's transport (HTTP/1.1, its connection kept between calls) over supervisord's socket."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = self._connection[1]
        if connection is None:
            connection = _Connection(self.socket_path, self.timeout)
            self._connection = host, connection
        return connection


class Client:
    """supervisord at `socket_path`; every call gives up after `timeout` seconds."""

    def __init__(self, socket_path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._transport = _Transport(socket_path, timeout)
        self._proxy = xmlrpc.client.ServerProxy("http://localhost", transport=self._transport)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._transport.close()

    def _call(self, method: str, *args: Any) -> Any:
        namespace, _, name = method.partition(".")
        with self._lock:
            try:
                return getattr(getattr(self._proxy, namespace), name)(*args)
            except xmlrpc.client.Fault as fault:
                if fault.faultCode in _IDEMPOTENT:
                    return True
                kind = _FAULT_ERRORS.get(fault.faultCode, SupervisorError)
                raise kind(f"supervisord: {fault.faultString}", fault=fault.faultCode) from fault
            except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
                self._transport.close()  # a broken persistent connection must not poison the next call
                raise NotRunningError(f"supervisord is not answering on {self.socket_path}: {exc}") from exc

    # -- supervisord itself ---------------------------------------------

    def state(self) -> str:
        return str(self._call("supervisor.getState")["statename"])

    def is_running(self) -> bool:
        try:
            return self.state() == "RUNNING"
        except NotRunningError:
            return False

    def pid(self) -> int:
        return int(self._call("supervisor.getPID"))

    def shutdown(self) -> None:
        self._call("supervisor.shutdown")

    def reload_config(self) -> tuple[list[str], list[str], list[str]]:
        """Reread the configuration; the group names (added, changed, removed). Nothing is started or stopped."""
        added, changed, removed = self._call("supervisor.reloadConfig")[0]
        return list(added), list(changed), list(removed)

    # -- groups and processes -------------------------------------------

    def add_group(self, name: str) -> None:
        self._call("supervisor.addProcessGroup", name)

    def remove_group(self, name: str) -> None:
        self._call("supervisor.removeProcessGroup", name)

    def start_process(self, full_name: str, *, wait: bool = False) -> None:
        self._call("supervisor.startProcess", full_name, wait)

    def start_group(self, name: str, *, wait: bool = False) -> None:
        self._call("supervisor.startProcessGroup", name, wait)

    def stop_group(self, name: str, *, wait: bool = True) -> list[str]:
        """Stop every process of group `name`; the full names of its processes."""
        results = self._call("supervisor.stopProcessGroup", name, wait)
        if not isinstance(results, list):  # an idempotent fault (nothing was running) answers True
            return []
        return [f"{r['group']}:{r['name']}" for r in results]

    def signal_group(self, name: str, signal: str) -> None:
        self._call("supervisor.signalProcessGroup", name, signal)

    def processes(self) -> list[ProcessInfo]:
        """Every process supervisord knows, in getAllProcessInfo's order (without its descriptions, with
        orchestrator's extension: its compact reply costs supervisord a tenth of the loop passes).

        Still O(N^2) in supervisord: not for tight loops at scale."""
        try:
            rows = json.loads(self._call("orchestrator.getAllProcessStates"))
        except SupervisorError as exc:
            if exc.fault != Faults.UNKNOWN_METHOD:
                raise
            return [ProcessInfo.from_rpc(info) for info in self._call("supervisor.getAllProcessInfo")]
        return [ProcessInfo(name, group, state, pid, start, now, exitstatus, spawnerr, "")
                for name, group, state, pid, start, now, exitstatus, spawnerr in rows]

    def process(self, full_name: str) -> ProcessInfo:
        """One process, by `group:name`."""
        return ProcessInfo.from_rpc(self._call("supervisor.getProcessInfo", full_name))

    def process_times(self, full_name: str) -> tuple[float, float, int | None]:
        """(last start, last stop, exit status) of a process; to the microsecond with orchestrator's extension,
        else in supervisord's whole seconds."""
        try:
            times = self._call("orchestrator.getProcessTimes", full_name)
            status = int(times["exitstatus"])
            return float(times["start"]), float(times["stop"]), None if status == -1 else status
        except SupervisorError as exc:
            if exc.fault != Faults.UNKNOWN_METHOD:
                raise
        info = self.process(full_name)
        return float(info.start), float(info.now), info.exitstatus

    def start_once(self, full_name: str, token: str) -> bool:
        """Start a process for the restart decision `token`, at most once per token (orchestrator's extension).

        True when it started now. Without the extension, a plain start of a process that is down.
        """
        try:
            return bool(self._call("orchestrator.startOnce", full_name, token))
        except SupervisorError as exc:
            if exc.fault != Faults.UNKNOWN_METHOD:
                raise
        if self.process(full_name).state in DOWN_STATES:
            self.start_process(full_name)
            return True
        return False

    def config_hashes(self) -> dict[str, str] | None:
        """Each group's configuration hash as supervisord holds it; None without orchestrator's extension."""
        try:
            return {str(k): str(v) for k, v in self._call("orchestrator.getConfigHashes").items()}
        except SupervisorError as exc:
            if exc.fault in (Faults.UNKNOWN_METHOD,):
                return None
            raise

    def config_digests(self) -> dict[str, str] | None:
        """A digest of each group's whole configuration as supervisord holds it; None without orchestrator's
        extension (or with the extension of an older orchestrator, loaded when that supervisord started)."""
        try:
            return {str(k): str(v) for k, v in self._call("orchestrator.getConfigDigests").items()}
        except SupervisorError as exc:
            if exc.fault == Faults.UNKNOWN_METHOD:
                return None
            raise

    def send_remote_comm(self, kind: str, data: str) -> None:
        """Emit a REMOTE_COMMUNICATION event to the event listeners (supervisord queues it for them)."""
        self._call("supervisor.sendRemoteCommEvent", kind, data)

    def stderr_tail(self, full_name: str, length: int = 4096) -> str:
        text, _offset, _overflow = self._call("supervisor.tailProcessStderrLog", full_name, 0, length)
        return str(text)

    def stdout_tail(self, full_name: str, length: int = 4096) -> str:
        text, _offset, _overflow = self._call("supervisor.tailProcessStdoutLog", full_name, 0, length)
        return str(text)
