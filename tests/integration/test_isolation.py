"""Isolation and resource controls, with a real supervisord: exact environments, secrets kept off disk.

Each agent here is a small Python program that writes what it was given (its environment, or what the kernel
says of it) to a file the test reads, then waits to be stopped.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Project, wait_until

# writes its environment as JSON to argv[1] (atomically), then sleeps until stopped
REPORTER = ("import json, os, sys, time; tmp = sys.argv[1] + '.tmp'; "
            "open(tmp, 'w').write(json.dumps(dict(os.environ))); os.replace(tmp, sys.argv[1]); time.sleep(3600)")

HARD_VALUES = {
    "BOTH_QUOTES": "it's \"q\" ok",
    "QUOTED": "\"quoted\"",
    "SINGLE_ENDS": "'single'",
    "PERCENT": "100% %(here)s %%",
    "SEMICOLON": "a;b; c",
    "HASH": "#not a comment",
    "NEWLINE": "line one\nline two\n",
    "JSON": "{\"a\": [1, \"two\"], \"b\": null}",
    "SPACES": "  padded  ",
    "BACKSLASH": "C:\\path\\n",
}
SECRET = "s3cr3t-Value-That-Must-Not-Leak-42"
NEW_SECRET = "an0ther-Secret-Value-Also-Private-7"


def _reporter(project: Project, name: str, out: Path, env_yaml: str, more: str = "") -> None:
    project.write(f"agents/{name}.yaml", f"""
