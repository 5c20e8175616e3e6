"""Shared test helpers: where fixtures live, and writing small manifest sets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
DEFAULT_MANIFESTS = REPO / "manifests"


ROOT_USER = "default_user: root\n"


def write_set(root: Path, files: dict[str, str]) -> Path:
    """Write a manifest set below `root` ({relative path: YAML text}) and return its directory.

    Without an orchestrator.yaml in `files`, one saying `default_user: root` is written: run as root, a set that
    names no user for its agents is warned about (tests/integration/test_isolation.py holds that warning), which
    would add a line to every other test's diagnostics."""
    manifests = root / "manifests"
    if "orchestrator.yaml" not in files:
        files = {**files, "orchestrator.yaml": ROOT_USER}
    for rel, text in files.items():
        path = manifests / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    (manifests / "agents").mkdir(parents=True, exist_ok=True)
    return manifests


@pytest.fixture
def manifest_set(tmp_path: Path):
    """A factory: manifest_set({'agents/a.yaml': '...'}) -> the manifests directory."""

    def make(files: dict[str, str]) -> Path:
        return write_set(tmp_path, files)

    return make
