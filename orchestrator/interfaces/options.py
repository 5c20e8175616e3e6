"""The options every command shares (-m, --env, --state-dir), and the two ways a command finds its project.

Owned here: `load`, the manifests validated as apply needs them, and `state_dir_only`, the state
directory found without loading any manifest (from the pointer `up` leaves, or the markers of a running
project's processes), so that down, status and emergency-stop work when the manifests are broken. The
loader (ruamel, jinja2) and the renderer are imported by `load` alone: the commands that never load
manifests start without them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.core.errors import ManifestError, OrchestratorError, display_path
from orchestrator.host import orphans
from orchestrator.state.history import LOCK_TIMEOUT, read_pointer

if TYPE_CHECKING:
    from orchestrator.core.model import ManifestSet


@dataclass(frozen=True)
class Options:
    manifests: str
    env: str | None
    state_dir: str | None
    lock_timeout: float = LOCK_TIMEOUT   # how long apply, up, rollback, restore and watch wait for the apply lock

    def load(self) -> ManifestSet:
        """The manifest set, type-checked, cross-checked and accepted by supervisord's parser."""
        from orchestrator.config.manifest import LoadOptions, load
        from orchestrator.supervisord import render

        manifests = load(LoadOptions(self.manifests, env=self.env, state_dir=self.state_dir))
        problems = render.check(manifests)
        if problems:
            raise ManifestError([*problems, *manifests.warnings])
        return manifests

    def state_dir_only(self) -> str:
        """The state directory, even when the manifests are invalid (down and status must still work)."""
        if self.state_dir:
            return os.path.abspath(self.state_dir)
        manifests_dir = os.path.abspath(self.manifests)
        noted = read_pointer(manifests_dir, self.env)  # left by `up`: no manifest needs to load
        if noted:
            return noted
        running = orphans.state_dirs_of(manifests_dir, self.env)  # the markers of a running project's processes
        if len(running) == 1:
            return running[0]
        if running:
            raise OrchestratorError(f"{len(running)} running projects were started from these manifests "
                                    f"({', '.join(map(display_path, running))}); choose one with --state-dir")
        from orchestrator.config.manifest import LoadOptions, load

        try:
            return load(LoadOptions(self.manifests, env=self.env, check_commands=False)).state_dir
        except ManifestError:
            return os.path.join(os.path.dirname(os.path.abspath(self.manifests)), ".orchestrator")
