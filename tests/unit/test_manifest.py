"""Loading a manifest set: inheritance, overlays, templating, and an immutable model."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from orchestrator.core.errors import ManifestError
from orchestrator.config.manifest import LoadOptions, load
from tests.conftest import ROOT_USER

BASES = {
    "templates/base.yaml": """
        command: ["sh", "-c", "sleep 1"]
        env: {A: base, B: base}
        depends_on: [x]
        restart: {policy: exponential-backoff, delay: 1s, multiplier: 3, max_delay: 10s}
        resources: {memory_mb: {warning: 100, critical: 200}}
    """,
    "templates/mid.yaml": """
        extends: base
        env: {B: mid, C: mid}
        depends_on: []
        resources: {memory_mb: {limit: 300}}
    """,
}


def _load(path, **options):
    return load(LoadOptions(str(path), **options))


def test_extends_merges_maps_key_by_key_and_replaces_lists_across_levels(manifest_set):
    manifests = manifest_set({**BASES, "agents/a.yaml": "name: a\nextends: mid\nenv: {C: own}\n"})
    agent = _load(manifests).agent("a")
    assert dict(agent.env) == {"A": "base", "B": "mid", "C": "own"}
    assert agent.depends_on == ()                      # mid's list replaced base's whole
    assert agent.resources.memory_mb.warning == 100    # from base
    assert agent.resources.memory_mb.limit == 300      # from mid
    assert agent.restart.multiplier == 3
    assert agent.extends == "mid"


def test_null_in_a_more_specific_file_removes_the_inherited_value(manifest_set):
    manifests = manifest_set({**BASES, "agents/a.yaml": "name: a\nextends: mid\nenv: {A: null}\nresources: {memory_mb: null}\n"})
    agent = _load(manifests).agent("a")
    assert "A" not in agent.env
    assert agent.resources.memory_mb.warning is None and agent.resources.memory_mb.limit is None


def test_choosing_another_restart_policy_drops_inherited_fields_it_does_not_use(manifest_set):
    manifests = manifest_set({**BASES, "agents/a.yaml": "name: a\nextends: mid\nrestart: {policy: delayed, delay: 4s}\n"})
    agent = _load(manifests).agent("a")
    assert agent.restart.policy == "delayed" and agent.restart.delay == 4.0
    assert agent.restart.multiplier == 2.0  # the default again: base's 3 belonged to exponential-backoff


def test_a_field_set_beside_a_policy_that_does_not_use_it_is_still_an_error(manifest_set):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\nrestart: {policy: immediate, delay: 4s}\n"})
    with pytest.raises(ManifestError) as caught:
        _load(manifests)
    assert [str(d) for d in caught.value.errors] == [
        f"{manifests}/agents/a.yaml:3:30: restart.delay: not used by policy 'immediate' "
        "(immediate uses: exit_codes, max_attempts, reset_after, window)"]


def test_settings_defaults_are_the_lowest_layer(manifest_set):
    manifests = manifest_set({
        "orchestrator.yaml": "defaults: {env: {TZ: UTC}, priority: 7}\n",
        "agents/a.yaml": "name: a\ncommand: [sh]\n",
        "agents/b.yaml": "name: b\ncommand: [sh]\npriority: 1\nenv: {TZ: EST}\n",
    })
    loaded = _load(manifests)
    assert loaded.agent("a").priority == 7 and loaded.agent("a").env["TZ"] == "UTC"
    assert loaded.agent("b").priority == 1 and loaded.agent("b").env["TZ"] == "EST"


def test_an_environment_overlay_changes_settings_and_named_agents_only(manifest_set):
    manifests = manifest_set({
        "orchestrator.yaml": "project: p\n",
        "agents/a.yaml": "name: a\ncommand: [sh]\nreplicas: 1\n",
        "agents/b.yaml": "name: b\ncommand: [sh]\nreplicas: 1\n",
        "env/prod.yaml": "settings: {project: p-prod}\nagents: {a: {replicas: 4}}\n",
    })
    plain, prod = _load(manifests), _load(manifests, env="prod")
    assert (plain.settings.project, prod.settings.project) == ("p", "p-prod")
    assert (plain.agent("a").replicas, prod.agent("a").replicas) == (1, 4)
    assert prod.agent("b") == plain.agent("b")
    assert prod.env == "prod"


def test_an_unknown_environment_is_an_error_that_lists_the_ones_there_are(manifest_set):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\n", "env/prod.yaml": "{}\n", "env/staging.yaml": "{}\n"})
    with pytest.raises(ManifestError) as caught:
        _load(manifests, env="prd")
    assert "unknown environment 'prd' (did you mean 'prod'?)" in str(caught.value)


def test_templates_see_vars_name_python_and_environment_variables(manifest_set):
    manifests = manifest_set({"agents/a.yaml": """
        name: a
        vars: {port: 9000, ports: {a: 9100}}
        command: ["{{ python }}", "--port", "{{ vars.port + 1 }}", "{{ vars.ports[name] }}", "{{ env('GREETING') }}", "{{ env('MISSING', 'dflt') }}"]
        priority: "{{ vars.port // 1000 }}"
        readiness: {tcp: "127.0.0.1:{{ vars.port }}"}
    """})
    agent = _load(manifests, environ={"GREETING": "hello", "PATH": "/usr/bin:/bin"}).agent("a")
    assert agent.command == (sys.executable, "--port", "9001", "9100", "hello", "dflt")
    assert agent.priority == 9          # a templated number is read as a number
    assert agent.readiness is not None and agent.readiness.tcp == "127.0.0.1:9000"


def test_undefined_names_and_unset_environment_variables_are_errors_not_empty_strings(manifest_set):
    manifests = manifest_set({"agents/a.yaml": """
        name: a
        vars: {port: 9000}
        command: ["sh", "{{ vars.prot }}", "{{ env('NOPE_NOT_SET') }}"]
    """})
    with pytest.raises(ManifestError) as caught:
        _load(manifests, environ={"PATH": "/usr/bin:/bin"})
    messages = [f"{d.location.line}:{d.location.col} {d.key}: {d.message}" for d in caught.value.errors]
    assert messages[0].startswith("3:17 command[1]: undefined in template: 'dict object' has no attribute 'prot' (did you mean 'port'? vars defined here: port;")
    assert messages[1] == ("3:36 command[2]: environment variable NOPE_NOT_SET is not set "
                           "(set it, or give a default: env('NOPE_NOT_SET', 'value'))")
    assert len(messages) == 2  # the failed templates are not reported a second time as wrong types


def test_every_error_of_every_file_is_reported_in_one_run_sorted_by_file_and_line(manifest_set):
    manifests = manifest_set({
        "agents/b.yaml": "name: b\ncommand: [sh]\nreplicas: 0\ndepends_on: [nope]\n",
        "agents/a.yaml": "name: a\ncommand: [sh]\npriorty: 1\nrestart: {delay: forever}\n",
    })
    with pytest.raises(ManifestError) as caught:
        _load(manifests)
    found = [(d.location.file.rsplit("/", 1)[1], d.location.line, d.key) for d in caught.value.errors]
    assert found == [("a.yaml", 3, "priorty"), ("a.yaml", 4, "restart.delay"), ("b.yaml", 3, "replicas"), ("b.yaml", 4, "depends_on[0]")]


def test_a_cpu_this_machine_lacks_is_a_warning_and_the_set_still_loads(manifest_set):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\nresources: {cpu_affinity: [0, 3]}\n"})
    loaded = _load(manifests, cpu_count=2)
    assert loaded.agent("a").resources.cpu_affinity == (0, 3)
    assert [(w.severity, w.key) for w in loaded.warnings] == [("warning", "resources.cpu_affinity[1]")]
    assert "CPU 3 does not exist on this machine (it has CPUs 0-1)" in loaded.warnings[0].message


def test_a_command_written_as_one_string_is_split_like_a_shell_would(manifest_set):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: \"sh -c 'echo a  b'\"\n"})
    assert _load(manifests).agent("a").command == ("sh", "-c", "echo a  b")


def test_the_model_is_immutable_and_two_loads_are_equal(manifest_set):
    manifests = manifest_set({**BASES, "agents/a.yaml": "name: a\nextends: mid\n"})
    first, second = _load(manifests), _load(manifests)
    assert first == second
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.agent("a").replicas = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        first.agent("a").env["A"] = "changed"  # type: ignore[index]


def test_yaml_anchors_and_merge_keys_work_in_manifests(manifest_set):
    manifests = manifest_set({"agents/a.yaml": """
        name: a
        command: [sh]
        vars: {common: &common {warning: 10, critical: 20}}
        resources:
          cpu_percent: *common
          memory_mb: {<<: *common, limit: 30}
    """})
    resources = _load(manifests).agent("a").resources
    assert resources.cpu_percent.critical == 20 and resources.memory_mb.limit == 30


def test_the_default_state_directory_is_beside_the_manifests_directory(manifest_set):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\n"})
    assert _load(manifests).state_dir == str(manifests.parent / ".orchestrator")
    assert _load(manifests, state_dir=str(manifests / "elsewhere")).state_dir == str(manifests / "elsewhere")


def test_an_exporter_beyond_loopback_is_an_error_at_its_line_unless_asked_for_and_then_a_warning(manifest_set):
    agent = {"agents/a.yaml": "name: a\ncommand: [sh]\n"}
    manifests = manifest_set({**agent, "orchestrator.yaml": "project: p\nexporter:\n  listen: 0.0.0.0:9300\n"})
    with pytest.raises(ManifestError) as caught:
        _load(manifests)
    found = [(d.location.file.rsplit("/", 1)[1], d.location.line, d.key) for d in caught.value.errors]
    assert found == [("orchestrator.yaml", 3, "exporter.listen")]
    assert "exporter.allow_remote" in caught.value.errors[0].message
    manifests = manifest_set({**agent, "orchestrator.yaml": "project: p\nexporter:\n  listen: 0.0.0.0:9300\n  allow_remote: true\n"
                                              + ROOT_USER})
    loaded = _load(manifests)
    assert [(w.severity, w.key, w.location.line) for w in loaded.warnings] == [("warning", "exporter.listen", 3)]


def test_the_exporter_listens_on_loopback_by_default_and_can_be_turned_off(manifest_set):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\n"})
    exporter = _load(manifests).settings.exporter
    assert exporter.enabled and exporter.listen.startswith("127.0.0.1:") and not exporter.allow_remote
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\n", "orchestrator.yaml": "exporter: {enabled: false}\n"})
    assert not _load(manifests).settings.exporter.enabled
