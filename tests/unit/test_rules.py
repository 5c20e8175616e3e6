"""The generated Prometheus alerting rules, judged by promtool: `check rules`, and `test rules` on synthetic series.

The promtool unit tests are built here from the same rule data the generator returns, one test case per
rule (it fires, it does not fire a step earlier, and it waits out its `for`), so a rule added without a
case here fails `test_every_generated_rule_has_a_promtool_case`. Every metric a rule reads must be one the
exporter declares (its Collector's `describe()`)), save for the few in FORTHCOMING.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.config.yamltree import dump
from orchestrator.core import rules
from orchestrator.core.model import Agent, Exporter, ManifestSet, Resources, RestartPolicy, Settings, Thresholds
from orchestrator.daemons.exporter import Exporter as MetricsCollector
from orchestrator.operations import rules as prom_rules

DEMO = Path(__file__).resolve().parents[2] / "manifests"
STEP = 5.0            # the synthetic series' interval and the evaluation interval: the exporter's default
RISE = 12             # samples below the line before the value rises to it (at RISE * STEP seconds)

# Metrics a rule may read before the exporter declares them (none now: add one only with the work that
# will export it, and remove it once the exporter has it).
FORTHCOMING: set[str] = set()
# Series Prometheus makes itself for every scrape target, not the exporter's.
PROMETHEUS_OWN = {"up"}


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs Debian's prometheus package"
    return path


def demo() -> ManifestSet:
    return load(LoadOptions(str(DEMO), check_commands=False))


def rich() -> ManifestSet:
    """Agents that exercise every branch of the generator: each threshold kind, `for`, replicas, the manual
    policy (no crash-loop rule), open files without thresholds, nothing at all, a name PromQL must quote."""
    def agent(name: str, **kw: Any) -> Agent:
        return Agent(name=name, command=("/bin/true",), **kw)
    return ManifestSet(
        settings=Settings(project="rich", exporter=Exporter(listen="127.0.0.1:9311", interval=5.0)),
        agents=(
            agent("bare"),
            agent("feed", replicas=3, restart=RestartPolicy(max_attempts=3, window=300.0),
                  resources=Resources(cpu_percent=Thresholds(warning=50, critical=75.5, limit=150, for_seconds=15.0),
                                      memory_mb=Thresholds(warning=100, critical=200, limit=300, for_seconds=10.0),
                                      open_fds=Thresholds(warning=500, critical=900, limit=1000, for_seconds=5.0))),
            agent("manual-one", restart=RestartPolicy(policy="manual", max_attempts=1),
                  resources=Resources(memory_mb=Thresholds(limit=64))),
            agent("files-only", restart=RestartPolicy(max_attempts=10, window=3600.0),
                  resources=Resources(open_files=4096)),
            agent("single-try", restart=RestartPolicy(max_attempts=1, window=60.0),
                  resources=Resources(open_fds=Thresholds(critical=10, for_seconds=120.0))),
        ),
        manifests_dir="/nonexistent/manifests", state_dir="/nonexistent/.orchestrator")


SETS = {"demo": demo, "rich": rich}


# --- promtool check rules ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SETS))
def test_promtool_accepts_the_rules_generated_from_each_manifest_set(name: str, tmp_path: Path) -> None:
    manifests = SETS[name]()
    path = prom_rules.write_rules(manifests, str(tmp_path))
    done = subprocess.run([_promtool(), "check", "rules", path], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules.alert_rules(manifests))} rules found" in done.stdout


def test_the_scrape_configuration_is_accepted_by_promtool(tmp_path: Path) -> None:
    manifests = demo()
    prom_rules.write_rules(manifests, str(tmp_path))
    config = tmp_path / "prometheus.yml"
    config.write_text(prom_rules.prometheus_config_text(manifests, str(tmp_path)))
    done = subprocess.run([_promtool(), "check", "config", str(config)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    job = rules.scrape_config(manifests, "r.yml")["scrape_configs"][0]
    assert job["job_name"] == "orchestrator" and job["scrape_interval"] == "5s"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9300"]


# --- promtool test rules: one case per generated rule ----------------------------------------------

def go_float(value: float) -> str:
    """`value` as Go's %v prints a float64, as Prometheus's templates show `$value`: shortest digits, and
    exponent notation below 1e-4 or from 1e6 (1e+06, 3.145728e+08)."""
    sign, digits, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    power = len(text) + exponent - 1
    if power < -4 or power >= 6:
        mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
        return f"{'-' if sign else ''}{mantissa}e{'+' if power >= 0 else '-'}{abs(power):02d}"
    return f"{'-' if sign else ''}{Decimal(repr(float(value))).normalize():f}"


HUMANIZED = {1800.0: "30m 0s"}   # Prometheus's humanizeDuration of the forecast used below


def _summary(rule: rules.AlertRule, labels: dict[str, str], value: float) -> str:
    text = rule.summary.replace("{{ $value | humanizeDuration }}", HUMANIZED.get(value, "?"))
    text = text.replace("{{ $value }}", go_float(value))
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)


def _at(seconds: float) -> str:
    return rules.duration(seconds) if seconds else "0s"


def _case(rule: rules.AlertRule, series: list[dict[str, str]], *, labels: dict[str, str], value: float,
          rises_at: float, quiet_at: float | None = None) -> dict[str, Any]:
    """A test case: `series`, the alert absent a step before the value rises (`quiet_at`) and while its
    `for` runs, and firing with `labels` once it is over."""
    fires_at = rises_at + rule.for_seconds
    quiet = [quiet_at if quiet_at is not None else rises_at - STEP]
    if rule.for_seconds >= STEP:
        quiet.append(fires_at - STEP)   # pending, not firing: `for` holds it back
    tests = [{"eval_time": _at(t), "alertname": rule.alert, "exp_alerts": []} for t in quiet]
    expected = {**labels, **dict(rule.labels)}
    tests.append({"eval_time": _at(fires_at), "alertname": rule.alert,
                  "exp_alerts": [{"exp_labels": expected,
                                  "exp_annotations": {"summary": _summary(rule, expected, value)}}]})
    return {"name": f"{rule.alert} {rule.key[1]}".strip(), "interval": _at(STEP), "input_series": series,
            "alert_rule_test": tests}


_THRESHOLD = re.compile(r'^(?P<metric>\w+)\{agent="(?P<agent>[^"]+)"\} >= (?P<value>[0-9.e+-]+)$')


def _threshold_case(rule: rules.AlertRule) -> dict[str, Any]:
    m = _THRESHOLD.match(rule.expr)
    assert m, rule.expr
    line, agent = float(m["value"]), m["agent"]
    below = line - max(1.0, line * 0.01) if line >= 100 else line * 0.99
    process = f"{agent}_1"
    samples = RISE + int(rule.for_seconds // STEP) + 4
    series = [{"series": f'{m["metric"]}{{agent="{agent}",process="{process}"}}',
               "values": f"{below!r}x{RISE - 1} {line!r}x{samples}"}]
    return _case(rule, series, labels={"agent": agent, "process": process}, value=line, rises_at=RISE * STEP)


def _gauge_case(rule: rules.AlertRule, metric: str, before: float, after: float, value: float,
                extra: dict[str, str] | None = None) -> dict[str, Any]:
    agent = rule.key[1]
    labels = {"agent": agent, **(extra or {})} if agent else dict(extra or {})
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    samples = RISE + int(rule.for_seconds // STEP) + 4
    series = [{"series": f"{metric}{{{selector}}}", "values": f"{before!r}x{RISE - 1} {after!r}x{samples}"}]
    return _case(rule, series, labels=labels, value=value, rises_at=RISE * STEP)


def _crash_loop_case(rule: rules.AlertRule, manifests: ManifestSet) -> dict[str, Any]:
    """The counter stays 0 for a whole window, counts one restart short of the line (no alert while the
    window holds that count), then reaches it (the alert, at once)."""
    agent = manifests.agent(rule.key[1])
    least = rules.crash_loop_restarts(agent)
    flat = int(agent.restart.window // STEP) + 2
    series = [{"series": f'orchestrator_agent_restarts_total{{agent="{agent.name}",reason="exit"}}',
               "values": f"0x{flat - 1} {least - 1}x2 {least}x{flat}"}]
    return _case(rule, series, labels={"agent": agent.name}, value=float(least), rises_at=(flat + 3) * STEP,
                 quiet_at=(flat + 1) * STEP)


def promtool_cases(manifests: ManifestSet) -> list[dict[str, Any]]:
    cases = []
    for rule in rules.alert_rules(manifests):
        if rule.alert.startswith(("AgentCpu", "AgentMemory", "AgentOpenFds")) and "Exhaustion" not in rule.alert:
            cases.append(_threshold_case(rule))
        elif rule.alert == "AgentGivenUp":
            cases.append(_gauge_case(rule, "orchestrator_agent_given_up", 0.0, 1.0, 1.0))
        elif rule.alert == "AgentDown":
            cases.append(_gauge_case(rule, "orchestrator_agent_up", 1.0, 0.0, 0.0))
        elif rule.alert == "AgentCrashLooping":
            cases.append(_crash_loop_case(rule, manifests))
        elif rule.alert in ("AgentMemoryExhaustionPredicted", "AgentOpenFdsExhaustionPredicted"):
            resource = "memory" if "Memory" in rule.alert else "fds"
            cases.append(_gauge_case(rule, "orchestrator_agent_exhaustion_seconds", 2 * rules.EXHAUSTION_HORIZON,
                                     1800.0, 1800.0, {"resource": resource}))
        elif rule.alert == "OrchestratorExporterDown":
            cases.append(_gauge_case(rule, "up", 1.0, 0.0, 0.0, {"job": rules.JOB, "instance": "127.0.0.1:9300"}))
        elif rule.alert == "OrchestratorSupervisordDown":
            cases.append(_gauge_case(rule, "orchestrator_supervisord_up", 1.0, 0.0, 0.0))
        else:
            raise AssertionError(f"no promtool case for the alert {rule.alert}: add one to promtool_cases")
    return cases


def _run_promtool_tests(manifests: ManifestSet, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rules_path = prom_rules.write_rules(manifests, str(tmp_path))
    cases = promtool_cases(manifests)
    test_file = tmp_path / "tests.yml"
    test_file.write_text(dump({"rule_files": [os.path.basename(rules_path)], "evaluation_interval": _at(STEP),
                               "tests": cases}))
    return subprocess.run([_promtool(), "test", "rules", str(test_file)], capture_output=True, text=True,
                          check=False, cwd=tmp_path)


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_generated_rule_fires_on_its_synthetic_series_and_not_before(name: str, tmp_path: Path) -> None:
    done = _run_promtool_tests(SETS[name](), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_generated_rule_has_a_promtool_case(name: str) -> None:
    manifests = SETS[name]()
    generated = [r.key for r in rules.alert_rules(manifests)]
    assert len(generated) == len(set(generated)), "two rules share an alert name and agent"
    tested = {(case["alert_rule_test"][-1]["alertname"],
               case["alert_rule_test"][-1]["exp_alerts"][0]["exp_labels"].get("agent", ""))
              for case in promtool_cases(manifests)}
    assert tested == set(generated)


def test_a_promtool_case_fails_when_its_rule_is_wrong(tmp_path: Path) -> None:
    """The cases are not vacuous: a memory threshold off by a factor (MB read as 10^6 bytes) fails them."""
    manifests = demo()
    good = prom_rules.rules_text(manifests)
    done = _run_promtool_tests(manifests, tmp_path)
    assert done.returncode == 0
    path = tmp_path / rules.RULES_FILE
    path.write_text(good.replace(">= 157286400", ">= 150000000"))
    assert path.read_text() != good
    test_file = tmp_path / "tests.yml"
    failed = subprocess.run([_promtool(), "test", "rules", str(test_file)], capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    assert failed.returncode != 0


# --- what the rules say ----------------------------------------------------------------------------

def test_thresholds_become_per_process_rules_in_the_exporters_units() -> None:
    by_key = {r.key: r for r in rules.alert_rules(rich())}
    assert by_key["AgentCpuCritical", "feed"].expr == 'orchestrator_process_cpu_usage_ratio{agent="feed"} >= 0.755'
    assert by_key["AgentMemoryLimit", "feed"].expr == \
        'orchestrator_process_resident_memory_bytes{agent="feed"} >= 314572800'
    assert by_key["AgentOpenFdsWarning", "feed"].expr == 'orchestrator_process_open_fds{agent="feed"} >= 500'
    assert by_key["AgentCpuWarning", "feed"].for_seconds == 15.0
    assert dict(by_key["AgentMemoryLimit", "feed"].labels) == {"agent": "feed", "severity": "emergency"}
    assert dict(by_key["AgentOpenFdsCritical", "single-try"].labels)["severity"] == "critical"


def test_crash_loops_follow_the_restart_policy_and_manual_agents_have_none() -> None:
    by_key = {r.key: r for r in rules.alert_rules(rich())}
    assert by_key["AgentCrashLooping", "feed"].expr == \
        'sum by (agent) (increase(orchestrator_agent_restarts_total{agent="feed"}[5m])) >= 2'
    assert by_key["AgentCrashLooping", "files-only"].expr.endswith("[1h])) >= 5")
    assert by_key["AgentCrashLooping", "single-try"].expr.endswith("[1m])) >= 1")
    assert ("AgentCrashLooping", "manual-one") not in by_key
    assert ("AgentGivenUp", "manual-one") in by_key and ("AgentDown", "bare") in by_key


def test_exhaustion_rules_exist_only_where_there_is_a_limit_to_reach() -> None:
    keys = {r.key for r in rules.alert_rules(rich())}
    assert ("AgentMemoryExhaustionPredicted", "manual-one") in keys
    assert ("AgentOpenFdsExhaustionPredicted", "files-only") in keys
    assert ("AgentMemoryExhaustionPredicted", "files-only") not in keys
    assert not {k for k in keys if k[1] == "bare" and "Exhaustion" in k[0]}


def test_rewriting_the_rules_drops_a_removed_agent(tmp_path: Path) -> None:
    manifests = rich()
    path = prom_rules.write_rules(manifests, str(tmp_path))
    assert 'agent="feed"' in Path(path).read_text()
    fewer = ManifestSet(settings=manifests.settings, agents=tuple(a for a in manifests.agents if a.name != "feed"),
                        manifests_dir=manifests.manifests_dir, state_dir=manifests.state_dir)
    assert prom_rules.write_rules(fewer, str(tmp_path)) == path
    assert "feed" not in Path(path).read_text()
    assert [p.name for p in tmp_path.iterdir()] == [rules.RULES_FILE]   # no temporary file left behind


def test_durations_are_written_as_prometheus_reads_them() -> None:
    assert [rules.duration(s) for s in (5, 90, 600, 3600, 0.5, 7200)] == ["5s", "90s", "10m", "1h", "500ms", "2h"]


# --- every metric a rule reads is exported ---------------------------------------------------------

def exported_metric_names() -> set[str]:
    """The sample names the exporter's Collector declares: a counter's family `x` is scraped as `x_total`."""
    names = set()
    for family in MetricsCollector(None).describe():  # type: ignore[arg-type]  # describe() reads no sampler
        names.add(family.name + {"counter": "_total", "info": "_info"}.get(family.type, ""))
    return names


_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def metric_names_in(expr: str) -> set[str]:
    """The metric names an expression selects: its identifiers less strings, matchers, ranges, grouping
    label lists, function names and keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = re.findall(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", text)
    return set(names) - _KEYWORDS


def test_metric_names_are_read_from_expressions() -> None:
    assert metric_names_in('sum by (agent) (increase(a_total{agent="x",k="y{z}"}[10m])) >= 1e+06') == {"a_total"}
    assert metric_names_in("b == 0 and on (agent) c{x=\"1\"} > bool 2") == {"b", "c"}


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_metric_a_rule_reads_is_one_the_exporter_exports(name: str) -> None:
    exported = exported_metric_names()
    assert "orchestrator_agent_up" in exported and "orchestrator_agent_restarts_total" in exported
    for rule in rules.alert_rules(SETS[name]()):
        read = metric_names_in(rule.expr)
        assert read == set(rule.metrics), rule.expr
        unknown = read - exported - FORTHCOMING - PROMETHEUS_OWN
        assert not unknown, f"{rule.alert}: {sorted(unknown)} not exported (exported: {sorted(exported)})"


def test_the_forthcoming_allow_list_holds_only_names_not_yet_exported() -> None:
    """Once the exporter declares a name, it leaves FORTHCOMING, so the check is strict for it again."""
    assert not FORTHCOMING & exported_metric_names()


def test_the_cli_writes_the_rules_and_prints_a_scrape_configuration(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from orchestrator.interfaces.cli import cli

    runner = CliRunner()
    done = runner.invoke(cli, ["-m", str(DEMO), "rules", "--out", str(tmp_path), "--output", "json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["checked"] is True and report["file"] == str(tmp_path / rules.RULES_FILE)
    assert {a["alert"] for a in report["alerts"]} >= {"AgentDown", "AgentGivenUp", "OrchestratorExporterDown"}
    done = runner.invoke(cli, ["-m", str(DEMO), "prometheus-config", "--rules-dir", str(tmp_path), "--output", "json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["rule_files"] == [str(tmp_path / rules.RULES_FILE)]


def test_without_promtool_the_rules_are_written_and_said_to_be_unchecked(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from orchestrator.interfaces.cli import cli

    done = CliRunner().invoke(cli, ["-m", str(DEMO), "rules", "--out", str(tmp_path / "out")],
                              env={"PATH": str(tmp_path)})
    assert done.exit_code == 0, done.output
    assert "promtool is not on PATH" in done.stderr
    assert (tmp_path / "out" / rules.RULES_FILE).is_file()


def test_invalid_manifests_write_no_rules_and_name_the_place(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from orchestrator.interfaces.cli import cli

    shutil.copytree(DEMO, tmp_path / "manifests")
    template = tmp_path / "manifests" / "templates" / "python-agent.yaml"
    template.write_text(template.read_text().replace("warning: 150", "warning: 500"))
    done = CliRunner().invoke(cli, ["-m", str(tmp_path / "manifests"), "rules", "--out", str(tmp_path / "out")])
    assert done.exit_code == 1
    assert "python-agent.yaml:27:39: resources.memory_mb.critical" in done.stderr
    assert not (tmp_path / "out").exists()
