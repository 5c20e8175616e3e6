"""Whatever a manifest contains, validate answers with located errors or success: never a traceback.

Hypothesis writes random YAML, random text, and random mutations of the
shipped trading manifests (keys dropped, renamed, retyped, values replaced),
and runs `orchestrator validate` on each set in-process.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from orchestrator.interfaces.cli import cli
from tests.conftest import DEFAULT_MANIFESTS

_yaml = YAML(typ="safe", pure=True)
_yaml.default_flow_style = False
LOCATED = re.compile(r"^(agents|templates|env)/[\w.-]+\.yaml:\d+:\d+: |^orchestrator\.yaml:\d+:\d+: ")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["10s", "5m", "bogus", "{{ vars.port }}", "{{ nope }}", "{% if %}", "127.0.0.1:99999",
                                           "http://", "market-data", "sh", "exponential-backoff", "%(here)s", "a ;b"]),
)
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)), max_leaves=20)


def _dump(data: Any) -> str:
    stream = io.StringIO()
    _yaml.dump(data, stream)
    return stream.getvalue()


def _validate(files: dict[str, str]) -> None:
    """Run validate on a copy of the shipped set with `files` written over it, and check the answer's shape."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "manifests"
        shutil.copytree(DEFAULT_MANIFESTS, root)
        for rel, text in files.items():
            (root / rel).write_text(text)
        result = CliRunner().invoke(cli, ["-m", str(root), "validate"])
    assert result.exit_code in (0, 1), f"exit {result.exit_code}: {result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line.replace(str(root) + "/", "") for line in result.stderr.splitlines()]
    if result.exit_code == 1:
        assert lines[-1].startswith("invalid manifests: ")
        lines = lines[:-1]
        assert lines, "an invalid set must name at least one error"
    for line in lines:
        assert LOCATED.match(line), f"diagnostic without FILE:LINE:COL: {line!r}"


FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(documents)
def test_random_yaml_as_an_agent_manifest_is_answered_with_located_errors(document):
    _validate({"agents/market-data.yaml": _dump(document)})


@FAST
@given(st.text(max_size=200))
def test_random_text_as_an_agent_manifest_is_answered_with_located_errors(text):
    _validate({"agents/risk-manager.yaml": text})


@FAST
@given(documents)
def test_random_yaml_as_the_settings_file_is_answered_with_located_errors(document):
    _validate({"orchestrator.yaml": _dump(document)})


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, prefix + (index,))
    return found


@st.composite
def mutated_manifest(draw):
    name = draw(st.sampled_from(sorted(p.name for p in (DEFAULT_MANIFESTS / "agents").glob("*.yaml"))))
    rel = f"agents/{name}"
    data = _yaml.load((DEFAULT_MANIFESTS / rel).read_text())
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = draw(st.sampled_from(["drop", "replace", "rename", "insert"]))
        if action == "drop":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(documents)
        elif action == "rename" and isinstance(parent, dict):
            parent[last + draw(st.sampled_from(["_", "s", "x"]))] = parent.pop(last)
        elif action == "insert" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(scalars)
    return rel, _dump(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_manifest())
def test_mutations_of_valid_manifests_are_answered_with_located_errors_or_success(mutation):
    rel, text = mutation
    _validate({rel: text})
