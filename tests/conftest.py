"""Shared test helpers: where fixtures live, and writing small manifest sets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
DEFAULT_MANIFESTS = REPO / "manifests"


def write_set(root: Path, files: dict[str, str]) -> Path:
    """Write a manifest set below `root` ({relative path: YAML text}) and return its directory."""
    manifests = root / "manifests"
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
