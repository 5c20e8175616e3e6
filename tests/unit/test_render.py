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
from orchestrator.supervisord import launching, render
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
    text = text.replace(render.LAUNCHER, "@LAUNCHER@")
    text = text.replace(sys.executable, "@PYTHON@").replace(str(manifests.parent), "@PROJECT@")
    text = re.sub(r"(/launch/[a-z0-9-]+)-[0-9a-f]{16}\.launch", r"\1-@DIGEST@.launch", text)
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
            launch = rendering.launches[agent.name]
            assert shlex.split(process.command) == render.launch_argv(sys.executable, manifests.state_dir, launch)
            assert launching.decode(launch.content)["argv"] == list(agent.command)
            assert launching.decode(launch.content)["env"] == dict(agent.env)
            # the agent's own environment is in its launch file; supervisord carries the markers alone
            assert process.environment == {render.MARKER: manifests.state_dir,
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


def test_resources_and_the_environment_reach_the_launcher_in_its_launch_file_and_live_controls_beside_it():
    rendering = render.render(_load("default"))
    portfolio = rendering.launches["portfolio-tracker"]
    assert launching.decode(portfolio.controls) == {"nice": 5}   # live: not in the launch file: a change is no restart
    assert "nice" not in launching.decode(portfolio.content)
    market = launching.decode(rendering.launches["market-data"].content)
    assert market["open_files"] == 1024 and market["umask"] == "022"
    assert rendering.program("market-data").count(rendering.launches["market-data"].path) == 1


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
