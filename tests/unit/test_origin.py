"""A stored copy of a manifest set loads as the set it was copied from: one project root, derived once."""

from __future__ import annotations

import json
import os

import pytest

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.core.errors import ManifestError
from orchestrator.core.model import ORIGIN_FILE
from orchestrator.state.history import History
from orchestrator.supervisord import render

AGENT = """
name: a
command: ["sh", "-c", "echo {{ project_dir }} {{ manifests_dir }}; sleep 60"]
directory: work
env: {ROOT: "{{ project_dir }}", SET: "{{ manifests_dir }}", STATE: "{{ state_dir }}"}
"""


def _live(manifest_set):
    manifests = manifest_set({"agents/a.yaml": AGENT, "templates/unused.yaml": "env: {X: y}\n"})
    (manifests.parent / "work").mkdir()
    return manifests


def test_a_live_set_is_its_own_origin_and_its_parent_is_the_project_root(manifest_set):
    manifests = _live(manifest_set)
    loaded = load(LoadOptions(str(manifests)))
    assert loaded.origin_dir == loaded.manifests_dir == str(manifests)
    assert loaded.project_dir == str(manifests.parent)
    assert dict(loaded.agent("a").env)["ROOT"] == str(manifests.parent)


def test_a_versions_stored_manifests_load_and_render_exactly_as_the_live_set(manifest_set):
    """Regression: loading STATE/history/NNNN/manifests re-rooted every agent (its directory, the
    project_dir and manifests_dir values, the state directory), so applying it restarted everything."""
    manifests = _live(manifest_set)
    live = load(LoadOptions(str(manifests)))
    rendering = render.render(live)
    version = History(live.state_dir).record(live, rendering)
    stored = os.path.join(version.path, "manifests")
    assert os.path.isfile(os.path.join(stored, ORIGIN_FILE))

    copy = load(LoadOptions(stored))
    assert copy.manifests_dir == stored
    assert (copy.origin_dir, copy.project_dir, copy.state_dir) == (live.origin_dir, live.project_dir, live.state_dir)
    assert copy.agents == live.agents
    again = render.render(copy)
    assert again.hashes == rendering.hashes
    assert again.files == rendering.files
    assert (version.manifests_dir, version.project_dir) == (live.origin_dir, live.project_dir)

    # a copy of the copy keeps the first origin
    second = History(live.state_dir).record(copy, again)
    with open(os.path.join(second.path, "manifests", ORIGIN_FILE), encoding="utf-8") as handle:
        assert json.load(handle) == {"manifests_dir": live.origin_dir, "project_dir": live.project_dir}


@pytest.mark.parametrize("text", ["not json", '{"manifests_dir": "relative", "project_dir": "/p"}', "[1, 2]"])
def test_an_unusable_origin_file_is_a_located_error(manifest_set, text):
    manifests = _live(manifest_set)
    (manifests / ORIGIN_FILE).write_text(text)
    with pytest.raises(ManifestError) as caught:
        load(LoadOptions(str(manifests)))
    assert str(caught.value).startswith(str(manifests / ORIGIN_FILE)) or ORIGIN_FILE in str(caught.value)
