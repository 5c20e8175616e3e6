"""The one exception tree of orchestrator, and the diagnostics manifests produce.

Every error a user can cause is an `OrchestratorError`; the command line maps
it to a clean message and an exit code in one place (`cli.main`). Third-party
errors are wrapped where they cross into our code, with `raise ... from`.

    OrchestratorError
    ├── ManifestError           one or more diagnostics (FILE:LINE:COL: ...) in a manifest set
    ├── RenderError             the rendered configuration is unusable (supervisord rejects it)
    └── StateError              the state directory cannot be read or written
        └── LockHeldError       another command held the apply lock for the whole wait (naming it)

Manifest problems are not raised one at a time: validators collect
`Diagnostic`s, and the loader raises a single `ManifestError` holding all of
them, sorted by file and position, so a user fixes everything in one pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal
from collections.abc import Collection, Iterable

# the root, in a module of its own for the launcher (see core.failure); re-exported: everyone imports it from here
from orchestrator.core.failure import OrchestratorError as OrchestratorError

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Location:
    """A position in a manifest file; `line` and `col` are 1-based, as editors show them."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        path = display_path(self.file)
        if self.line <= 0:
            return path
        return f"{path}:{self.line}:{self.col}"


def display_path(path: str) -> str:
    """`path` relative to the working directory when it lies below it, else as given."""
    if not os.path.isabs(path):
        return path
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (not on POSIX, but cheap to be safe)
        return path
    return path if rel.startswith("..") else rel


@dataclass(frozen=True)
class Diagnostic:
    """One finding about a manifest set: where, which key, what is wrong and what would be valid."""

    location: Location
    key: str
    message: str
    severity: Severity = "error"

    def sort_key(self) -> tuple[str, int, int, str, str]:
        loc = self.location
        return (loc.file, loc.line, loc.col, self.key, self.message)

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        key = f"{self.key}: " if self.key else ""
        return printable(f"{self.location}: {prefix}{key}{self.message}")

    def as_dict(self) -> dict[str, object]:
        return {
            "file": display_path(self.location.file),
            "line": self.location.line,
            "col": self.location.col,
            "key": self.key,
            "message": self.message,
            "severity": self.severity,
        }


def printable(text: str) -> str:
    """`text` with control characters escaped, so one diagnostic is always one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def sorted_diagnostics(items: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Diagnostics sorted by file and position, duplicates dropped."""
    return sorted(set(items), key=Diagnostic.sort_key)




class ManifestError(OrchestratorError):
    """The manifest set is invalid; `diagnostics` holds every error found, and any warnings."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = sorted_diagnostics(diagnostics)
        errors = [d for d in self.diagnostics if d.severity == "error"]
        super().__init__("\n".join(str(d) for d in errors) or "invalid manifests")

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


class RenderError(OrchestratorError):
    """The supervisord configuration could not be rendered or was rejected by supervisord."""


class StateError(OrchestratorError):
    """The state directory cannot be read or written."""


class LockHeldError(StateError):
    """Another apply, up, rollback, restore or watch held the state directory's apply lock for the whole wait."""


# The messages a user meets from several commands, written once.

def unknown_agents(names: Iterable[str], known: Iterable[str]) -> OrchestratorError:
    """The error for agent names the live version does not have, listing those it has."""
    unknown = list(names)
    return OrchestratorError(f"unknown agent{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known)) or 'none'})")


def require_known(names: Iterable[str], known: Collection[str]) -> None:
    """Raise `unknown_agents` for the names that are not among `known`."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise unknown_agents(unknown, known)


def not_running_message(state_dir: str) -> str:
    """What to say when no supervisord answers for `state_dir`."""
    return f"supervisord is not running for {state_dir} (start it with `orchestrator up`)"
