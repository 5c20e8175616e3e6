"""Ending processes: what a stop waits for (host.processes)."""

from __future__ import annotations

import subprocess
import time

import psutil

from orchestrator.host import processes


def _zombie_of_another() -> tuple[subprocess.Popen[bytes], psutil.Process]:
    """A process that has ended but that its parent (a `sleep` that never reaps) leaves unreaped, as init can
    leave a setsid child of an agent for a while; the parent, to stop, and the zombie."""
    parent = subprocess.Popen(["sh", "-c", "sleep 0 & exec sleep 60"])
    deadline = time.monotonic() + 10
    while True:
        children = psutil.Process(parent.pid).children()
        if children and children[0].status() == psutil.STATUS_ZOMBIE:
            return parent, children[0]
        assert time.monotonic() < deadline, "the child did not end"
        time.sleep(0.01)


def test_an_ended_process_its_parent_has_not_reaped_counts_as_ended():
    """Regression: stops waited for init to reap each setsid child they ended (a second each where init is slow),
    one agent after another: `down` of 50 such agents took 100 s."""
    parent, zombie = _zombie_of_another()
    try:
        started = time.monotonic()
        assert processes.wait_gone([zombie], timeout=30) == []
        assert time.monotonic() - started < 10   # not the 30 s timeout
        assert psutil.pid_exists(zombie.pid)     # still there, unreaped: ended all the same
    finally:
        parent.kill()
        parent.wait()


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_and_named():
    process = subprocess.Popen(["sh", "-c", "trap '' TERM; echo trapped; while :; do sleep 0.05; done"],
                               stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline() == b"trapped\n"
        ended = processes.end([psutil.Process(process.pid)], grace=0.5)
        assert ended == [process.pid]
        process.wait(timeout=10)   # reaped by the wait already (a zombie of ours is reaped there): no status to read
        assert not psutil.pid_exists(process.pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
