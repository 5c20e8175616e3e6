"""`orchestrator schema` describes manifests truthfully: every shipped manifest passes it, broken ones do not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft7Validator
from ruamel.yaml import YAML

from orchestrator.interfaces.cli import cli
from orchestrator.config.schema import KINDS, json_schema
from tests.conftest import DEFAULT_MANIFESTS, FIXTURES

_yaml = YAML(typ="safe", pure=True)


def _kind(path: Path) -> str:
    if path.name == "orchestrator.yaml":
        return "settings"
    return {"agents": "agent", "templates": "template", "env": "env"}[path.parent.name]


SHIPPED = sorted([*DEFAULT_MANIFESTS.rglob("*.yaml"), *(FIXTURES / "valid").rglob("*.yaml")])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_schema_is_a_valid_draft_7_schema(kind):
    Draft7Validator.check_schema(json_schema(kind))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
def test_every_shipped_manifest_validates_against_its_schema(path):
    errors = list(Draft7Validator(json_schema(_kind(path))).iter_errors(_yaml.load(path.read_text())))
    assert errors == []


@pytest.mark.parametrize("document, complaint", [
    ({"name": "a", "command": ["x"], "dependson": ["b"]}, "Additional properties"),
    ({"name": "a", "command": ["x"], "replicas": 0}, "replicas"),
    ({"name": "a", "command": ["x"], "restart": {"policy": "sometimes"}}, "sometimes"),
    ({"name": "a", "command": ["x"], "restart": {"delay": "10 seconds"}}, "10 seconds"),
    ({"command": ["x"]}, "'name' is a required property"),
    ({"name": "a"}, "'command' is a required property"),
    ({"name": "Market Data", "command": ["x"]}, "Market Data"),
])
def test_the_agent_schema_rejects_what_validation_rejects(document, complaint):
    errors = [f"{list(e.path)} {e.message}" for e in Draft7Validator(json_schema("agent")).iter_errors(document)]
    assert errors and any(complaint in e for e in errors)


def test_templated_values_are_accepted_where_numbers_go():
    document = {"name": "a", "command": ["x"], "priority": "{{ vars.p }}", "readiness": {"timeout": "{{ vars.t }}", "tcp": "h:1"}}
    assert list(Draft7Validator(json_schema("agent")).iter_errors(document)) == []


def test_the_schema_command_prints_json_that_editors_can_load():
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/")
    assert "depends_on" in schema["properties"] and schema["required"] == ["name"]
    assert schema["then"] == {"required": ["command"]}  # unless it extends a template
