"""Versions: every applied manifest set, its rendered configuration, and which one is live.

Owned here: the state directory's layout and its atomic updates.

    STATE/
      supervisord.conf -> current/supervisord.conf   what supervisord runs from (a stable path)
      current -> history/0007                        the live version; replaced by one atomic rename
      history/0007/
        version.json        number, time, message, environment, status (applying, applied, failed), and
                            semver, user, command (apply, up, rollback...), content hash, rollback_of
        rendered.json       the hash of each rendered file (state.rendered: drift)
        agents.json         the resolved agents, for plan and the boot listener
        supervisord.conf    the rendered configuration ...
        programs/NAME.conf  ... one file per agent
        manifests/          the manifest files as they were applied, and
          .orchestrator-origin.json   the manifests directory they were copied from and its project root
      history/tags.json   tag -> version number (tagged versions are never deleted by retention)
      logs/, supervisor.sock, supervisord.pid, apply.lock (its holder's PID, argv and start time inside)

The origin file (`model.ORIGIN_FILE`) is owned here: history writes it into
every stored copy; the loader (`config.manifest`) reads it, so that loading
and applying a version's `manifests/` (what rollback does) gives the live
version's project root, template values and rendered configuration hashes,
and restarts nothing that did not change. A copy of a copy keeps the first
origin.

A version directory is written whole under a temporary name, then renamed into
place; `current` is then repointed by renaming a new symlink over it. A kill -9
at any moment leaves either the old or the new version live, never a mix.

After a version is recorded, retention (`prune`, settings `history.keep`) deletes the oldest versions
beyond the newest `keep`, never a tagged one, the live one or the newest applied one.

Called by apply (record, mark), plan (current), lifecycle (up, down) and the
boot listener (current's agents).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.core.errors import LockHeldError, StateError
from orchestrator.core.model import ORIGIN_FILE, Agent, ManifestSet, agent_from_plain, kept_settings, to_plain
from orchestrator.core.names import MAIN_CONFIG, PROGRAMS_DIR
from orchestrator.core.versions import check_tag, content_hash, to_prune
from orchestrator.state import launches, rendered
from orchestrator.state.files import LockBusy, exclusive, make_private, point, write_atomically, write_tree

HISTORY = "history"
CURRENT = "current"
SETTINGS = "settings.json"
LOCK = "apply.lock"
TAGS = "tags.json"
LOCK_TIMEOUT = 30.0   # seconds an apply, up, rollback, restore or watch waits for another to finish (--lock-timeout)
_MANIFEST_PARTS = ("orchestrator.yaml", "agents", "templates", "env")


@dataclass(frozen=True)
class Version:
    number: int
    path: str
    created: float
    message: str
    env: str | None
    status: str
    agents: Mapping[str, Agent]
    programs: Mapping[str, str]
    main: str
    manifests_dir: str = ""   # the manifest set's origin (ManifestSet.origin_dir)
    project_dir: str = ""     # where the agents' relative paths resolve (ManifestSet.project_dir)
    semver: str = ""          # core.versions.next_semver of the change that made it ("" before versions had one)
    user: str = ""            # the OS user who made it
    command: str = ""         # apply, up, rollback, watch...
    content_hash: str = ""    # core.versions.content_hash of its stored manifests and rendered files
    rollback_of: int | None = None   # a rollback's: the version it returns to

    @property
    def label(self) -> str:
        return f"{self.number:04d}"


def _project_dir(meta: Mapping[str, Any], path: str) -> str:
    """A version's project root, as recorded; a version recorded before it was (the manifests' parent then)."""
    recorded = meta.get("project_dir")
    if isinstance(recorded, str) and recorded:
        return recorded
    manifests_dir = meta.get("manifests_dir")
    return os.path.dirname(manifests_dir) if isinstance(manifests_dir, str) and manifests_dir else path


class RenderedFiles(Protocol):
    """What a version stores of a rendered configuration (supervisord.render.Rendering is one)."""

    @property
    def files(self) -> Mapping[str, str]: ...

    @property
    def launch_files(self) -> Mapping[str, bytes]: ...   # written into the state directory, never into the version

    @property
    def problems(self) -> list[str]: ...               # why its launch files cannot be written (unread secrets)


CLAIM = "up.claim"
LISTENER_READY = "listener.ready"  # the pid of the listener that reads events now (written by it, read by up)


POINTER = ".orchestrator-state"  # beside the manifests: where their state directory is, per environment


def _pointers(manifests_dir: str) -> dict[str, str]:
    try:
        with open(os.path.join(manifests_dir, POINTER), encoding="utf-8") as handle:
            data = json.loads(handle.read(65536))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def leave_pointer(manifests_dir: str, state_dir: str, env: str | None) -> None:
    """Note beside the manifests where their state directory (for `env`) is, so down, status and
    emergency-stop find it without loading the manifests, which may be broken by then. Best effort:
    a read-only manifests directory only loses the shortcut."""
    pointers = _pointers(manifests_dir)
    if pointers.get(env or "") == state_dir:
        return
    pointers[env or ""] = state_dir
    with contextlib.suppress(OSError):
        write_atomically(os.path.join(manifests_dir, POINTER), json.dumps(pointers, indent=1, sort_keys=True) + "\n")


def read_pointer(manifests_dir: str, env: str | None) -> str | None:
    """The state directory `leave_pointer` noted beside these manifests for `env`, if it is still a directory."""
    state_dir = _pointers(manifests_dir).get(env or "")
    return state_dir if state_dir and os.path.isabs(state_dir) and os.path.isdir(state_dir) else None


def leave_claim(state_dir: str, supervisord_pid: int) -> None:
    """`up` started the supervisord with this pid and starts its agents: its boot sequence must not."""
    write_atomically(os.path.join(state_dir, CLAIM), str(supervisord_pid))


def take_claim(state_dir: str, supervisord_pid: int) -> bool:
    """Whether `up` claimed this supervisord's start (the claim is used up: a later restart of it boots)."""
    path = os.path.join(state_dir, CLAIM)
    try:
        with open(path, encoding="utf-8") as handle:
            claimed = handle.read().strip()
        os.unlink(path)
    except (OSError, ValueError):
        return False
    return claimed == str(supervisord_pid)


