"""The one stream of progress and outcomes: typed, frozen events that operations emit and interfaces render.

apply, up, down, start, stop, emergency-stop and the boot sequence each take
one `emit` callable and report through it; the command line renders the
events on stderr, the listener writes them to its log, and a web page or a
terminal view subscribes to the same stream. What happened is data here, not
text: a renderer chooses the words and colors.

    StartEvent   a step of one agent's start: starting, waiting, ready, retrying, failed, skipped
    StopEvent    a step of one agent's stop: stopping, stopped, removed, failed to stop, leftovers ended
    Note         a line about the operation as a whole ("starting supervisord")

Standard library only, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StartEvent:
    kind: str            # "starting", "waiting" (every few seconds), "ready", "retrying", "failed", "skipped"
    agent: str
    elapsed: float       # seconds since the start sequence began
    detail: str = ""


@dataclass(frozen=True)
class StopEvent:
    agent: str
    what: str            # "stopping", "stopped", "removed", "failed to stop: ...", "ended 1 process(es) ..."


@dataclass(frozen=True)
class Note:
    text: str


Event = StartEvent | StopEvent | Note
Emit = Callable[[Event], None]


def ignore(event: Event) -> None:
    """An `emit` for callers that want no progress."""
