"""The rendered configuration as recorded, as on disk, and as supervisord held it: what drift is told from.

Owned here:

    STATE/history/NNNN/rendered.json   the sha256 of each file the version rendered (written by history.record)
    STATE/held.json                    the digest of each agent group's configuration as supervisord held it
                                       when apply last set the groups up (see supervisord.client.config_digests)

and reading back the files supervisord reads now (`STATE/supervisord.conf`,
`STATE/current/programs/*.conf`), hashed, and putting an edited, deleted or
added file of the live version back as the version rendered it.

Called by history (record), operations.drift (plan, apply, status).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping

from orchestrator.core.names import LIVE_DIR, MAIN_CONFIG, PROGRAMS_DIR
from orchestrator.state.files import point, write_atomically

RECORD = "rendered.json"
HELD = "held.json"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record(directory: str, files: Mapping[str, str]) -> None:
    """Keep the hash of each rendered file (relative path -> text) in the version being written at `directory`."""
    hashes = {rel: digest(text) for rel, text in files.items()}
    write_atomically(os.path.join(directory, RECORD), json.dumps(hashes, indent=1, sort_keys=True) + "\n")


def recorded(version_path: str) -> dict[str, str] | None:
    """The hashes `record` kept for the version at `version_path`; None for a version recorded without them."""
    try:
        with open(os.path.join(version_path, RECORD), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def on_disk(state_dir: str) -> dict[str, str]:
    """The hash of each rendered file supervisord reads now: the main configuration through STATE/supervisord.conf
    (a regular file put there by hand counts), and every programs/*.conf of the live version."""
    found = {}
    main = _read(os.path.join(state_dir, MAIN_CONFIG))
    if main is not None:
        found[MAIN_CONFIG] = digest(main)
    programs = os.path.join(state_dir, LIVE_DIR, PROGRAMS_DIR)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in sorted(os.listdir(programs)):
            if name.endswith(".conf"):
                text = _read(os.path.join(programs, name))
                if text is not None:
                    found[f"{PROGRAMS_DIR}/{name}"] = digest(text)
    return found


def put_back(state_dir: str, version_path: str, paths: Iterable[str], files: Mapping[str, str],
             hashes: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Make each of `paths` (relative to the version) what the version rendered: a file it recorded is written
    from `files` (a rendering of the same configuration) when its text has the recorded hash, a file it did not
    record is deleted. The paths put back, and those that could not be (`files` renders them differently)."""
    done, left = [], []
    for rel in paths:
        path = os.path.join(version_path, rel)
        if rel not in hashes:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            done.append(rel)
            continue
        text = files.get(rel)
        if text is None or digest(text) != hashes[rel]:
            left.append(rel)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomically(path, text)
        if rel == MAIN_CONFIG:  # supervisord reads it through STATE/supervisord.conf, which must point at it again
            link = os.path.join(state_dir, MAIN_CONFIG)
            if not (os.path.islink(link) and os.readlink(link) == os.path.join(LIVE_DIR, MAIN_CONFIG)):
                point(link, os.path.join(LIVE_DIR, MAIN_CONFIG))
        done.append(rel)
    return done, left


def held(state_dir: str) -> dict[str, str] | None:
    """The configuration digests apply last saw supervisord hold, by group; None when none were kept."""
    try:
        with open(os.path.join(state_dir, HELD), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def keep_held(state_dir: str, digests: Mapping[str, str]) -> None:
    write_atomically(os.path.join(state_dir, HELD), json.dumps(dict(digests), indent=1, sort_keys=True) + "\n")
