"""The module paths a rendered configuration names are pinned: a supervisord restarted from an older
version's `current/` after an upgrade runs the same listener command and loads the same extension factory,
so these two paths never move; so does the exporter's module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.supervisord import render

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LISTENER_MODULE = "orchestrator.listener"
EXTENSION_FACTORY = "orchestrator.wakeup:make_interface"


def _main_config(tmp_path: Path) -> str:
    manifests = load(LoadOptions(str(FIXTURES / "valid" / "rich"), state_dir=str(tmp_path / "state"), check_commands=False))
    return render.render(manifests).main


def test_the_rendered_configuration_names_the_pinned_listener_and_extension(tmp_path):
    text = _main_config(tmp_path)
    assert f"supervisor.rpcinterface_factory = {EXTENSION_FACTORY}" in text.splitlines()
    command = next(line for line in text.splitlines() if line.startswith("command=") and LISTENER_MODULE in line)
    assert f" -m {LISTENER_MODULE} --state-dir " in command


def test_the_pinned_paths_load_and_the_extension_brings_no_template_or_yaml_library_into_supervisord():
    module, factory = EXTENSION_FACTORY.split(":")
    probe = (f"import importlib, json, sys; m = importlib.import_module({module!r}); "
             f"loaded = sorted(n for n in ('jinja2', 'ruamel', 'click', 'psutil') if n in sys.modules); "
             f"import {LISTENER_MODULE} as listener; "
             f"print(json.dumps([callable(getattr(m, {factory!r})), callable(listener.main), loaded]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [True, True, []]


EXPORTER_MODULE = "orchestrator.exporter"


def test_the_rendered_configuration_names_the_pinned_exporter(tmp_path):
    text = _main_config(tmp_path)
    command = next(line for line in text.splitlines() if line.startswith("command=") and EXPORTER_MODULE in line)
    assert f" -m {EXPORTER_MODULE} --state-dir " in command


def test_the_pinned_exporter_path_loads():
    probe = f"import json, {EXPORTER_MODULE} as exporter; print(json.dumps(callable(exporter.main)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) is True


def test_every_package_of_the_source_tree_is_listed_for_installation():
    """pyproject lists the packages by name: a sub-package left out works in an editable install and is missing
    from a built one (interfaces.commands was)."""
    import tomllib
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "orchestrator").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


LAUNCH_MODULE = "orchestrator.launch"
LAUNCH_FILE = "orchestrator/launch.py"


def test_every_agent_is_started_through_the_pinned_launcher(tmp_path):
    manifests = load(LoadOptions(str(FIXTURES / "valid" / "rich"), state_dir=str(tmp_path / "state"), check_commands=False))
    rendering = render.render(manifests)
    for agent in manifests.agents:
        command = next(line for line in rendering.program(agent.name).splitlines() if line.startswith("command="))
        assert f" -I -S {Path(render.LAUNCHER).parent.parent}/{LAUNCH_FILE} " in command


def test_the_pinned_launcher_starts_isolated_and_loads_the_standard_library_and_its_own_modules_only():
    """The launcher runs at every start of every agent, with -I -S (no site-packages): what it loads is all it
    needs, and none of the modules that make a start slow (typing, dataclasses, json, enum, ctypes)."""
    done = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", render.LAUNCHER], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "usage:" in done.stderr   # no launch file named: it says how it is used
    loaded = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "orchestrator.host.launcher" in loaded and "orchestrator.host.cgroups" in loaded
    slow = {"typing", "dataclasses", "json", "enum", "ctypes", "jinja2", "psutil", "supervisor", "prometheus_client",
            "site"}
    assert loaded & slow == set()
    assert Path(render.LAUNCHER).relative_to(Path(render.LAUNCHER).parent.parent).as_posix() == LAUNCH_FILE
