"""The apply lock says who holds it: a waiter names the holder, a bounded wait fails naming it, and a dead holder's
record is taken over and said so. (Two opens of one file take flocks that exclude each other, even in one process.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orchestrator.core.errors import LockHeldError
from orchestrator.state.files import Holder, LockBusy, exclusive, holder_of
from orchestrator.state.history import History


def test_the_holder_writes_who_it_is_into_the_lock_file_and_empties_it_when_it_lets_go(tmp_path):
    path = str(tmp_path / "apply.lock")
    with exclusive(path, record=True):
        holder = holder_of(path)
        assert holder is not None and holder.pid == os.getpid() and holder.argv == tuple(sys.argv) and holder.alive()
    assert holder_of(path) is None
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_bounded_wait_says_whom_it_waits_for_and_fails_naming_it(tmp_path):
    path = str(tmp_path / "apply.lock")
    said: list[str] = []
    with exclusive(path, record=True):
        with pytest.raises(LockBusy) as busy, exclusive(path, timeout=0.1, record=True, say=said.append):
            pass
        assert busy.value.holder is not None and busy.value.holder.pid == os.getpid()
        assert said == [f"waiting for the lock (at most 0.1s): held by {busy.value.holder}"]
        assert str(busy.value.holder).startswith(f"PID {os.getpid()} ({os.path.basename(sys.argv[0])}")


def test_history_lock_fails_with_an_error_naming_the_holder(tmp_path):
    history = History(str(tmp_path))
    expected = rf"held by PID {os.getpid()} \(.*\), since .*gave up after 0.1s"
    with history.lock(), pytest.raises(LockHeldError, match=expected), history.lock(timeout=0.1):
        pass


def test_a_dead_holders_record_is_taken_over_and_said_so(tmp_path):
    path = str(tmp_path / "apply.lock")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = int(gone.stdout)
    with open(path, "w") as handle:
        json.dump({"pid": dead, "argv": ["/venv/bin/orchestrator", "apply"], "started": 1, "since": 1.0}, handle)
    assert not Holder(pid=dead, argv=(), started=1, since=1.0).alive()
    said: list[str] = []
    with exclusive(path, record=True, say=said.append):
        assert holder_of(path).pid == os.getpid()
    assert len(said) == 1 and said[0].startswith(f"taken over from dead holder PID {dead} (command orchestrator apply)")


def test_a_reused_pid_is_not_the_holder_that_recorded_it(tmp_path):
    me = Holder(pid=os.getpid(), argv=("x",), started=0, since=0.0)   # this PID, but a process started at another time
    assert not me.alive()
