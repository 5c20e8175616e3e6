"""Cgroups of agent processes (host.cgroups), against this host's real cgroup filesystem.

Each test runs real processes, started the way the launcher starts an agent: a small Python stand-in places
itself in its cgroups and then execs the agent's command. Each test has its own scope, and the `host` fixture
kills what it started (by pid, and by the scope's cgroups) and removes the scope, whatever the test's outcome.
A test whose control this host lacks is skipped with the reason `controls` gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.host import cgroups
from orchestrator.host.cgroups import CgroupError, Limits

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
DEADLINE = 30.0   # seconds: generous, the CI machine is slower and busier

# the launcher's part: place this very process, then become the agent's command
STAND_IN = """
import json, os, sys
from orchestrator.host import cgroups
mode, scope, agent, process, limits = sys.argv[1:6]
layout = cgroups.detect()
if mode == 'v1':
    layout = layout.replace(v2=None)
cgroups.place(layout, scope, agent, process, cgroups.Limits(**json.loads(limits)), os.getpid())
os.execvp(sys.argv[6], sys.argv[6:])
"""

LAYOUT = cgroups.detect()
CONTROLS = cgroups.controls(LAYOUT)
pytestmark = pytest.mark.skipif(CONTROLS["tracking"] is not None, reason=f"no cgroups to use: {CONTROLS['tracking']}")


def need(control: str) -> None:
    if CONTROLS[control] is not None:
        pytest.skip(f"{control} cannot be enforced on this host: {CONTROLS[control]}")


def wait_until(condition: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


class Host:
    """One test's scope, the layout it uses, and the processes it started."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.layout = LAYOUT.replace(v2=None) if mode == "v1" else LAYOUT
        self.scope = f"test{os.getpid()}{uuid.uuid4().hex[:6]}"
        self.started: list[subprocess.Popen[str]] = []
        self.agents: set[str] = set()

    def start(self, agent: str, process: str, limits: Limits, program: str, *args: str) -> subprocess.Popen[str]:
        """Start `python -c program args` placed in its cgroups, and wait for its first line ("ready")."""
        self.agents.add(agent)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        limits_json = json.dumps({k: v for k in limits.__slots__ if (v := getattr(limits, k)) is not None})
        child = subprocess.Popen([sys.executable, "-c", STAND_IN, self.mode, self.scope, agent, process, limits_json,
                                  sys.executable, "-c", program, *args],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.started.append(child)
        assert child.stdout is not None
        line = child.stdout.readline()
        if line != "ready\n":
            child.wait(timeout=DEADLINE)
            pytest.fail(f"the stand-in did not start: {line!r} {child.stderr.read() if child.stderr else ''}")
        return child

    def read(self, agent: str, process: str) -> cgroups.Readback:
        found = cgroups.read(self.layout, self.scope, agent, process)
        assert found is not None
        return found

    def close(self) -> None:
        for child in self.started:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=DEADLINE)
        for agent in self.agents:
            cgroups.kill(self.layout, self.scope, agent, timeout=DEADLINE)
        cgroups.remove(self.layout, self.scope)


@pytest.fixture
def host(request: pytest.FixtureRequest) -> Iterator[Host]:
    """A scope on the layout detected, or (param "v1") on its cgroup v1 hierarchies alone: on a host that has
    both, the second runs the v1 ways of tracking and killing (freezer, pids) that a v1-only host uses."""
    found = Host(getattr(request, "param", "detected"))
    if found.mode == "v1" and cgroups.controls(found.layout)["tracking"] is not None:
        pytest.skip("no cgroup v1 hierarchy to track processes in")
    try:
        yield found
    finally:
        found.close()


SLEEPER = "import time; print('ready', flush=True); time.sleep(300)"


def scope_dirs(scope: str) -> list[str]:
    hierarchies = [h for h in (LAYOUT.v2, *LAYOUT.v1) if h is not None]
    return [h.dir(f"{cgroups.SCOPE_PREFIX}-{scope}") for h in hierarchies if os.path.exists(h.dir(f"{cgroups.SCOPE_PREFIX}-{scope}"))]


# -- what the host offers -------------------------------------------------------------------------------------

def test_every_control_is_either_enforceable_or_comes_with_a_reason():
    assert set(CONTROLS) == {"memory_max", "memory_high", "cpu_max", "max_processes", "tracking"}
    for control, reason in CONTROLS.items():
        assert reason is None or (isinstance(reason, str) and reason), control


def test_memory_high_is_reported_inactive_where_memory_comes_from_cgroup_v1():
    memory = LAYOUT.v1_for("memory")
    if memory is None or (LAYOUT.v2 is not None and "memory" in LAYOUT.v2.controllers):
        pytest.skip("memory is not served by a v1 hierarchy here")
    assert CONTROLS["memory_max"] is None
    assert "cgroup v2" in str(CONTROLS["memory_high"])


