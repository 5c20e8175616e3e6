"""One typed event stream: up, apply, control and down report through a single `emit`, with frozen
dataclasses a web page or terminal view can subscribe to, in the order the operation happened."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.core.events import Event, Note, StartEvent, StopEvent
from orchestrator.operations import control, lifecycle
from orchestrator.operations.apply import client_for
from tests.integration.conftest import free_ports

pytestmark = pytest.mark.integration


def test_up_stop_and_down_report_through_one_stream_of_typed_events(project):
    feed, calc = free_ports(2)
    project.toy("feed", feed)
    project.toy("calc", calc, depends_on=["feed"])
    manifests = load(LoadOptions(str(project.manifests)))
    events: list[Event] = []
    try:
        report = lifecycle.up(manifests, emit=events.append)
        assert report.ok
        starts = [e for e in events if isinstance(e, StartEvent)]
        ready = [e.agent for e in starts if e.kind == "ready"]
        assert ready == ["feed", "calc"]  # in dependency order
        assert Note("starting supervisord") in events
        with pytest.raises(dataclasses.FrozenInstanceError):
            starts[0].agent = "other"  # type: ignore[misc]

        events.clear()
        stopped = control.stop(manifests.state_dir, client_for(manifests), ["feed"], emit=events.append)
        assert stopped == ["calc", "feed"]  # dependents first
        assert [(e.agent, e.what) for e in events if isinstance(e, StopEvent) and e.what == "stopped"] == \
            [("calc", "stopped"), ("feed", "stopped")]
    finally:
        events.clear()
        lifecycle.down(manifests.state_dir, emit=events.append)
    assert Note("stopping supervisord") in events
    assert all(isinstance(e, (StartEvent, StopEvent, Note)) for e in events)
