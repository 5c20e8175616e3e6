"""One apply at a time: the apply lock names its holder, a second apply waits for it (or gives up naming it), a dead
holder's record is taken over and said so, and a SIGKILL of apply at any point leaves a readable history that the
next apply converges from."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess

from orchestrator.state.history import History

from tests.integration.conftest import ORCHESTRATOR, free_ports, wait_until

SEED = 20261127    # the kill points of the loop below; a failure names the round, so it can be replayed
ROUNDS = 20


def _holder(project) -> dict | None:
    """The holder recorded in the apply lock (None when it is free, or its record is being written)."""
    try:
        return json.loads((project.state / "apply.lock").read_text())
    except (OSError, ValueError):
        return None


def _popen(project, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([ORCHESTRATOR, "-m", str(project.manifests), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})


def _held_by(project, process: subprocess.Popen[str]) -> bool:
    holder = _holder(project)
    return holder is not None and holder["pid"] == process.pid


def _three(project, ports: list[int], variant: str, *, delay: float = 0.0) -> None:
    """feed, calc (on feed) and report (on calc); calc and report differ by variant."""
    project.toy("feed", ports[0])
    project.toy("calc", ports[1], depends_on=["feed"], delay=delay, extra=["--variant", variant])
    project.toy("report", ports[2], depends_on=["calc"], extra=["--variant", variant])


def _check_history(project, where: str) -> int:
    """Every version directory is whole and `current` points at one of them; the live version's number."""
    root = project.state / "history"
    numbers = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue  # the scratch directory of a version being written: never a version
        assert entry.name.isdigit() and entry.is_dir(), f"{where}: {entry.name} in history"
        for name in ("version.json", "agents.json"):
            json.loads((entry / name).read_text())
        numbers.append(int(entry.name))
    assert numbers == list(range(1, len(numbers) + 1)), f"{where}: versions {numbers}"
    target = (project.state / os.readlink(project.state / "current")).resolve()
    assert target.parent == root.resolve() and target.name.isdigit() and target.is_dir(), f"{where}: current -> {target}"
    history = History(str(project.state))
    assert [v.number for v in history.versions()] == numbers, where
    live = history.current()
    assert live is not None and live.number == int(target.name), where
    return live.number


def test_a_second_apply_waits_for_the_first_naming_it_or_gives_up_naming_it_and_no_version_is_doubled(project):
    ports = free_ports(3)
    _three(project, ports, "a")
    project.run("up", check=True)
    before = _check_history(project, "after up")
    _three(project, ports, "b", delay=4.0)   # calc's replacement becomes ready 4 s after its start: the first apply holds the lock
    first = _popen(project, "apply")
    running = [first]
    try:
        wait_until(lambda: _held_by(project, first), 30, message="the first apply to take the lock")
        impatient = project.run("--lock-timeout", "0.5", "apply")
        patient = _popen(project, "apply")
        running.append(patient)
        out, err = first.communicate(timeout=120)
        patient_out, patient_err = patient.communicate(timeout=120)
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert first.returncode == 0, out + err
    holder = f"PID {first.pid} (orchestrator -m {project.manifests} apply), since "
    assert impatient.returncode == 1, impatient.stdout + impatient.stderr
    assert f"waiting for the lock (at most 0.5s): held by {holder}" in impatient.stderr
    assert f"the apply lock of {project.state} is held by {holder}" in impatient.stderr
    assert "gave up after 0.5s" in impatient.stderr
    assert patient.returncode == 0, patient_out + patient_err
    assert f"waiting for the lock (at most 30s): held by {holder}" in patient_err
    assert "The plan changed since it was shown" in patient_err
    assert "Nothing to do" in patient_err + patient_out
    assert _check_history(project, "after both") == before + 1, "one change, one version"
    assert _holder(project) is None, "the lock is left empty by the last one out"


def test_the_record_of_an_apply_killed_holding_the_lock_is_taken_over_and_said_so(project):
    ports = free_ports(3)
    _three(project, ports, "a")
    project.run("up", check=True)
    _three(project, ports, "b", delay=5.0)
    victim = _popen(project, "apply")
    wait_until(lambda: _held_by(project, victim), 30, message="apply to take the lock")
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert _holder(project)["pid"] == victim.pid, "the dead holder's record stays until the lock is taken"
    _three(project, ports, "c")
    done = project.run("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"taken over from dead holder PID {victim.pid} (command orchestrator -m {project.manifests} apply)" in done.stderr
    _check_history(project, "after the takeover")
    assert set(project.pids()) == {"feed", "calc", "report"}


def test_apply_killed_at_any_point_leaves_a_readable_history_and_the_next_apply_converges(project):
    """SIGKILL of `orchestrator apply` at ROUNDS seeded points, while it replaces two agents (alternating between two
    manifest variants); after each, every version is whole and `current` valid; at the end, one apply converges."""
    ports = free_ports(3)
    _three(project, ports, "a")
    project.run("up", check=True)
    _check_history(project, "after up")
    chance = random.Random(SEED)
    for round_ in range(ROUNDS):
        variant = "b" if round_ % 2 == 0 else "a"
        _three(project, ports, variant)
        delay = chance.uniform(0.2, 3.0)   # the CLI's start, planning, recording, the stops and starts all fall in here
        victim = _popen(project, "apply")
        try:
            victim.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            victim.send_signal(signal.SIGKILL)
        out, err = victim.communicate(timeout=30)
        assert victim.returncode in (0, -signal.SIGKILL), f"round {round_}: {out}{err}"
        _check_history(project, f"round {round_} (seed {SEED}, killed after {delay:.2f}s, rc {victim.returncode})")
    _three(project, ports, "c")
    done = project.run("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    plan = project.run("plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    _check_history(project, "after the final apply")
    live = History(str(project.state)).current()
    assert live is not None and live.status == "applied"
    assert set(project.pids()) == {"feed", "calc", "report"}


def test_a_rollback_that_cannot_take_the_lock_leaves_the_manifests_on_disk_as_they_were(project):
    """rollback writes the old version's files, then applies them under the lock; when another apply holds the lock
    past the timeout nothing is applied, and the manifests on disk are put back as they were (the disk never says
    what does not run)."""
    from orchestrator.state.history import read_manifest_files
    ports = free_ports(3)
    _three(project, ports, "a")
    project.run("up", check=True)
    _three(project, ports, "b")
    project.run("apply", check=True)                 # version 2
    _three(project, ports, "c", delay=4.0)
    on_disk = read_manifest_files(str(project.manifests))
    first = _popen(project, "apply")                 # version 3: holds the lock while calc gets ready
    try:
        wait_until(lambda: _held_by(project, first), 30, message="the apply to take the lock")
        refused = project.run("--lock-timeout", "0.5", "rollback", "1", "--yes")
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert refused.returncode == 1 and f"held by PID {first.pid}" in refused.stderr, refused.stdout + refused.stderr
    assert "Nothing was applied" in refused.stderr + refused.stdout
    assert read_manifest_files(str(project.manifests)) == on_disk
    assert first.returncode == 0, out + err
    assert project.run("plan").returncode == 0       # what runs is what the disk says