name: {name}
command: [{json.dumps(sys.executable)}, "-c", {json.dumps(REPORTER)}, {json.dumps(str(out))}]
min_uptime: 0s
stop_timeout: 5s
env:
{env_yaml}
{more}""")


def _env_yaml(values: dict[str, str]) -> str:
    # JSON strings are YAML double-quoted scalars: every value is written exactly
    return "".join(f"  {name}: {json.dumps(value)}\n" for name, value in values.items())


def _every_file(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_environment_values_reach_the_agent_byte_for_byte_and_a_secret_only_its_0600_launch_file(
        project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "env.json"
    monkeypatch.setenv("TEST_DB_PASSWORD", SECRET)
    _reporter(project, "reporter", out, _env_yaml(HARD_VALUES)
              + "  DB_PASSWORD: {secret: true, from_env: TEST_DB_PASSWORD}\n")
    done = project.run("up", "--yes", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(out.exists, 30, message="the agent did not write its environment")
    seen = json.loads(out.read_text())
    for name, value in HARD_VALUES.items():
        assert seen[name] == value, name
    assert seen["DB_PASSWORD"] == SECRET

    # the secret is on disk in the agent's launch file alone, and that file is private
    holders = [p for p in _every_file(project.state) if SECRET.encode() in p.read_bytes()]
    assert [p.parent.name for p in holders] == ["launch"], holders
    assert stat.S_IMODE(holders[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(holders[0].parent.stat().st_mode) == 0o700
    # ... and in no output: status, show, diff, history, the plan, the metrics of the exporter
    outputs = [project.run(*args) for args in (("status", "--output", "json"), ("status", "reporter"), ("show", "1"),
                                              ("diff",), ("history",), ("plan",), ("render",))]
    for done in outputs:
        assert SECRET not in done.stdout + done.stderr, done.args

    # a changed secret: the plan and apply say so, without the value, and the agent restarts with the new one
    monkeypatch.setenv("TEST_DB_PASSWORD", NEW_SECRET)
    plan = project.run("plan")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert "reporter" in plan.stdout and "secret" in plan.stdout
    assert NEW_SECRET not in plan.stdout and SECRET not in plan.stdout
    out.unlink()
    applied = project.run("apply", "--yes", timeout=180)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    wait_until(out.exists, 30, message="the agent did not restart with the new secret")
    assert json.loads(out.read_text())["DB_PASSWORD"] == NEW_SECRET
    diff = project.run("diff", "1", "2")
    assert "secret" in diff.stdout and NEW_SECRET not in diff.stdout and SECRET not in diff.stdout
    for path in _every_file(project.state):
        data = path.read_bytes()
        if NEW_SECRET.encode() in data or SECRET.encode() in data:
            assert path.parent.name == "launch" and stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # the old launch file, with the old secret, is gone once the new version is live
    assert not any(SECRET.encode() in p.read_bytes() for p in _every_file(project.state))


def test_a_secret_missing_from_the_environment_stops_apply_before_anything_changes(project: Project, tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TEST_NOT_SET_ANYWHERE", raising=False)
    _reporter(project, "reporter", tmp_path / "env.json", "  TOKEN: {secret: true, from_env: TEST_NOT_SET_ANYWHERE}\n")
    done = project.run("up", "--yes", timeout=180)
    assert done.returncode != 0
    assert "TEST_NOT_SET_ANYWHERE is not set" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not (project.state / "history").exists() or not any((project.state / "history").iterdir())


def test_an_env_file_open_to_others_is_refused_and_a_private_one_is_read(project: Project, tmp_path: Path):
    out = tmp_path / "env.json"
    secrets = project.manifests / "trader.env"
    secrets.write_text(f"# the trader's secrets\nAPI_KEY={SECRET}\nEMPTY=\n")
    secrets.chmod(0o644)
    _reporter(project, "reporter", out, "  PLAIN: visible\n", more="env_file: manifests/trader.env\n")
    refused = project.run("validate")
    assert refused.returncode == 1
    assert "trader.env has mode 0644" in refused.stdout + refused.stderr and "chmod 600" in refused.stdout + refused.stderr
    secrets.chmod(0o600)
    done = project.run("up", "--yes", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(out.exists, 30, message="the agent did not write its environment")
    seen = json.loads(out.read_text())
    assert (seen["API_KEY"], seen["EMPTY"], seen["PLAIN"]) == (SECRET, "", "visible")
    assert not any(SECRET.encode() in p.read_bytes() for p in _every_file(project.state) if p.parent.name != "launch")


@pytest.mark.skipif(os.geteuid() != 0, reason="the warning is about a supervisord run as root")
def test_agents_that_would_run_as_root_are_warned_about_or_refused(project: Project, tmp_path: Path):
    _reporter(project, "reporter", tmp_path / "env.json", "  PLAIN: x\n")
    warned = project.run("validate")
    assert warned.returncode == 0
    assert "will run as root (reporter)" in warned.stdout + warned.stderr
    settings = project.manifests / "orchestrator.yaml"
    settings.write_text(settings.read_text() + "require_user: true\n")
    refused = project.run("validate")
    assert refused.returncode == 1
    assert "would run as root" in refused.stdout + refused.stderr and "reporter.yaml:1:7" in refused.stdout + refused.stderr
    settings.write_text(settings.read_text() + "default_user: nobody\n")
    assert project.run("validate").returncode == 0


# -- controls in force, read back from the kernel -------------------------------------------------------------

# sleeps until stopped; on SIGUSR1 tries to allocate 200 MiB, 8 MiB at a time, and says how far it got
ALLOCATOR = """
import os, signal, sys, time
def grow(*_):
    held = []
    try:
        for step in range(25):
            held.append(bytearray(8 * 1024 * 1024))
            for i in range(0, len(held[-1]), 4096):
                held[-1][i] = 1
            open(sys.argv[1], "w").write(str(step + 1))
    except MemoryError:
        open(sys.argv[1], "w").write("refused")
signal.signal(signal.SIGUSR1, grow)
while True:
    time.sleep(0.2)
"""

# forks children that sleep, as many as it can (within 8 s), writing how many it made; then sleeps
FORKER = """
import os, sys, time
made, deadline = 0, time.monotonic() + 8
while made < 500 and time.monotonic() < deadline:
    try:
        if os.fork() == 0:
            time.sleep(3600)
            os._exit(0)
        made += 1
    except OSError:
        break
open(sys.argv[1], "w").write(str(made))
time.sleep(3600)
"""


def _controlled(project: Project, name: str, script: str, arg: Path, resources: str, more: str = "") -> None:
    project.write(f"agents/{name}.yaml", f"""