def test_the_base_of_each_hierarchy_is_the_callers_own_cgroup():
    own = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
    for h in (LAYOUT.v2, *LAYOUT.v1):
        if h is not None:
            key = "" if h.name == cgroups.V2 else h.name
            assert own.get(key, h.base) == h.base, h


WHERE = "import json; from orchestrator.host import cgroups; l = cgroups.detect(); print('ready', flush=True); " \
        "print(json.dumps({h.name: h.base for h in (l.v2, *l.v1) if h}), flush=True); import time; time.sleep(300)"


def test_a_caller_inside_one_of_our_cgroups_finds_the_same_base_as_the_one_that_placed_it(host):
    child = host.start("feed", "feed_00", Limits(), WHERE)
    assert child.stdout is not None
    assert json.loads(child.stdout.readline()) == {h.name: h.base for h in (LAYOUT.v2, *LAYOUT.v1) if h}


# -- names ----------------------------------------------------------------------------------------------------

def test_a_process_cgroup_path_is_scope_agent_process():
    assert cgroups.path_of("ab12", "risk", "risk_00") == "orchestrator-ab12/risk/risk_00"


@pytest.mark.parametrize("scope, agent, process", [
    ("a/b", "risk", "risk_00"), ("s", "..", "risk_00"), ("s", "risk", "."), ("", "risk", "risk_00"),
    ("s", "ri/sk", "risk_00"),
])
def test_a_name_that_would_leave_its_place_in_the_tree_is_refused(scope, agent, process):
    with pytest.raises(CgroupError, match="cannot name a cgroup"):
        cgroups.path_of(scope, agent, process)


def test_kill_and_remove_refuse_a_name_that_would_leave_its_place_in_the_tree():
    with pytest.raises(CgroupError):
        cgroups.kill(LAYOUT, "s", "..")
    with pytest.raises(CgroupError):
        cgroups.remove(LAYOUT, "../..")


def test_limits_that_mean_nothing_are_refused():
    with pytest.raises(CgroupError, match="memory_max"):
        Limits(memory_max=0)
    with pytest.raises(CgroupError, match="cpu_max"):
        Limits(cpu_max=-1.0)


# -- placing and reading back ---------------------------------------------------------------------------------

def test_the_limits_read_back_from_the_kernel_are_those_set(host):
    limits = Limits(memory_max=64 * MiB, memory_high=48 * MiB, cpu_max=0.5, max_processes=32)
    child = host.start("feed", "feed_00", limits, SLEEPER)
    back = host.read("feed", "feed_00")
    for control in ("memory_max", "memory_high", "cpu_max", "max_processes"):
        if CONTROLS[control] is None:
            assert getattr(back, control) == getattr(limits, control), control
            assert back.sources[control] in {h.name for h in (LAYOUT.v2, *LAYOUT.v1) if h is not None}
    assert cgroups.pids(host.layout, host.scope, "feed") == {child.pid}


def test_the_placement_reports_each_control_active_or_why_not(host):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    host.started.append(child)
    host.agents.add("feed")
    placed = cgroups.place(host.layout, host.scope, "feed", "feed_00", Limits(memory_max=64 * MiB), child.pid)
    assert placed.active == {control: reason is None for control, reason in CONTROLS.items()}
    assert placed.reasons == {control: reason for control, reason in CONTROLS.items() if reason is not None}
    assert all(os.path.isdir(path) for path in placed.paths.values())
    assert cgroups.pids(host.layout, host.scope, "feed") == {child.pid}


def test_a_process_without_a_cgroup_reads_back_as_none(host):
    assert cgroups.read(host.layout, host.scope, "nobody", "nobody_00") is None


# -- enforcement ----------------------------------------------------------------------------------------------

HOG = """
import sys
print('ready', flush=True)
blocks = []
for _ in range(50):   # 200 MiB in 4 MiB steps, each page touched
    blocks.append(bytearray(4 << 20))
print('allocated', flush=True)
"""


def test_a_process_over_its_memory_limit_is_stopped_inside_its_cgroup_and_a_sibling_lives_on(host):
    need("memory_max")
    calm = host.start("calm", "calm_00", Limits(memory_max=64 * MiB), SLEEPER)
    hog = host.start("hog", "hog_00", Limits(memory_max=64 * MiB), HOG)
    out, err = hog.communicate(timeout=DEADLINE)
    assert "allocated" not in out, "allocated 200 MiB under a 64 MiB limit"
    assert hog.returncode == -signal.SIGKILL or "MemoryError" in err, (hog.returncode, err)
    assert calm.poll() is None
    back = host.read("hog", "hog_00")
    assert back.memory_max == 64 * MiB
    if back.oom_kills is not None and hog.returncode == -signal.SIGKILL:
        assert back.oom_kills >= 1
    calm_back = host.read("calm", "calm_00")
    assert calm_back.oom_kills in (None, 0)