class History:
    def __init__(self, state_dir: str, *, programs: bool = True) -> None:
        """`programs` off: versions are read without their rendered programs (`Version.programs` empty), for a
        reader that needs the agents alone (the exporter: a 500-agent version's programs are 600 KB of text)."""
        self.state_dir = state_dir
        self.root = os.path.join(state_dir, HISTORY)
        self.programs = programs
        self._live: tuple[str, Version] | None = None

    @property
    def config_path(self) -> str:
        return os.path.join(self.state_dir, MAIN_CONFIG)

    @contextmanager
    def lock(self, *, wait: bool = True, timeout: float | None = None,
             say: Callable[[str], None] | None = None) -> Iterator[bool]:
        """Hold the state directory's apply lock; yields False (without waiting) when `wait` is off and it is taken.

        The holder is recorded in the lock file (files.exclusive). `timeout`: wait at most that long, then raise
        LockHeldError naming the holder. `say` is told whom the wait is for, and of a dead holder taken over."""
        path = os.path.join(self.state_dir, LOCK)
        try:
            with exclusive(path, wait=wait, timeout=timeout, record=True, say=say) as held:
                yield held
        except LockBusy as busy:
            if busy.path != path:
                raise
            who = str(busy.holder) if busy.holder is not None else "a process that has not recorded itself"
            raise LockHeldError(f"the apply lock of {self.state_dir} is held by {who}; gave up after {timeout:g}s "
                                "(wait longer with --lock-timeout, or try again once it is done)") from None

    def numbers(self) -> list[int]:
        if not os.path.isdir(self.root):
            return []
        return sorted(int(n) for n in os.listdir(self.root) if n.isdigit())

    def current(self) -> Version | None:
        """The live version. Its agents and programs never change once written, so it is read once per
        `current` target: the listener asks on every event (a 200-agent version costs 7 ms to read)."""
        link = os.path.join(self.state_dir, CURRENT)
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        if self._live is not None and self._live[0] == target:
            return self._live[1]
        version = self._read(os.path.normpath(os.path.join(self.state_dir, target)))
        self._live = (target, version)
        return version

    def prune_launches(self) -> None:
        """Remove the launch files the live version does not name (apply, once no agent runs an older one)."""
        launches.prune(self.state_dir, launches.named_in(self._live_programs()))

    def _live_programs(self) -> list[str]:
        """The text of the live version's program sections (none without one)."""
        directory = os.path.join(self.state_dir, CURRENT, PROGRAMS_DIR)
        texts = []
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                texts.append(handle.read())
        return texts

    def current_main(self) -> str | None:
        """The live version's main supervisord configuration alone (None without a live version): what finding
        supervisord's socket needs, without reading every program of the version."""
        try:
            with open(os.path.join(self.state_dir, CURRENT, MAIN_CONFIG), encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the live version's {MAIN_CONFIG}: {exc}") from exc

    def get(self, number: int) -> Version:
        path = os.path.join(self.root, f"{number:04d}")
        if not os.path.isdir(path):
            raise StateError(f"no version {number} in {self.root} (versions: {', '.join(map(str, self.numbers())) or 'none'})")
        return self._read(path)

    def versions(self) -> list[Version]:
        return [self.get(n) for n in self.numbers()]

    def _read(self, path: str) -> Version:
        try:
            with open(os.path.join(path, "version.json"), encoding="utf-8") as handle:
                meta = json.load(handle)
            with open(os.path.join(path, "agents.json"), encoding="utf-8") as handle:
                agents = {name: agent_from_plain(data) for name, data in json.load(handle).items()}
            programs = {}
            programs_dir = os.path.join(path, PROGRAMS_DIR)
            for name in sorted(os.listdir(programs_dir)) if self.programs else ():
                with open(os.path.join(programs_dir, name), encoding="utf-8") as handle:
                    programs[name.removesuffix(".conf")] = handle.read()
            with open(os.path.join(path, MAIN_CONFIG), encoding="utf-8") as handle:
                main = handle.read()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"cannot read version {path}: {exc}") from exc
        return Version(number=meta["number"], path=path, created=meta["created"], message=meta.get("message", ""),
                       env=meta.get("env"), status=meta.get("status", "applied"), agents=agents, programs=programs, main=main,
                       manifests_dir=meta.get("manifests_dir", ""), project_dir=_project_dir(meta, path),
                       semver=meta.get("semver", ""), user=meta.get("user", ""), command=meta.get("command", ""),
                       content_hash=meta.get("content_hash", ""), rollback_of=meta.get("rollback_of"))

    def record(self, manifests: ManifestSet, rendering: RenderedFiles, *, message: str = "", command: str = "apply",
               semver: str = "", rollback_of: int | None = None) -> Version:
        """Write a new version and make it live, then apply retention (the caller holds the lock).

        `semver`: of the change (core.versions.next_semver); `command`: what made it; `rollback_of`: the version
        a rollback returns to."""
        if rendering.problems:
            raise StateError("cannot record a version whose launch files cannot be written:\n  "
                             + "\n  ".join(rendering.problems))
        os.makedirs(self.root, exist_ok=True)
        for left in os.listdir(self.root):  # the scratch of a record killed midway (the lock is ours: nobody writes one now)
            if left.startswith(".tmp-"):
                shutil.rmtree(os.path.join(self.root, left), ignore_errors=True)
        number = (self.numbers() or [0])[-1] + 1
        final = os.path.join(self.root, f"{number:04d}")
        scratch = tempfile.mkdtemp(dir=self.root, prefix=".tmp-")
        try:
            write_tree(scratch, rendering.files)
            rendered.record(scratch, rendering.files)   # each file's hash: a hand edit shows as drift
            snapshot = os.path.join(scratch, "manifests")
            os.makedirs(snapshot)
            for part in _MANIFEST_PARTS:
                source = os.path.join(manifests.manifests_dir, part)
                # the operator's text byte for byte; not their file modes: a snapshot is private
                if os.path.isdir(source):
                    shutil.copytree(source, os.path.join(snapshot, part), copy_function=shutil.copyfile)
                elif os.path.isfile(source):
                    shutil.copyfile(source, os.path.join(snapshot, part))
            origin = {"manifests_dir": manifests.origin_dir, "project_dir": manifests.project_dir}
            write_atomically(os.path.join(snapshot, ORIGIN_FILE), json.dumps(origin, indent=1) + "\n")
            make_private(snapshot)
            agents = {a.name: to_plain(a) for a in manifests.agents}
            write_atomically(os.path.join(scratch, "agents.json"), json.dumps(agents, indent=1, sort_keys=True))
            # what the exporter needs of the settings (its notification targets, its forecast horizon), beside the agents
            write_atomically(os.path.join(scratch, SETTINGS), json.dumps(kept_settings(manifests), indent=1, sort_keys=True))
            content = {**{rel: text.encode("utf-8") for rel, text in rendering.files.items()},
                       **{f"manifests/{rel}": data for rel, data in read_manifest_files(snapshot).items()}}
            meta = {"number": number, "created": time.time(), "message": message, "env": manifests.env,
                    "manifests_dir": manifests.origin_dir, "project_dir": manifests.project_dir, "status": "applying",
                    "semver": semver, "user": _user(), "command": command, "content_hash": content_hash(content),
                    "rollback_of": rollback_of}
            write_atomically(os.path.join(scratch, "version.json"), json.dumps(meta, indent=1))
            os.rename(scratch, final)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        launches.install(self.state_dir, rendering.launch_files, keep=launches.named_in(self._live_programs()))
        point(os.path.join(self.state_dir, CURRENT), os.path.join(HISTORY, f"{number:04d}"))
        if not os.path.islink(self.config_path):
            point(self.config_path, os.path.join(CURRENT, MAIN_CONFIG))
        with contextlib.suppress(OSError):  # an old version that cannot be deleted costs space, never the apply
            self.prune(manifests.settings.history.keep)
        return self._read(final)

    def settings(self, version: Version) -> dict[str, Any]:
        """What `record` kept of the version's settings (project, notifications, exporter); {} for a version
        recorded before it kept them, or when the file cannot be read."""
        try:
            with open(os.path.join(version.path, SETTINGS), encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def mark(self, version: Version, status: str, **details: Any) -> None:
        path = os.path.join(version.path, "version.json")
        with open(path, encoding="utf-8") as handle:
            meta = json.load(handle)
        meta.update(status=status, **details)
        write_atomically(path, json.dumps(meta, indent=1))

    # --- metadata, tags and retention -----------------------------------------------

    def meta(self, number: int) -> dict[str, Any]:
        """Version `number`'s version.json alone (no agents read): what `history` lists."""
        path = os.path.join(self.root, f"{number:04d}", "version.json")
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {path}: {exc}") from exc
        return data if isinstance(data, dict) else {}

    def live_number(self) -> int | None:
        try:
            target = os.readlink(os.path.join(self.state_dir, CURRENT))
        except OSError:
            return None
        name = os.path.basename(os.path.normpath(target))
        return int(name) if name.isdigit() else None

    def tags(self) -> dict[str, int]:
        """tag -> version number ({} when nothing was tagged)."""
        try:
            with open(os.path.join(self.root, TAGS), encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {os.path.join(self.root, TAGS)}: {exc}") from exc
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def tag(self, number: int, name: str, *, force: bool = False) -> int | None:
        """Tag version `number` as `name` (the caller holds the lock); the version the tag was moved from, if any."""
        problem = check_tag(name)
        if problem:
            raise StateError(f"cannot tag as {name!r}: {problem}")
        self.get(number)  # a clear error naming the versions there are
        tags = self.tags()
        before = tags.get(name)
        if before is not None and before != number and not force:
            raise StateError(f"tag {name!r} is on version {before}; --force moves it to version {number}")
        tags[name] = number
        write_atomically(os.path.join(self.root, TAGS), json.dumps(tags, indent=1, sort_keys=True) + "\n")
        return before if before != number else None

    def prune(self, keep: int) -> list[int]:
        """Delete the oldest versions beyond the newest `keep` (the caller holds the lock): never a tagged one, the
        live one, nor the newest applied one (what a rollback on failure returns to). The versions deleted."""
        numbers = self.numbers()
        if len(numbers) <= keep:
            return []
        protected = set(self.tags().values())
        live = self.live_number()
        if live is not None:
            protected.add(live)
        for number in reversed(numbers):
            with contextlib.suppress(StateError):
                if self.meta(number).get("status") == "applied":
                    protected.add(number)
                    break
        doomed = to_prune(numbers, keep=keep, protected=protected)
        for number in doomed:
            # renamed away first: a kill during the delete never leaves a half version under a version's name
            gone = tempfile.mkdtemp(dir=self.root, prefix=".tmp-deleted-")
            os.rename(os.path.join(self.root, f"{number:04d}"), os.path.join(gone, "v"))
            shutil.rmtree(gone, ignore_errors=True)
        return doomed

    def stored_files(self, version: Version) -> dict[str, bytes]:
        """The manifest files version `version` stored, by path relative to its manifests directory."""
        return read_manifest_files(os.path.join(version.path, "manifests"))


def read_manifest_files(manifests_dir: str) -> dict[str, bytes]:
    """The files of a manifest set as a version stores them (orchestrator.yaml, agents/, templates/, env/), by
    relative path, as bytes."""
    found: dict[str, bytes] = {}
    for part in _MANIFEST_PARTS:
        top = os.path.join(manifests_dir, part)
        if os.path.isfile(top):
            paths = [top]
        else:
            paths = sorted(os.path.join(d, n) for d, _, names in os.walk(top) for n in names)
        for path in paths:
            try:
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, manifests_dir)] = handle.read()
            except OSError as exc:
                raise StateError(f"cannot read {path}: {exc}") from exc
    return found


def _user() -> str:
    """The OS user running orchestrator (its uid when it has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