name: {name}
command: [{json.dumps(sys.executable)}, "-c", {json.dumps(script)}, {json.dumps(str(arg))}]
min_uptime: 0s
stop_timeout: 3s
resources: {resources}
{more}""")


def _row(project: Project, name: str) -> dict:
    done = project.run("status", "--output", "json", name)
    rows = json.loads(done.stdout)
    assert len(rows) == 1, done.stdout + done.stderr
    return rows[0]


def _controls(project: Project, name: str) -> dict:
    row = _row(project, name)
    assert row["pid"], row
    return row


def _need(control: str) -> None:
    from orchestrator.host import cgroups
    why = cgroups.controls(cgroups.detect()).get(control)
    if why:
        pytest.skip(f"{control} is not enforceable on this host: {why}")


def test_controls_read_back_from_the_kernel_equal_the_manifest_and_limits_hold_inside_the_agent(project: Project,
                                                                                               tmp_path: Path):
    _need("memory_max")
    _need("max_processes")
    grown, forked = tmp_path / "grown", tmp_path / "forked"
    _controlled(project, "hungry", ALLOCATOR, grown,
                "{nice: 10, cpu_affinity: [0], open_files: 256, max_processes: 64, memory_max: 64MB, "
                "oom_score_adj: 500, core_dumps: false}")
    _controlled(project, "forker", FORKER, forked, "{max_processes: 64}")
    _controlled(project, "neighbour", REPORTER, tmp_path / "neighbour.json", "{memory_max: 64MB}")
    done = project.run("up", "--yes", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    row = _controls(project, "hungry")
    pid, found = row["pid"], row["controls"]
    assert (found["nice"], found["cpu_affinity"], found["open_files"], found["oom_score_adj"], found["core_dumps"]) == \
        (10, [0], 256, 500, False)
    assert found["cgroup"]["memory_max"] == 64 * 1000 * 1000 and found["cgroup"]["max_processes"] == 64
    # ... and from /proc itself, for the running process supervisord started
    assert os.getpriority(os.PRIO_PROCESS, pid) == 10 and os.sched_getaffinity(pid) == {0}
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert any(line.startswith("Max open files") and line.split()[3:5] == ["256", "256"] for line in limits.splitlines())
    neighbour = _controls(project, "neighbour")["pid"]

    # an allocation beyond memory_max fails or is killed inside that agent alone, and is reported
    os.kill(pid, 10)   # SIGUSR1
    wait_until(lambda: _row(project, "hungry")["pid"] != pid or grown.exists() and grown.read_text() == "refused",
               60, message="the allocation beyond memory_max was neither refused nor killed")
    assert os.path.exists(f"/proc/{neighbour}"), "the neighbour was killed for another agent's memory"
    if grown.exists() and grown.read_text().isdigit():
        assert int(grown.read_text()) * 8 < 64, "the agent held more than its memory_max"
    # reported with its reason (the kernel's count of OOM kills in its cgroup, which starts anew with each run)
    wait_until(lambda: _row(project, "hungry")["pid"], 60, message="the agent was not restarted")
    assert "killed by the kernel: out of memory in its cgroup" in str(project.runtime("hungry").get("reason", "")), \
        project.runtime("hungry")

    # a fork bomb stops at max_processes
    wait_until(forked.exists, 60, message="the forker did not finish forking")
    assert int(forked.read_text()) < 64
    assert _controls(project, "forker")["controls"]["cgroup"]["pids_current"] <= 64


def test_nice_affinity_and_memory_max_change_live_on_the_same_pid(project: Project, tmp_path: Path):
    _need("memory_max")
    if os.cpu_count() is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to change an affinity")
    _controlled(project, "steady", REPORTER, tmp_path / "env.json", "{nice: 5, cpu_affinity: [0], memory_max: 256MB}")
    assert project.run("up", "--yes", timeout=180).returncode == 0
    before = _controls(project, "steady")
    plan_text = None
    _controlled(project, "steady", REPORTER, tmp_path / "env.json", "{nice: 12, cpu_affinity: [1], memory_max: 512MB}")
    plan_text = project.run("plan").stdout
    assert "steady" in plan_text and "update" in plan_text.lower() and "replace" not in plan_text.lower(), plan_text
    applied = project.run("apply", "--yes", timeout=180)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    after = _controls(project, "steady")
    assert after["pid"] == before["pid"]
    assert (after["controls"]["nice"], after["controls"]["cpu_affinity"]) == (12, [1])
    assert after["controls"]["cgroup"]["memory_max"] == 512 * 1000 * 1000
    assert os.getpriority(os.PRIO_PROCESS, after["pid"]) == 12


# forks a grandchild that calls setsid, ignores SIGTERM, and carries MARK; then sleeps
ESCAPER = """
import os, signal, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.execvp(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)", sys.argv[1]])
    os._exit(0)
