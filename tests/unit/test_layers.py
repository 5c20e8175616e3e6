"""The import contract of the package, checked on every module by walking its syntax tree.

    core                                   pure: the standard library only, no clock, no processes, no sockets
    config | supervisord | state | host    each imports core only, never one another
    operations                             imports the layers below
    daemons                                imports operations and below
    interfaces                             imports anything below

Each third-party library has one home (HOMES). The entry modules at the package root
(`__main__`, `listener`, `wakeup`, `exporter`: stable paths that rendered configurations name) may
import anything; `demo` is the standard-library-only demo agents. Imports inside
functions count as much as those at the top.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"

RANK = {"core": 0, "config": 1, "supervisord": 1, "state": 1, "host": 1, "operations": 2, "daemons": 3, "interfaces": 4}
ENTRY_MODULES = {"__init__", "__main__", "listener", "wakeup", "exporter", "launch"}
STANDALONE = {"demo"}  # imports nothing of orchestrator

# third-party library -> the modules (or packages) allowed to import it
HOMES = {
    "supervisor": ("orchestrator.supervisord", "orchestrator.daemons.listener"),
    "psutil": ("orchestrator.host",),
    "jinja2": ("orchestrator.config.manifest", "orchestrator.supervisord.render", "orchestrator.interfaces.web.app"),
    "ruamel": ("orchestrator.config.yamltree",),
    "click": ("orchestrator.interfaces",),
    "prometheus_client": ("orchestrator.daemons.exporter",),
    "grafana_client": ("orchestrator.interfaces.grafana",),
    "grafana_foundation_sdk": ("orchestrator.operations.dashboards",),
    "watchfiles": ("orchestrator.daemons.watcher",),
    "starlette": ("orchestrator.interfaces.web.app",),
    "sse_starlette": ("orchestrator.interfaces.web.app",),
    "uvicorn": ("orchestrator.interfaces.web.app",),
}
# standard-library modules the pure core may not use: they read the clock, start processes or do I/O
IMPURE = {"time", "datetime", "subprocess", "socket", "threading", "asyncio", "signal", "fcntl", "shutil",
          "tempfile", "random", "urllib", "http", "select", "multiprocessing"}


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in the file of `module`, relative imports resolved."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            if target.count(".") == 0:  # `from orchestrator import x`: x may be a package
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
    return found


def violations(root: Path) -> list[str]:
    """Every import of the package at `root` that breaks the contract, as `file:line: what`."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join((root.name, *[p for p in parts if p != "__init__"]))
        layer = parts[0] if len(parts) > 1 else None
        if layer is None and parts[0] not in ENTRY_MODULES | STANDALONE:
            problems.append(f"{path.relative_to(root.parent)}: {module} is at the package root but is no entry module "
                            "(put it in the layer it belongs to)")
            continue
        for line, name in _imports(path, module):
            where = f"{path.relative_to(root.parent)}:{line}"
            top = name.split(".")[0]
            if top == root.name:
                problem = _internal_problem(parts, layer, name.split("."))
            elif top in sys.stdlib_module_names or top == "__future__":
                problem = f"core must stay pure, and {top} reads the clock or does I/O" \
                    if layer == "core" and top in IMPURE else None
            else:
                homes = HOMES.get(top)
                if homes is None:
                    problem = f"{top} is a third-party library with no home in the contract (add it to HOMES)"
                elif not any(module == h or module.startswith(h + ".") for h in homes):
                    problem = f"{top} may only be imported by {', '.join(homes)}"
                else:
                    problem = None
            if problem:
                problems.append(f"{where}: {module} imports {name}: {problem}")
    return problems


def _internal_problem(parts: tuple[str, ...], layer: str | None, target: list[str]) -> str | None:
    if layer is None:
        return f"{parts[0]} must stay standalone" if parts[0] in STANDALONE else None
    if len(target) < 2 or target[1] not in RANK:
        return None if len(target) < 2 or target[1] == "__version__" else f"{target[1]} is not in a layer"
    if layer not in RANK:
        return f"package {layer} is not in the contract (add it to RANK)"
    other = target[1]
    if other == layer:
        return None
    if RANK[other] > RANK[layer]:
        return f"{layer} may not import {other}, a layer above it"
    if RANK[other] == RANK[layer]:
        return f"{layer} may not import {other}: the middle packages do not import one another"
    return None


def test_the_package_keeps_its_import_contract():
    assert violations(PACKAGE) == []


def test_every_package_of_the_tree_is_in_the_contract():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(RANK)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "orchestrator"
    for rel, text in {"__init__.py": "", **{f"{layer}/__init__.py": "" for layer in RANK}, **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_contract_accepts_downward_imports(tmp_path):
    root = _tree(tmp_path, {
        "core/model.py": "import dataclasses\n",
        "state/history.py": "from orchestrator.core import model\n",
        "operations/apply.py": "from orchestrator.state import history\nfrom ..core.model import x\n",
        "interfaces/cli.py": "import click\nfrom orchestrator.operations import apply\n",
        "host/trees.py": "import psutil\n",
    })
    assert violations(root) == []


def test_the_contract_fails_on_each_kind_of_forbidden_import(tmp_path):
    root = _tree(tmp_path, {
        "core/plan.py": "from orchestrator.supervisord.client import ProcessInfo\n",  # upward
        "core/clock.py": "import time\n",                                              # impure core
        "state/history.py": "from orchestrator.supervisord import render\n",          # sideways in the middle
        "operations/status.py": "def f():\n    import psutil\n",                         # library outside its home
        "host/probes.py": "import requests\n",                                         # library with no home
        "operations/apply.py": "from ..daemons import listener\n",                     # upward, relative
        "helpers.py": "",                                                              # a module outside the layers
    })
    found = violations(root)
    expected = [
        ("core/clock.py:1", "time reads the clock"),
        ("core/plan.py:1", "core may not import supervisord, a layer above it"),
        ("helpers.py", "is at the package root but is no entry module"),
        ("host/probes.py:1", "requests is a third-party library with no home"),
        ("operations/apply.py:1", "operations may not import daemons"),
        ("operations/status.py:2", "psutil may only be imported by orchestrator.host"),
        ("state/history.py:1", "the middle packages do not import one another"),
    ]
    for where, what in expected:
        assert any(where in line and what in line for line in found), (where, what, found)
    assert len(found) == len(expected)


def test_a_module_at_the_package_root_is_an_entry_point_or_the_standalone_demo(tmp_path):
    root = _tree(tmp_path, {"helpers.py": "import os\n", "demo.py": "from orchestrator.core import model\n"})
    assert violations(root) == [
        "orchestrator/demo.py:1: orchestrator.demo imports orchestrator.core: demo must stay standalone",
        "orchestrator/helpers.py: orchestrator.helpers is at the package root but is no entry module "
        "(put it in the layer it belongs to)"]
