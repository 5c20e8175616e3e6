"""Launch files: what the launcher is given for each agent, and what of it the rendered configuration shows."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.core.errors import ManifestError
from orchestrator.supervisord import launching, render

SECRET = "hunter2-but-longer"


def _load(manifests: Path, state: Path, environ: dict[str, str] | None = None):
    return load(LoadOptions(str(manifests), state_dir=str(state), environ=environ or dict(os.environ)))


def test_a_secret_reaches_the_launch_file_alone_and_its_change_changes_the_file_name_not_its_text(manifest_set, tmp_path,
                                                                                                 monkeypatch):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\nenv:\n  PLAIN: 'x'\n"
                                               "  TOKEN: {secret: true, from_env: TEST_TOKEN}\n"})
    monkeypatch.setenv("TEST_TOKEN", SECRET)
    loaded = _load(manifests, tmp_path / "state")
    first = render.render(loaded)
    launch = first.launches["a"]
    assert launching.decode(launch.content)["env"] == {"PLAIN": "x", "TOKEN": SECRET}
    assert all(SECRET not in text for text in first.files.values())
    assert SECRET not in launch.path and SECRET not in json.dumps(loaded.agent("a").secrets["TOKEN"].__dict__)
    key = tmp_path / "state" / "launch" / "key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600          # made for a set with secrets
    assert render.render(loaded).launches["a"].path == launch.path   # byte-stable under one key
    monkeypatch.setenv("TEST_TOKEN", SECRET + "!")
    second = render.render(loaded)
    assert second.launches["a"].path != launch.path
    assert second.program("a") != first.program("a")


def test_without_secrets_no_key_is_made_and_the_digest_does_not_depend_on_one(manifest_set, tmp_path):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\n"})
    rendering = render.render(_load(manifests, tmp_path / "state"))
    assert not (tmp_path / "state" / "launch").exists()   # rendering writes nothing then
    (tmp_path / "state" / "launch").mkdir(parents=True)
    (tmp_path / "state" / "launch" / "key").write_bytes(b"k" * 32)   # a key made since, for another agent's secret
    assert render.render(_load(manifests, tmp_path / "state")).launches["a"].path == rendering.launches["a"].path


def test_a_secret_not_set_is_a_warning_at_load_and_a_problem_of_the_rendering(manifest_set, tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_UNSET", raising=False)
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\nenv:\n  T: {secret: true, from_env: TEST_UNSET}\n"})
    loaded = _load(manifests, tmp_path / "state", environ={"PATH": os.environ["PATH"]})
    assert [w.key for w in loaded.warnings] == ["env.T.from_env"]
    problems = render.render(loaded).problems
    assert len(problems) == 1 and "TEST_UNSET is not set" in problems[0]


@pytest.mark.parametrize(("env", "expected"), [
    ("  T: {secret: false, from_env: X}\n", "env.T.secret: false is not a secret"),
    ('  T: "a\\0b"\n', "env.T: value contains a NUL character"),
    ("  T: {secret: true}\n", "env.T.from_env: missing"),
])
def test_what_cannot_be_an_environment_value_is_refused_at_its_line(manifest_set, tmp_path, env, expected):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\nenv:\n" + env})
    with pytest.raises(ManifestError) as caught:
        _load(manifests, tmp_path / "state")
    assert any(expected in str(d) for d in caught.value.errors), caught.value.errors
    assert all(d.location.line == 4 for d in caught.value.errors)


def test_an_env_file_inside_what_versions_copy_is_refused(manifest_set, tmp_path):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\nenv_file: manifests/env/secrets.env\n",
                              "env/secrets.env": "A=1\n"})
    (manifests / "env" / "secrets.env").chmod(0o600)
    with pytest.raises(ManifestError) as caught:
        _load(manifests, tmp_path / "state")
    assert "every version and backup copies" in str(caught.value.errors[0])


def test_live_controls_are_kept_beside_the_launch_file_so_changing_them_changes_no_program(manifest_set, tmp_path):
    base = "name: a\ncommand: [sh]\nresources: {nice: 1, memory_max: 64MB, open_files: 100}\n"
    manifests = manifest_set({"agents/a.yaml": base})
    before = render.render(_load(manifests, tmp_path / "state"))
    (manifests / "agents" / "a.yaml").write_text(base.replace("nice: 1, memory_max: 64MB", "nice: 7, memory_max: 128MB"))
    after = render.render(_load(manifests, tmp_path / "state"))
    assert after.program("a") == before.program("a")
    assert launching.decode(after.launches["a"].controls) == {"memory_max": 128_000_000, "nice": 7}
    (manifests / "agents" / "a.yaml").write_text(base.replace("open_files: 100", "open_files: 200"))
    assert render.render(_load(manifests, tmp_path / "state")).program("a") != before.program("a")


def test_the_scope_of_a_state_directory_is_its_own(tmp_path):
    assert launching.scope(str(tmp_path / "a")) != launching.scope(str(tmp_path / "b"))
    assert launching.scope(str(tmp_path / "a")) == launching.scope(str(tmp_path / "x" / ".." / "a"))
