"""The command line contract: names, exit codes, output a script can read, help that explains."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.interfaces.cli import cli
from tests.conftest import DEFAULT_MANIFESTS


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def test_validate_accepts_the_default_trading_set():
    result = run("-m", str(DEFAULT_MANIFESTS), "validate")
    assert result.exit_code == 0, result.output
    assert "valid: 5 agents" in result.stdout and result.stderr == ""


def test_validate_finds_the_manifests_through_the_environment_variable():
    result = run("validate", env={"ORCHESTRATOR_MANIFESTS": str(DEFAULT_MANIFESTS)})
    assert result.exit_code == 0 and "valid: 5 agents" in result.stdout


def test_validate_with_an_environment_overlay_says_which():
    result = run("-m", str(DEFAULT_MANIFESTS), "--env", "prod", "validate")
    assert result.exit_code == 0 and "(env prod)" in result.stdout


def test_invalid_manifests_exit_1_with_each_error_on_stderr_and_a_count(manifest_set):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\nreplicas: 0\ndependson: []\n"})
    result = run("-m", str(manifests), "validate")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].endswith("agents/a.yaml:3:11: replicas: got 0 (expected an integer from 1 to 1000)")
    assert lines[1].endswith("agents/a.yaml:4:1: dependson: unknown key (did you mean 'depends_on'?)")
    assert lines[2] == "invalid manifests: 2 errors"
    assert result.stdout == ""


def test_validate_json_output_carries_every_diagnostic_for_scripts(manifest_set):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\nreplicas: 0\n"})
    result = run("-m", str(manifests), "validate", "--output", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert [(d["line"], d["col"], d["key"], d["severity"]) for d in report["diagnostics"]] == [(3, 11, "replicas", "error")]
    ok = json.loads(run("-m", str(DEFAULT_MANIFESTS), "validate", "--output", "json").stdout)
    assert ok["valid"] is True and sorted(ok["agents"]) == ["market-data", "order-executor", "portfolio-tracker", "risk-manager", "strategy-engine"]


def test_warnings_are_shown_but_do_not_fail_validation(manifest_set):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\nresources: {cpu_affinity: [4096]}\n"})
    result = run("-m", str(manifests), "validate")
    assert result.exit_code == 0
    assert "warning: resources.cpu_affinity[0]: CPU 4096 does not exist on this machine" in result.stderr
    assert "1 warning" in result.stdout


def test_a_missing_manifests_directory_is_a_clear_error_not_a_traceback(tmp_path):
    result = run("-m", str(tmp_path / "nowhere"), "validate")
    assert result.exit_code == 1
    assert "manifests directory not found" in result.stderr and "Traceback" not in result.output


def test_render_prints_the_main_config_first_then_one_file_per_agent():
    result = run("-m", str(DEFAULT_MANIFESTS), "render")
    assert result.exit_code == 0, result.output
    headers = [line for line in result.stdout.splitlines() if line.startswith("; ==> ")]
    assert headers[0] == "; ==> supervisord.conf <=="
    assert sorted(headers[1:]) == [f"; ==> programs/{n}.conf <==" for n in
                                   ("market-data", "order-executor", "portfolio-tracker", "risk-manager", "strategy-engine")]


def test_render_out_writes_the_same_bytes_every_time(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    assert run("-m", str(DEFAULT_MANIFESTS), "render", "--out", str(first)).exit_code == 0
    assert run("-m", str(DEFAULT_MANIFESTS), "render", "--out", str(second)).exit_code == 0
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert Path("supervisord.conf") in files and len(files) == 6
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes()


def test_render_refuses_invalid_manifests_and_writes_nothing(manifest_set, tmp_path):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\nreplicas: 0\n"})
    result = run("-m", str(manifests), "render", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt, marker", [("text", "wave 1"), ("dot", "digraph"), ("mermaid", "flowchart"), ("json", '"waves"')])
def test_graph_prints_every_format(fmt, marker):
    result = run("-m", str(DEFAULT_MANIFESTS), "graph", "--format", fmt)
    assert result.exit_code == 0 and marker in result.stdout


def test_an_unknown_graph_format_is_a_usage_error():
    result = run("-m", str(DEFAULT_MANIFESTS), "graph", "--format", "png")
    assert result.exit_code == 2 and "Invalid value" in result.output


@pytest.mark.parametrize("command", ["validate", "render", "graph", "schema"])
def test_every_command_explains_itself(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and len(result.stdout.split()) > 25


def test_the_top_level_help_documents_exit_codes():
    result = run("--help")
    assert "Exit codes: 0 success, 1 invalid manifests" in " ".join(result.stdout.split())


def test_the_installed_console_script_runs():
    """The entry point installed by pip is what users type."""
    import subprocess
    import sys
    script = Path(sys.executable).parent / "orchestrator"
    done = subprocess.run([str(script), "-m", str(DEFAULT_MANIFESTS), "validate"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr


def test_a_plan_changed_under_applys_lock_is_shown_and_with_yes_carried_out_saying_so(capsys):
    from orchestrator.core.plan import Action, Plan
    from orchestrator.interfaces.commands.changes import _confirm_changed

    shown = Plan((Action("add", "extra", reason="new agent"),), fingerprint="a")
    new = Plan((Action("add", "extra", reason="new agent"), Action("start", "calc", reason="stopped")), fingerprint="b")
    assert _confirm_changed(True)(shown, new) is True
    err = capsys.readouterr().err
    assert "The plan changed since it was shown" in err
    assert "start    calc" in err and "Plan: 1 to add, 1 to start." in err
    assert "Carrying out the new plan (--yes)." in err


def test_alerts_lists_what_fires_and_the_latest_transitions_in_text_and_json(tmp_path):
    from orchestrator.core.alerts import Rule, Transition
    from orchestrator.state import alerts

    state = tmp_path / "state"
    rule = Rule(agent="leaky", metric="memory_mb", level="CRITICAL", fire_at=400, resolve_at=360, for_seconds=10)
    warning = Rule(agent="leaky", metric="memory_mb", level="WARNING", fire_at=300, resolve_at=270)
    alerts.record(str(state), alerts.AlertRecord.of(Transition(warning, "firing", 310.0, 1000.0)))
    alerts.record(str(state), alerts.AlertRecord.of(Transition(rule, "firing", 412.0, 1010.0)))
    alerts.record(str(state), alerts.AlertRecord.of(Transition(warning, "resolved", 260.0, 1020.0)))
    text = run("-m", str(DEFAULT_MANIFESTS), "--state-dir", str(state), "alerts")
    assert text.exit_code == 0, text.output
    assert "1 alert firing" in text.stdout and "leaky CRITICAL firing: memory_mb 412 is at or above 400" in text.stdout
    assert "leaky WARNING resolved: memory_mb 260 is below 270" in text.stdout
    data = json.loads(run("-m", str(DEFAULT_MANIFESTS), "--state-dir", str(state), "alerts", "--output", "json").stdout)
    assert [a["level"] for a in data["active"]] == ["CRITICAL"]
    assert [(a["level"], a["kind"]) for a in data["recent"]] == [("WARNING", "firing"), ("CRITICAL", "firing"),
                                                                ("WARNING", "resolved")]
    assert "No alert is firing." in run("-m", str(DEFAULT_MANIFESTS), "--state-dir", str(tmp_path / "empty"), "alerts").stdout


@pytest.mark.parametrize("target, complaint", [
    ("{name: pager, type: command}", "notifications[0]: a command target needs `command`"),
    ("{name: hook}", "notifications[0]: a webhook target needs `url`"),
    ("{name: hook, url: 'http://127.0.0.1:9/x', command: ['true']}", "notifications[0].command: a webhook target takes no `command`"),
    ("{name: hook, url: 'http://127.0.0.1:9/x', min_severity: loud}", "notifications[0].min_severity"),
])
def test_a_wrong_notification_target_is_a_located_error(manifest_set, target, complaint):
    manifests = manifest_set({"orchestrator.yaml": f"project: p\nnotifications:\n  - {target}\n",
                              "agents/a.yaml": "name: a\ncommand: [sleep, '60']\n"})
    result = run("-m", str(manifests), "validate")
    assert result.exit_code == 1
    assert "orchestrator.yaml:3:" in result.stderr and complaint in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["status", "alerts"])
def test_commands_that_read_only_the_state_directory_start_without_the_loader_or_apply(command):
    """`status` at 500 agents must answer in under half a second (bench/bench_status.py), a fifth of which the
    manifest loader (ruamel, jinja2) and the apply machinery would cost to import: commands that never load a
    manifest must not import them."""
    import subprocess
    import sys
    probe = ("import sys\nfrom orchestrator.interfaces.cli import cli\nassert cli.get_command(None, sys.argv[1])\n"
             "print(' '.join(m for m in ('ruamel.yaml', 'jinja2', 'orchestrator.config.manifest', "
             "'orchestrator.operations.apply', 'orchestrator.operations.lifecycle') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, command], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"{command} imports {done.stdout.strip()}"


def test_every_command_of_the_table_is_found_under_its_own_name():
    from orchestrator.interfaces.cli import COMMANDS
    assert all(cli.get_command(None, name).name == name for name in COMMANDS)
    assert cli.get_command(None, "no-such-command") is None
