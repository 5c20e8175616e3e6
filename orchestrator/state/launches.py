"""The launch files in the state directory: written, mode 0600, and pruned.

Owned here: the files of `STATE/launch/` once rendered (supervisord.launching
owns their content and names, and the key): each agent's launch file, which
holds its environment with its secrets, and its live controls file. They are
written when a version is recorded (state.history), before supervisord reads
the program sections that name them, and never copied into a version.

A launch file no longer named by the version being recorded is removed,
unless the live version it replaces names it: an agent of the version being
replaced may still be restarted from it until apply has replaced it. Once
apply has replaced every agent, what the live version does not name goes.

Called by state.history.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from orchestrator.core.names import LAUNCH_DIR
from orchestrator.state.files import write_atomically

_NAMED = re.compile(re.escape(LAUNCH_DIR) + r"/([A-Za-z0-9_.-]+-[0-9a-f]{16}\.launch)")


def named_in(texts: Iterable[str]) -> set[str]:
    """The launch files (base names) the program sections `texts` name."""
    return {match.group(1) for text in texts for match in _NAMED.finditer(text)}


def install(state_dir: str, files: Mapping[str, bytes], *, keep: Iterable[str] = ()) -> None:
    """Write `files` (relative path -> content) into the state directory, each 0600, then remove the launch files
    neither `files` nor `keep` (base names) name."""
    directory = os.path.join(state_dir, LAUNCH_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    for rel, content in sorted(files.items()):
        write_atomically(os.path.join(state_dir, rel), content)   # a new file from mkstemp: 0600
    prune(state_dir, {os.path.basename(rel) for rel in files} | set(keep))


def prune(state_dir: str, wanted: Iterable[str]) -> None:
    """Remove the launch files (base names) not `wanted`: those of versions no longer live, with their secrets."""
    directory = os.path.join(state_dir, LAUNCH_DIR)
    wanted = set(wanted)
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if _NAMED.fullmatch(f"{LAUNCH_DIR}/{name}") and name not in wanted:
            os.unlink(os.path.join(directory, name))