time.sleep(3600)
"""


def _marked(mark: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if mark.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("how", ["stop", "down", "emergency-stop"])
def test_a_setsid_grandchild_that_ignores_sigterm_is_left_behind_by_no_stop(project: Project, tmp_path: Path, how: str):
    mark = f"escaper-mark-{os.getpid()}-{how}"
    _controlled(project, "escaper", ESCAPER, Path(mark), "{}")
    assert project.run("up", "--yes", timeout=180).returncode == 0
    wait_until(lambda: len(_marked(mark)) == 2, 30, message="the grandchild did not start")   # it, and the agent
    args = {"stop": ("stop", "escaper", "--yes"), "down": ("down", "--yes"),
            "emergency-stop": ("emergency-stop", "--yes", "--reason", "test")}[how]
    done = project.run(*args, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _marked(mark) == [], f"{how} left the grandchild running"
    if how == "down":   # and the agents' cgroups are gone with supervisord
        from orchestrator.host import cgroups
        from orchestrator.supervisord import launching
        assert cgroups.agents(cgroups.detect(), launching.scope(str(project.state))) == set()


def test_default_user_runs_agents_as_that_user_in_proc(project: Project, tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("changing an agent's user needs a root supervisord")
    settings = project.manifests / "orchestrator.yaml"
    settings.write_text(settings.read_text() + "default_user: nobody\n")
    project.write("agents/sleeper.yaml", """
name: sleeper
command: ["/bin/sleep", "3600"]
min_uptime: 0s
stop_timeout: 3s
sandbox: {private_tmp: true}
""")
    done = project.run("up", "--yes", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    row = _controls(project, "sleeper")
    status = Path(f"/proc/{row['pid']}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid) == __import__("pwd").getpwnam("nobody").pw_uid
    assert row["controls"]["user"] == "nobody"
    private = project.state / "tmp" / "sleeper" / "sleeper"
    assert private.is_dir() and private.stat().st_uid == int(uid) and stat.S_IMODE(private.stat().st_mode) == 0o700
    assert project.run("stop", "sleeper", "--yes").returncode == 0
    assert not private.exists(), "the private temporary directory outlived the agent"


# tries to write into argv[2] and to reach 127.0.0.1:argv[3], writes what happened to argv[1], then sleeps
PROBER = """
import json, os, socket, sys, time
found = {}
try:
    open(os.path.join(sys.argv[2], "written"), "w").write("x")
    found["write"] = "ok"
except OSError as exc:
    found["write"] = exc.strerror
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[3])), timeout=2).close()
    found["connect"] = "ok"
except OSError as exc:
    found["connect"] = exc.strerror or str(exc)
found["tmpdir"] = os.environ.get("TMPDIR")
tmp = sys.argv[1] + ".tmp"
open(tmp, "w").write(json.dumps(found))
os.replace(tmp, sys.argv[1])
time.sleep(3600)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces of an agent's own need a root supervisord")
def test_read_only_paths_and_no_network_hold_for_the_agent_and_not_for_its_neighbour(project: Project, tmp_path: Path):
    import socket as sockets
    guarded = tmp_path / "guarded"
    guarded.mkdir()
    listener = sockets.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        for name, sandbox in (("boxed", f"{{read_only_paths: [{json.dumps(str(guarded))}], no_network: true, private_tmp: true}}"),
                              ("free", "{}")):
            out = tmp_path / f"{name}.json"
            project.write(f"agents/{name}.yaml", f"""
name: {name}
command: [{json.dumps(sys.executable)}, "-c", {json.dumps(PROBER)}, {json.dumps(str(out))}, {json.dumps(str(guarded))}, "{port}"]
min_uptime: 0s
stop_timeout: 3s
sandbox: {sandbox}
""")
        done = project.run("up", "--yes", timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        for name in ("boxed", "free"):
            wait_until((tmp_path / f"{name}.json").exists, 30, message=f"{name} did not report")
        boxed = json.loads((tmp_path / "boxed.json").read_text())
        free = json.loads((tmp_path / "free.json").read_text())
        assert boxed["write"] == "Read-only file system" and boxed["connect"] != "ok"
        assert boxed["tmpdir"] == str(project.state / "tmp" / "boxed" / "boxed")
        assert free["connect"] == "ok" and free["tmpdir"] is None
        row = _controls(project, "boxed")["controls"]
        assert row["own_network"] is True and row["own_mounts"] is True
        assert _controls(project, "free")["controls"]["own_network"] is False
    finally:
        listener.close()
