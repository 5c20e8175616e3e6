"""Runs inside supervisord: wakes its main loop the moment a process changes state.

Owned here: an `[rpcinterface:orchestrator]` factory, supervisord's documented
extension point, loaded into supervisord's own process. supervisord's loop
waits up to 1 s in poll() when nothing happens; a process that dies is reaped
at once, but its event reaches listeners, and a restart requested by one takes
effect, only at the next pass: about 1,005 ms when no client talks to it. This
module subscribes to supervisord's process-state events in-process and writes
a byte to a self-pipe that sits in supervisord's poll set, so the next pass
runs at once. Measured here (see bench/bench_restart.py): SIGKILL to RUNNING
again falls from about a second to a few tens of milliseconds.

It adds one harmless RPC namespace, `orchestrator.ping`, and nothing else.
Only supervisord imports this module.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from supervisor import events
from supervisor.medusa import asyncore_25 as asyncore


class _Waker:
    """A self-pipe shaped like the dispatchers supervisord polls."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        asyncore.socket_map[self.read_fd] = self

    def wake(self, event: object = None) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: supervisord is awake already
            os.write(self.write_fd, b"!")

    # the dispatcher interface supervisord's loop calls
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def handle_write_event(self) -> None:
        pass

    def handle_error(self) -> None:
        pass

    def close(self) -> None:
        pass


class OrchestratorNamespace:
    def __init__(self, waker: _Waker) -> None:
        self.waker = waker

    def ping(self) -> bool:
        """True: orchestrator's extension is loaded in this supervisord."""
        return True


def make_interface(supervisord: Any, **config: Any) -> OrchestratorNamespace:
    waker = _Waker()
    events.subscribe(events.ProcessStateEvent, waker.wake)
    # A child's death is seen through its pipes closing, but it may not be
    # reapable yet; supervisord then polls again, and Python resumes that poll
    # after SIGCHLD (PEP 475), so the reap waited up to a second. With the
    # wakeup fd, every signal also writes to the self-pipe and ends the poll.
    # supervisord calls this factory in its main thread, as set_wakeup_fd needs.
    signal.set_wakeup_fd(waker.write_fd, warn_on_full_buffer=False)
    return OrchestratorNamespace(waker)