BOMB = """
import os, sys, time
print('ready', flush=True)
end = time.monotonic() + 8          # the guard: every process ends by then, limit or not
forked = refused = 0
while time.monotonic() < end and forked < 150 and refused < 50:   # 50 refusals in a row: the limit holds
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        time.sleep(0.01)
        continue
    if pid == 0:
        time.sleep(max(0.0, end - time.monotonic()))
        os._exit(0)
    forked, refused = forked + 1, 0
print(forked, refused, flush=True)
time.sleep(max(0.0, end - time.monotonic()))
"""


@pytest.mark.parametrize("host", ["detected", "v1"], indirect=True)
def test_a_fork_bomb_never_has_more_members_than_max_processes_and_is_then_killed(host):
    need("max_processes")
    bomb = host.start("bomb", "bomb_00", Limits(max_processes=64), BOMB)
    assert bomb.stdout is not None
    seen = 0
    deadline = time.monotonic() + DEADLINE
    report = ""
    os.set_blocking(bomb.stdout.fileno(), False)
    while not report:   # the bomb reports once it reached its limit (or its 150 forks)
        assert time.monotonic() < deadline, "the fork bomb did not report"
        back = host.read("bomb", "bomb_00")
        members = cgroups.pids(host.layout, host.scope, "bomb")
        seen = max(seen, back.pids_current or 0, len(members))
        assert seen <= 64
        report = bomb.stdout.readline()
        time.sleep(0.01)
    forked, refused = map(int, report.split())
    assert forked <= 63 and refused == 50   # the stand-in itself is one of the 64
    members = cgroups.pids(host.layout, host.scope, "bomb")
    killed = cgroups.kill(host.layout, host.scope, "bomb", timeout=DEADLINE)
    assert members <= killed and len(members) == forked + 1
    assert all(gone(pid) for pid in killed)
    assert cgroups.pids(host.layout, host.scope, "bomb") == set() or all(gone(p) for p in cgroups.pids(host.layout, host.scope, "bomb"))


CPU_HOG = "import time\nprint('ready', flush=True)\nwhile True: pass\n"


def test_a_busy_process_gets_no_more_cpu_than_its_cpu_max(host):
    need("cpu_max")
    child = host.start("spin", "spin_00", Limits(cpu_max=0.2), CPU_HOG)
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    start, used = time.monotonic(), cpu_seconds()
    time.sleep(3)   # a measurement window, not a wait for a condition
    share = (cpu_seconds() - used) / (time.monotonic() - start)
    assert share < 0.35, f"{share:.2f} of a core under a 0.2-core limit"


# -- killing --------------------------------------------------------------------------------------------------

