"""The supervisord client's own constants against the `supervisor` package's."""

from __future__ import annotations

from supervisor.xmlrpc import Faults as SupervisorFaults

from orchestrator.supervisord.client import Faults


def test_the_fault_codes_the_client_tells_apart_are_supervisords():
    """The client names the fault codes it maps to errors itself (supervisor.xmlrpc would load supervisord's
    own HTTP server into every daemon): each must be the code supervisord sends."""
    ours = {name: value for name, value in vars(Faults).items() if name.isupper()}
    assert len(ours) == 10
    for name, value in ours.items():
        assert getattr(SupervisorFaults, name) == value, name
