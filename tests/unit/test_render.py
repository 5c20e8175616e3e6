"""The rendered supervisord configuration: pinned by golden files, accepted by supervisord's own parser.

Golden files live in tests/golden/NAME/. After an intended change to the
templates, regenerate them with
    ORCHESTRATOR_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_render.py
and review the diff like code.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from supervisor.options import ServerOptions

from orchestrator.core.names import is_internal
from orchestrator.state.files import write_tree
from orchestrator.supervisord import render
from orchestrator.interfaces.cli import cli
from orchestrator.core.errors import ManifestError
from orchestrator.config.manifest import LoadOptions, load
from tests.conftest import DEFAULT_MANIFESTS, FIXTURES, REPO

GOLDEN = REPO / "tests" / "golden"
STATE = "/var/lib/orchestrator"
SETS = {
    "default": (DEFAULT_MANIFESTS, None),
    "rich": (FIXTURES / "valid" / "rich", None),
    "rich-staging": (FIXTURES / "valid" / "rich", "staging"),
}


def _load(name: str, state_dir: str = STATE):
    path, env = SETS[name]
    return load(LoadOptions(str(path), env=env, state_dir=state_dir, environ={"PATH": os.environ["PATH"]}))


def _normalized(text: str, manifests: Path) -> str:
    """Machine-specific paths (and the configuration hash, computed over them) replaced by placeholders,
    so the golden files hold on any machine."""
    text = text.replace(sys.executable, "@PYTHON@").replace(str(manifests.parent), "@PROJECT@")
    return re.sub(render.CONFIG_MARKER + r'=(["\']?)[0-9a-f]{16}', render.CONFIG_MARKER + r"=\1@CONFIG@", text)


@pytest.mark.parametrize("name", sorted(SETS))
def test_rendered_configuration_matches_the_golden_files(name):
    rendering = render.render(_load(name))
    golden = GOLDEN / name
    actual = {rel: _normalized(text, SETS[name][0]) for rel, text in rendering.files.items()}
    if os.environ.get("ORCHESTRATOR_UPDATE_GOLDEN"):
        for rel, text in actual.items():
            (golden / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden / rel).write_text(text)
    expected = {str(p.relative_to(golden)): p.read_text() for p in golden.rglob("*.conf")}
    assert sorted(actual) == sorted(expected), "files differ; see the module docstring to regenerate"
    for rel in actual:
        assert actual[rel] == expected[rel], f"{name}/{rel} differs from its golden file"


@pytest.mark.parametrize("name", sorted(SETS))
def test_rendering_is_byte_stable(name):
    assert render.render(_load(name)).files == render.render(_load(name)).files


@pytest.mark.parametrize("name", sorted(SETS))
def test_supervisord_reads_back_every_command_and_environment_exactly(name, tmp_path):
    manifests = _load(name, state_dir=str(tmp_path))
    rendering = render.render(manifests)
    write_tree(str(tmp_path / "current"), rendering.files)  # the live version, as history lays it out
    (tmp_path / "supervisord.conf").symlink_to("current/supervisord.conf")
    (tmp_path / "logs").mkdir()
    options = ServerOptions()
    options.configfile = str(tmp_path / "supervisord.conf")
    options.process_config(do_usage=False)
    groups = {g.name: g for g in options.process_group_configs if not g.name.startswith("_")}
    assert sorted(groups) == sorted(manifests.names)  # each agent is its own group
    for agent in manifests.agents:
        processes = groups[agent.name].process_configs
        assert len(processes) == agent.replicas
        for process in processes:
            assert shlex.split(process.command) == render.launch_argv(agent)
            assert render.launch_argv(agent)[-len(agent.command):] == list(agent.command)
            assert process.environment == {**agent.env, render.MARKER: manifests.state_dir,
                                           render.CONFIG_MARKER: rendering.hashes[agent.name]}
            assert process.stopasgroup and process.killasgroup
            assert process.autostart is False
    servers = options.configroot.supervisord.server_configs
    assert [s["family"] for s in servers] == [socket.AF_UNIX]  # a unix socket only, no inet server
    assert servers[0]["chmod"] == 0o700


def test_the_check_reports_what_supervisord_rejects_at_the_agent(manifest_set, tmp_path):
    """A template edit supervisord would refuse is caught before anything uses it, and names the agent."""
    templates = tmp_path / "templates"
    shutil.copytree(render.template_dir(), templates)
    program = templates / "program.conf.j2"
    program.write_text(re.sub(r"startsecs=.*", "startsecs=soon", program.read_text()))
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\n"})
    problems = render.check(load(LoadOptions(str(manifests))), templates=templates)
    assert [(p.location.line, p.location.col) for p in problems] == [(1, 7)]
    assert "supervisord rejects the rendered configuration: " in problems[0].message
    assert "'soon' in section 'program:a'" in problems[0].message


def test_a_socket_path_too_long_for_unix_sockets_is_a_manifest_error(manifest_set):
    manifests = manifest_set({"agents/a.yaml": "name: a\ncommand: [sh]\n"})
    with pytest.raises(ManifestError) as caught:
        load(LoadOptions(str(manifests), state_dir="/tmp/" + "d" * 120))
    assert "longer than the 107 a unix socket allows" in str(caught.value)


def test_resources_are_applied_by_exec_wrappers_that_keep_the_agents_pid():
    agent = _load("default").agent("portfolio-tracker")
    argv = render.launch_argv(agent)
    assert argv[:4] == ["setpriv", "--pdeathsig", "TERM", "--"]
    assert argv[4:7] == ["nice", "-n", "5"]
    assert render.launch_argv(_load("default").agent("market-data"))[4:7] == ["prlimit", "--nofile=1024:1024", "--"]


def test_written_files_land_atomically_and_nothing_temporary_is_left(tmp_path):
    rendering = render.render(_load("default"))
    written = write_tree(str(tmp_path / "out"), rendering.files)
    assert sorted(Path(p).relative_to(tmp_path / "out").as_posix() for p in written) == sorted(rendering.files)
    assert not [p for p in (tmp_path / "out").rglob(".tmp-*")]


def test_render_out_writes_a_set_that_supervisord_loads_on_its_own_with_every_agent(tmp_path, monkeypatch):
    """`render --out DIR` once wrote an `[include]` of the state directory's current/programs/*.conf, so
    `supervisord -c DIR/supervisord.conf` loaded none of the programs just written to DIR (and make bench failed)."""
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)  # supervisord wants its log directory to exist
    monkeypatch.chdir(tmp_path)  # a relative DIR, and supervisord run from elsewhere: the include resolves from the file
    result = CliRunner().invoke(cli, ["-m", str(DEFAULT_MANIFESTS), "--state-dir", str(state), "render", "--out", "out"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    manifests = load(LoadOptions(str(DEFAULT_MANIFESTS), state_dir=str(state)))

    options = ServerOptions()
    options.configfile = str(out / render.MAIN_CONFIG)
    options.process_config(do_usage=False)
    groups = sorted(g.name for g in options.process_group_configs if not is_internal(g.name))
    assert groups == sorted(manifests.names)
    assert f"files = {render.PROGRAMS_DIR}/*.conf" in (out / render.MAIN_CONFIG).read_text().splitlines()
    included = sorted(info.split('"')[1] for info in options.parse_infos if info.startswith("Included extra file"))
    assert included == sorted(str(out / render.PROGRAMS_DIR / f"{name}.conf") for name in manifests.names)