DETACHED = """
import os, signal, sys, time
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    if os.fork() == 0:          # the grandchild: a session of its own, deaf to SIGTERM, orphaned
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(write_end, str(os.getpid()).encode())
        time.sleep(300)
    os._exit(0)
os.waitpid(child, 0)
print('ready', flush=True)
print(os.read(read_end, 64).decode(), flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("host", ["detected", "v1"], indirect=True)
def test_kill_ends_a_grandchild_that_left_the_session_and_ignores_sigterm(host):
    parent = host.start("exec", "exec_00", Limits(), DETACHED)
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    assert os.getsid(grandchild) == grandchild and grandchild != parent.pid
    assert cgroups.pids(host.layout, host.scope, "exec") == {parent.pid, grandchild}
    killed = cgroups.kill(host.layout, host.scope, "exec", timeout=DEADLINE)
    assert killed == {parent.pid, grandchild}
    assert gone(grandchild)
    assert parent.wait(timeout=DEADLINE) == -signal.SIGKILL


@pytest.mark.parametrize("host", ["detected", "v1"], indirect=True)
def test_killing_one_process_leaves_the_other_replicas_of_its_agent(host):
    first = host.start("risk", "risk_00", Limits(), SLEEPER)
    second = host.start("risk", "risk_01", Limits(), SLEEPER)
    assert cgroups.kill(host.layout, host.scope, "risk", process="risk_00", timeout=DEADLINE) == {first.pid}
    assert first.wait(timeout=DEADLINE) == -signal.SIGKILL
    assert second.poll() is None
    assert cgroups.pids(host.layout, host.scope, "risk") == {second.pid}


@pytest.mark.parametrize("host", ["detected", "v1"], indirect=True)
def test_a_restart_into_a_cgroup_with_leftovers_kills_them_first(host):
    old = host.start("feed", "feed_00", Limits(memory_max=64 * MiB), SLEEPER)
    new = host.start("feed", "feed_00", Limits(memory_max=96 * MiB), SLEEPER)
    assert old.wait(timeout=DEADLINE) == -signal.SIGKILL
    assert cgroups.pids(host.layout, host.scope, "feed") == {new.pid}
    if CONTROLS["memory_max"] is None:
        assert host.read("feed", "feed_00").memory_max == 96 * MiB


# -- changing limits live -------------------------------------------------------------------------------------

def test_update_changes_memory_max_of_a_running_process_which_keeps_its_pid(host):
    need("memory_max")
    child = host.start("feed", "feed_00", Limits(memory_max=64 * MiB), SLEEPER)
    assert host.read("feed", "feed_00").memory_max == 64 * MiB
    answer = cgroups.update(host.layout, host.scope, "feed", Limits(memory_max=96 * MiB))
    assert answer["memory_max"] is None
    assert host.read("feed", "feed_00").memory_max == 96 * MiB
    assert child.poll() is None
    assert cgroups.pids(host.layout, host.scope, "feed") == {child.pid}


def test_update_reaches_every_replica_of_the_agent(host):
    need("max_processes")
    host.start("feed", "feed_00", Limits(max_processes=10), SLEEPER)
    host.start("feed", "feed_01", Limits(max_processes=10), SLEEPER)
    cgroups.update(host.layout, host.scope, "feed", Limits(max_processes=20))
    assert host.read("feed", "feed_00").max_processes == 20
    assert host.read("feed", "feed_01").max_processes == 20


HOLDER = "b = bytearray(80 << 20)\nprint('ready', flush=True)\nimport time; time.sleep(300)\n"


def test_a_memory_max_below_usage_is_written_as_asked_or_refused_with_the_old_limit_kept(host):
    """v2 takes a limit under current usage and reclaims or OOM-kills inside the cgroup; v1 refuses what it
    cannot reclaim (EBUSY). Either way the answer says what is in force, and v1's memory+swap limit is never
    left lifted above the memory limit by the attempt."""
    need("memory_max")
    child = host.start("feed", "feed_00", Limits(memory_max=128 * MiB), HOLDER)
    answer = cgroups.update(host.layout, host.scope, "feed", Limits(memory_max=32 * MiB))
    back = host.read("feed", "feed_00")
    if answer["memory_max"] is None:
        assert back.memory_max == 32 * MiB
        return
    assert "the previous limit stays" in answer["memory_max"]
    assert back.memory_max == 128 * MiB and child.poll() is None
    memsw = Path(host.layout.v1_for("memory").dir(cgroups.path_of(host.scope, "feed", "feed_00"))) / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        assert int(memsw.read_text()) == 128 * MiB


# -- membership and removal -----------------------------------------------------------------------------------

TREE = """
import subprocess, sys, time
children = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']) for _ in range(2)]
print('ready', *[c.pid for c in children], flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("host", ["detected", "v1"], indirect=True)
def test_pids_lists_the_whole_tree_of_an_agent_and_of_the_scope(host):
    parent = subprocess.Popen([sys.executable, "-c", STAND_IN, host.mode, host.scope, "tree", "tree_00", "{}",
                               sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    host.started.append(parent)
    host.agents.add("tree")
    assert parent.stdout is not None
    children = {int(pid) for pid in parent.stdout.readline().split()[1:]}
    other = host.start("calm", "calm_00", Limits(), SLEEPER)
    assert len(children) == 2
    assert cgroups.pids(host.layout, host.scope, "tree") == {parent.pid, *children}
    assert cgroups.pids(host.layout, host.scope) == {parent.pid, *children, other.pid}


@pytest.mark.parametrize("host", ["detected", "v1"], indirect=True)
def test_remove_leaves_no_directory_of_the_scope_behind(host):
    feed = host.start("feed", "feed_00", Limits(memory_max=64 * MiB, max_processes=10), SLEEPER)
    risk = host.start("risk", "risk_00", Limits(), SLEEPER)
    assert scope_dirs(host.scope)
    cgroups.remove(host.layout, host.scope)   # both still run: their cgroups stay, and that is no error
    assert cgroups.pids(host.layout, host.scope, "feed") == {feed.pid}
    for agent, child in (("feed", feed), ("risk", risk)):
        cgroups.kill(host.layout, host.scope, agent, timeout=DEADLINE)
        child.wait(timeout=DEADLINE)   # reaped: a zombie may still hold a v1 cgroup
    cgroups.remove(host.layout, host.scope, "feed")
    assert cgroups.read(host.layout, host.scope, "feed", "feed_00") is None
    assert cgroups.read(host.layout, host.scope, "risk", "risk_00") is not None
    wait_until(lambda: (cgroups.remove(host.layout, host.scope), not scope_dirs(host.scope))[1], "the scope's cgroups removed")
