"""Backups: a manifest set and its history in one gzip'd tar archive, written, verified and restored.

Owned here: the archive's format and every check made on it. An archive holds

    manifests/orchestrator.yaml, manifests/agents/..., manifests/templates/..., manifests/env/...
    history/NNNN/...          whole version directories, byte for byte
    BACKUP.json               the index, last: format, format_version, project, created, orchestrator
                              version, the live version's number (`current`), and every other member
                              with its kind, size and sha256

and nothing else: no links, no devices, no absolute paths, no `..`. `verify` reads the whole
archive (gzip trailer included) before anything is written, and refuses a foreign, truncated,
corrupt or tampered one with `BackupError` naming what is wrong. A restore then writes only
what verified, through a staging directory, re-checking every hash as it extracts.

`plan_restore` says what a restore would do to a manifests directory and a state directory
(files written, unchanged and deleted; versions new, already there, clashing); `restore` does
it. The live version (`current`) is never changed here: only apply changes what runs.

Also the automatic backups (`auto_backup`): the version about to stop being live, alone, in
STATE/backups/, the last `KEEP` kept. Pure file work, called by operations.backups (the backup
and restore commands, apply's hook).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from orchestrator.core.errors import StateError
from orchestrator.state.files import make_private, write_atomically
from orchestrator.state.history import _MANIFEST_PARTS, CURRENT, HISTORY, SETTINGS, TAGS

FORMAT = "orchestrator-backup"
FORMAT_VERSION = 1
INDEX = "BACKUP.json"
TAGS_MEMBER = f"{HISTORY}/{TAGS}"   # the history's tags (tag -> version), merged into the history on restore
MANIFESTS = "manifests"
BACKUPS = "backups"        # STATE/backups: the automatic backups
KEEP = 10                  # automatic backups kept of each kind; the oldest are deleted
AUTO_PREFIX = "auto-"      # before an apply records a version: the version that was live
SAFETY_PREFIX = "pre-restore-"  # before a restore writes anything: what it overwrites
_CHUNK = 1 << 20
# Bounds on what `verify` reads, so a hostile archive (a gzip bomb, millions of members) costs a clear
# error rather than the disk or the memory. A thousand versions of 200 agents are far below both.
MAX_MEMBERS = 200_000
MAX_TOTAL_BYTES = 4 << 30
MAX_INDEX_BYTES = 64 << 20


class BackupError(StateError):
    """A backup cannot be written, or read, is not an orchestrator backup, or fails its verification (nothing
    was changed), or a restore would clash with the state directory."""


@dataclass(frozen=True)
class Member:
    path: str                  # inside the archive: manifests/..., history/NNNN/...
    kind: str                  # "file" or "dir"
    size: int = 0
    sha256: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Backup:
    """A verified archive (or one just written): its index."""

    path: str
    project: str | None
    created: float
    orchestrator: str
    current: int | None        # the live version when it was taken
    members: tuple[Member, ...]
    archive_bytes: int = 0

    @property
    def manifests(self) -> dict[str, Member]:
        """Manifest files, by their path below the manifests directory."""
        return {m.path[len(MANIFESTS) + 1:]: m for m in self.members if m.kind == "file" and m.path.startswith(MANIFESTS + "/")}

    @property
    def versions(self) -> list[int]:
        return sorted({int(m.path.split("/")[1]) for m in self.members
                       if m.path.startswith(HISTORY + "/") and m.path.split("/")[1].isdigit()})

    def version_files(self, number: int) -> dict[str, str]:
        """relative path -> sha256 of the files of one version."""
        prefix = f"{HISTORY}/{number:04d}/"
        return {m.path[len(prefix):]: m.sha256 for m in self.members if m.kind == "file" and m.path.startswith(prefix)}

    def summary(self) -> dict[str, Any]:
        return {"path": self.path, "format": FORMAT, "format_version": FORMAT_VERSION, "project": self.project,
                "created": self.created, "orchestrator": self.orchestrator, "current": self.current,
                "manifest_files": len(self.manifests), "versions": self.versions,
                "files": sum(1 for m in self.members if m.kind == "file"),
                "content_bytes": sum(m.size for m in self.members), "archive_bytes": self.archive_bytes}


# ---------------------------------------------------------------- writing

def _walk(root: str, arc_root: str, seen: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """(archive path, file system path) of `root` and everything below it, directories before their contents,
    sorted; links followed the way history's copy follows them (a manifest that is a link is stored as its text),
    but a directory that links back to one being walked is skipped rather than walked forever."""
    if os.path.isfile(root):
        yield arc_root, root
        return
    real = os.path.realpath(root)
    if not os.path.isdir(root) or real in seen:
        return
    yield arc_root, root
    for name in sorted(os.listdir(root)):
        yield from _walk(os.path.join(root, name), f"{arc_root}/{name}", seen | {real})


def sources(*, manifests_dir: str | None, state_dir: str, versions: Iterable[int]) -> list[tuple[str, str]]:
    """What a backup of `manifests_dir` (its manifest parts alone) and of these versions of `state_dir` holds:
    (archive path, file system path), in archive order."""
    found: list[tuple[str, str]] = []
    if manifests_dir is not None:
        for part in _MANIFEST_PARTS:
            found.extend(_walk(os.path.join(manifests_dir, part), f"{MANIFESTS}/{part}"))
    for number in versions:
        label = f"{number:04d}"
        found.extend(_walk(os.path.join(state_dir, HISTORY, label), f"{HISTORY}/{label}"))
    tags = os.path.join(state_dir, HISTORY, TAGS)
    if os.path.isfile(tags):
        found.append((TAGS_MEMBER, tags))
    return found


def write(path: str, files: list[tuple[str, str]], *, project: str | None, current: int | None, version: str,
          force: bool = False, now: float | None = None) -> Backup:
    """Write the archive of `files` (from `sources`) to `path`, atomically: a temporary file beside it, fsynced,
    then linked (or, with `force`, renamed) into place. Without `force` an existing `path` is an error."""
    path = os.path.abspath(path)
    if not force and os.path.lexists(path):
        raise BackupError(f"{path} exists; choose another file or give --force to replace it")
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise BackupError(f"cannot write {path}: no directory {directory}")
    created = time.time() if now is None else now
    members: list[Member] = []
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-backup-")
    try:
        with os.fdopen(fd, "wb") as raw:
            # no time in the gzip header: the index and the members carry the backup's time
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as zipped, \
                    tarfile.open(fileobj=zipped, mode="w:", format=tarfile.PAX_FORMAT) as tar:
                for arcname, source in files:
                    members.append(_add(tar, arcname, source, created))
                index = {"format": FORMAT, "format_version": FORMAT_VERSION, "project": project, "created": created,
                         "orchestrator": version, "current": current, "members": [m.as_dict() for m in members]}
                data = (json.dumps(index, indent=1) + "\n").encode("utf-8")
                tar.addfile(_info(INDEX, size=len(data), mode=0o600, mtime=created), io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        _publish(tmp, path, force=force)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself made durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return Backup(path=path, project=project, created=created, orchestrator=version, current=current,
                  members=tuple(members), archive_bytes=os.path.getsize(path))


def _info(name: str, *, size: int = 0, mode: int, mtime: float, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size, info.mode, info.mtime = size, mode, int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add(tar: tarfile.TarFile, arcname: str, source: str, created: float) -> Member:
    if os.path.isdir(source):
        tar.addfile(_info(arcname, mode=0o700, mtime=created, directory=True))
        return Member(arcname, "dir")
    # read once, hashed and stored from the same bytes: a file replaced meanwhile (history's atomic writes)
    # is stored whole, old or new, never a mix
    try:
        with open(source, "rb") as handle:
            data = handle.read()
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode) & 0o777
    except OSError as exc:  # gone since it was listed, unreadable: the backup is not written
        raise BackupError(f"cannot read {source}: {exc.strerror or exc}; no backup was written") from exc
    tar.addfile(_info(arcname, size=len(data), mode=mode, mtime=created), io.BytesIO(data))
    return Member(arcname, "file", len(data), hashlib.sha256(data).hexdigest())


def _publish(tmp: str, path: str, *, force: bool) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # never replaces: a file that appeared meanwhile is not overwritten
    except FileExistsError:
        raise BackupError(f"{path} exists; choose another file or give --force to replace it") from None
    except OSError:  # a file system without hard links
        if os.path.lexists(path):
            raise BackupError(f"{path} exists; choose another file or give --force to replace it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


# ---------------------------------------------------------------- verifying

def _name_problem(name: str) -> str | None:
    """Why an archive path is not one a backup may hold (None: it may)."""
    if not name:
        return "an empty path"
    if name.startswith("/"):
        return "an absolute path"
    if "\\" in name or "\0" in name:
        return "a path with a backslash or a NUL"
    parts = name.split("/")
    if ".." in parts:
        return "a path with '..'"
    if any(p in ("", ".") for p in parts):
        return "a path with an empty or '.' component"
    if name in (INDEX, TAGS_MEMBER):
        return None
    if parts[0] == MANIFESTS and (len(parts) == 1 or parts[1] in _MANIFEST_PARTS):
        return None if parts[1:2] != ["orchestrator.yaml"] or len(parts) == 2 else "a path below orchestrator.yaml"
    if parts[0] == HISTORY and len(parts) >= 2 and parts[1].isdigit() and parts[1] == f"{int(parts[1]):04d}":
        return None
    return "a path outside what a backup holds (manifests/{orchestrator.yaml,agents,templates,env}, history/NNNN)"


def _kind_problem(name: str, kind: str) -> str | None:
    """Why a member of this path may not be of this kind: the places that are directories (manifests/, its agents/,
    templates/, env/, each history/NNNN) are directories, orchestrator.yaml is a file."""
    parts = name.split("/")
    directory = (parts[0] == MANIFESTS and (len(parts) == 1 or (len(parts) == 2 and parts[1] != "orchestrator.yaml"))) \
        or (parts[0] == HISTORY and len(parts) == 2 and name != TAGS_MEMBER)
    if directory and kind != "dir":
        return f"{name} must be a directory"
    if name in (f"{MANIFESTS}/orchestrator.yaml", TAGS_MEMBER) and kind != "file":
        return f"{name} must be a file"
    return None


def _refuse(path: str, what: str) -> BackupError:
    return BackupError(f"{path}: {what}; nothing was changed")


_ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


@contextlib.contextmanager
def _read_errors_refused(path: str, also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Errors of reading the archive (truncated, corrupt: from gzip, zlib or tarfile; and `also`) as BackupError."""
    try:
        yield
    except (*_ARCHIVE_ERRORS, *also) as exc:
        detail = f"{type(exc).__name__}: {exc or 'unexpected end'}"
        truncated = isinstance(exc, EOFError) or "unexpected end" in str(exc)
        raise _refuse(path, f"the archive is {'truncated' if truncated else 'corrupt'} ({detail})") from exc


def _members(handle: IO[bytes], path: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Each member of the archive open in `handle`, the gzip stream then read to its end (where its checksum and
    length are checked). The caller reads each member's data before asking for the next, inside
    `_read_errors_refused`: truncation and corruption show there."""
    if handle.read(2) != b"\x1f\x8b":
        raise _refuse(path, "not an orchestrator backup (not a gzip file)")
    handle.seek(0)
    with gzip.GzipFile(fileobj=handle, mode="rb") as zipped:
        try:
            tar = tarfile.open(fileobj=zipped, mode="r:")  # noqa: SIM115 - closed by the with below
        except tarfile.ReadError as exc:
            if isinstance(exc.__context__, (EOFError, zlib.error, gzip.BadGzipFile)):
                raise  # the gzip stream is damaged: said as such by _read_errors_refused
            raise _refuse(path, f"not an orchestrator backup (no tar archive inside the gzip: {exc})") from exc
        with tar:
            while True:
                info = tar.next()
                if info is None:
                    break
                yield info, tar
        while zipped.read(_CHUNK):  # the rest of the stream: its end and its CRC are checked only once read
            pass


def _hash(tar: tarfile.TarFile, info: tarfile.TarInfo, sink: IO[bytes] | None = None) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    source = tar.extractfile(info)
    if source is None:
        return 0, digest.hexdigest()
    while chunk := source.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return size, digest.hexdigest()


def _kind(info: tarfile.TarInfo) -> str | None:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    return None


def _describe(info: tarfile.TarInfo) -> str:
    if info.issym() or info.islnk():
        return f"a link ({info.name} -> {info.linkname}); a backup holds no links"
    if info.ischr() or info.isblk():
        return f"a device file ({info.name}); a backup holds files and directories only"
    if info.isfifo():
        return f"a FIFO ({info.name}); a backup holds files and directories only"
    return f"a member of an unknown type ({info.name}); a backup holds files and directories only"


def verify(path: str) -> Backup:
    """The index of the backup at `path`, once every byte of it was read and checked against the index;
    BackupError naming the first problem otherwise. Nothing is written."""
    path = os.path.abspath(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the streamed read
    except OSError as exc:
        raise _refuse(path, f"cannot read it ({exc.strerror or exc})") from exc
    found: dict[str, Member] = {}
    index_data: bytes | None = None
    total = 0
    with handle, _read_errors_refused(path, also=(OSError,)):
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise _refuse(path, "not a regular file")
        for info, tar in _members(handle, path):
            name = info.name
            problem = _name_problem(name)
            if problem:
                raise _refuse(path, f"{problem}: {name!r} (a backup that writes outside its place is refused)")
            kind = _kind(info)
            if kind is None:
                raise _refuse(path, _describe(info))
            misplaced = _kind_problem(name, kind)
            if misplaced:
                raise _refuse(path, misplaced)
            if name in found or (name == INDEX and index_data is not None):
                raise _refuse(path, f"{name} appears twice")
            if len(found) >= MAX_MEMBERS:
                raise _refuse(path, f"more than {MAX_MEMBERS} members")
            total += info.size
            if total > MAX_TOTAL_BYTES:
                raise _refuse(path, f"more than {MAX_TOTAL_BYTES >> 30} GiB of content")
            if name == INDEX:
                if kind != "file" or info.size > MAX_INDEX_BYTES:
                    raise _refuse(path, f"{INDEX} is not a file of at most {MAX_INDEX_BYTES >> 20} MiB")
                source = tar.extractfile(info)
                index_data = source.read() if source is not None else b""
                continue
            if kind == "dir":
                found[name] = Member(name, "dir")
            else:
                size, digest = _hash(tar, info)
                found[name] = Member(name, "file", size, digest)
        archive_bytes = os.fstat(handle.fileno()).st_size
    if index_data is None:
        raise _refuse(path, f"not an orchestrator backup (it has no {INDEX})")
    index = _parse_index(path, index_data)
    listed = index["members"]
    for name, member in listed.items():
        got = found.get(name)
        if got is None:
            raise _refuse(path, f"{name} is listed in {INDEX} but missing from the archive")
        if got.kind != member.kind:
            raise _refuse(path, f"{name} is a {got.kind} in the archive but a {member.kind} in {INDEX}")
        if got.size != member.size:
            raise _refuse(path, f"{name} has {got.size} bytes where {INDEX} says {member.size} (altered or corrupt)")
        if got.sha256 != member.sha256:
            raise _refuse(path, f"{name} does not match its sha256 in {INDEX} (altered or corrupt)")
    unlisted = sorted(set(found) - set(listed))
    if unlisted:
        raise _refuse(path, f"{unlisted[0]} is in the archive but not listed in {INDEX}"
                      + (f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""))
    return Backup(path=path, project=index["project"], created=index["created"], orchestrator=index["orchestrator"],
                  current=index["current"], members=tuple(listed.values()), archive_bytes=archive_bytes)


def _parse_index(path: str, data: bytes) -> dict[str, Any]:
    try:
        index = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _refuse(path, f"{INDEX} is not valid JSON ({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise _refuse(path, f"not an orchestrator backup ({INDEX} is not of the format {FORMAT!r})")
    version = index.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise _refuse(path, f"{INDEX} has no valid format_version")
    if version > FORMAT_VERSION:
        raise _refuse(path, f"made by a newer orchestrator (backup format {version}; this one reads up to {FORMAT_VERSION})")
    members: dict[str, Member] = {}
    try:
        for entry in index["members"]:
            member = Member(str(entry["path"]), str(entry["kind"]), int(entry.get("size", 0)), str(entry.get("sha256", "")))
            problem = _name_problem(member.path)
            if problem or member.kind not in ("file", "dir") or member.path == INDEX:
                raise _refuse(path, f"{INDEX} lists {member.path!r}: {problem or 'not a member a backup may hold'}")
            if member.path in members:
                raise _refuse(path, f"{INDEX} lists {member.path} twice")
            members[member.path] = member
        current = index.get("current")
        project = index.get("project")
        created = float(index["created"])
        orchestrator = str(index.get("orchestrator", "?"))
    except BackupError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise _refuse(path, f"{INDEX} is malformed ({type(exc).__name__}: {exc})") from exc
    if current is not None and not isinstance(current, int):
        raise _refuse(path, f"{INDEX}: current is not a version number")
    return {"members": members, "current": current, "project": project if isinstance(project, str) else None,
            "created": created, "orchestrator": orchestrator}


# ---------------------------------------------------------------- restoring

def _sha256_of(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            digest = hashlib.sha256()
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def manifest_files(manifests_dir: str) -> list[str]:
    """The files of the manifest set below `manifests_dir` (its parts alone), as relative paths."""
    return [arc[len(MANIFESTS) + 1:] for arc, source in sources(manifests_dir=manifests_dir, state_dir="", versions=())
            if not os.path.isdir(source)]


def version_files(state_dir: str, number: int) -> dict[str, str]:
    """relative path -> sha256 of the files of one stored version."""
    root = os.path.join(state_dir, HISTORY, f"{number:04d}")
    found = {}
    for directory, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(directory, name)
            found[os.path.relpath(full, root).replace(os.sep, "/")] = _sha256_of(full) or ""
    return found


def live_number(state_dir: str) -> int | None:
    """The number of the live version (`current`'s target), None without one."""
    try:
        target = os.readlink(os.path.join(state_dir, CURRENT))
    except OSError:
        return None
    name = os.path.basename(os.path.normpath(target))
    return int(name) if name.isdigit() else None


def stored_numbers(state_dir: str) -> list[int]:
    root = os.path.join(state_dir, HISTORY)
    return sorted(int(n) for n in os.listdir(root) if n.isdigit()) if os.path.isdir(root) else []


@dataclass(frozen=True)
class RestorePlan:
    """What restoring `backup` does to `manifests_dir` and `state_dir`."""

    backup: Backup
    manifests_dir: str
    state_dir: str
    write: tuple[str, ...]          # manifest files new or different here
    unchanged: tuple[str, ...]      # manifest files already byte for byte as in the backup
    delete: tuple[str, ...]         # manifest files here that the backup does not have
    new_versions: tuple[int, ...]   # versions not here
    same_versions: tuple[int, ...]  # versions here with the same configuration (kept as they are)
    replace_versions: tuple[int, ...] = ()  # versions here with another configuration, replaced (--force)
    live: int | None = None         # the live version here (never changed by a restore)
    untouched_versions: tuple[int, ...] = ()  # versions here the backup does not have (kept)
    tags: bool = False              # the backup's tags differ from the history's: they are merged (_merge_tags)

    @property
    def changes(self) -> bool:
        return bool(self.write or self.delete or self.new_versions or self.replace_versions or self.tags)

    def as_dict(self) -> dict[str, Any]:
        return {"write": list(self.write), "unchanged": list(self.unchanged), "delete": list(self.delete),
                "new_versions": list(self.new_versions), "same_versions": list(self.same_versions),
                "replace_versions": list(self.replace_versions), "live": self.live,
                "untouched_versions": list(self.untouched_versions), "tags": self.tags}


def _same_configuration(backup: Backup, state_dir: str, number: int) -> bool:
    """A stored version and the backup's of the same number hold the same files, but for version.json (its status
    and notes change after it is written: the copy here is the newer one, and is kept)."""
    ours = version_files(state_dir, number)
    theirs = backup.version_files(number)
    ours.pop("version.json", None)
    theirs.pop("version.json", None)
    return ours == theirs


def plan_restore(backup: Backup, *, manifests_dir: str, state_dir: str, force: bool = False) -> RestorePlan:
    """What a restore of `backup` would change; BackupError when a version of the backup clashes with a stored
    version of the same number but another configuration (unless `force`; the live version: always)."""
    wanted = backup.manifests
    for rel in wanted:
        target = os.path.join(manifests_dir, rel)
        if os.path.isdir(target) and not os.path.islink(target):
            raise BackupError(f"{target} is a directory where the backup has a file; nothing was changed")
    write: list[str] = []
    unchanged: list[str] = []
    for rel, member in sorted(wanted.items()):
        (unchanged if _sha256_of(os.path.join(manifests_dir, rel)) == member.sha256 else write).append(rel)
    delete = sorted(set(manifest_files(manifests_dir)) - set(wanted))
    here = set(stored_numbers(state_dir))
    live = live_number(state_dir)
    new, same, clashing = [], [], []
    for number in backup.versions:
        if number not in here:
            new.append(number)
        elif _same_configuration(backup, state_dir, number):
            same.append(number)
        else:
            clashing.append(number)
    if live in clashing:
        raise BackupError(f"version {live} is live in {state_dir} and differs from the backup's version {live}: a "
                          f"restore never replaces the live version (restore into another --state-dir, or apply "
                          f"once, which makes another version live, then restore with --force); nothing was changed")
    if clashing and not force:
        raise BackupError(f"version{'s' if len(clashing) > 1 else ''} {', '.join(map(str, clashing))} of the backup "
                          f"differ{'s' if len(clashing) == 1 else ''} from the stored version{'s' if len(clashing) > 1 else ''} "
                          f"of the same number in {state_dir}; give --force to replace "
                          f"{'them' if len(clashing) > 1 else 'it'} (a safety backup of the history is taken first); "
                          f"nothing was changed")
    return RestorePlan(backup=backup, manifests_dir=manifests_dir, state_dir=state_dir, write=tuple(write),
                       unchanged=tuple(unchanged), delete=tuple(delete), new_versions=tuple(new),
                       same_versions=tuple(same), replace_versions=tuple(clashing), live=live,
                       untouched_versions=tuple(sorted(here - set(backup.versions))), tags=_tags_differ(backup, state_dir))


def _tags_differ(backup: Backup, state_dir: str) -> bool:
    theirs = next((m for m in backup.members if m.path == TAGS_MEMBER), None)
    return theirs is not None and _sha256_of(os.path.join(state_dir, HISTORY, TAGS)) != theirs.sha256


def restore(plan: RestorePlan) -> None:
    """Carry out `plan`: versions first (each extracted whole under a temporary name, then renamed into place),
    then the manifest files (each replaced atomically), then the manifest files the backup has not deleted.
    Every member is hashed again as it is extracted: an archive changed since it was verified is refused, with
    nothing written. A crash midway leaves each file old or new; running the same restore again finishes it."""
    os.makedirs(os.path.join(plan.state_dir, HISTORY), mode=0o700, exist_ok=True)
    staging = tempfile.mkdtemp(dir=os.path.join(plan.state_dir, HISTORY), prefix=".tmp-restore-")
    try:
        _extract(plan, staging)
        history = os.path.join(plan.state_dir, HISTORY)
        for number in (*plan.new_versions, *plan.replace_versions):
            label = f"{number:04d}"
            source, final = os.path.join(staging, HISTORY, label), os.path.join(history, label)
            make_private(source)
            if os.path.lexists(final):
                os.rename(final, os.path.join(staging, f"replaced-{label}"))
            os.rename(source, final)
        for rel in plan.write:
            source = os.path.join(staging, MANIFESTS, rel)
            target = os.path.join(plan.manifests_dir, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(source, "rb") as handle:
                data = handle.read()
                mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            write_atomically(target, data)
            os.chmod(target, mode)
        _merge_tags(plan, os.path.join(staging, *TAGS_MEMBER.split("/")))
        for rel in plan.delete:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(plan.manifests_dir, rel))
        for rel in (m.path[len(MANIFESTS) + 1:] for m in plan.backup.members
                    if m.kind == "dir" and m.path.startswith(MANIFESTS + "/")):
            os.makedirs(os.path.join(plan.manifests_dir, rel), exist_ok=True)  # an empty agents/ is part of a set
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_tags(plan: RestorePlan, extracted: str) -> None:
    """The backup's tags join the history's: each tag this history does not have, of a version it now holds. A tag
    it has keeps its version here (a restore adds to the history; it never moves what names a version)."""
    try:
        with open(extracted, encoding="utf-8") as handle:
            theirs = json.load(handle)
    except FileNotFoundError:
        return
    except ValueError as exc:
        raise BackupError(f"the backup's {TAGS_MEMBER} is not JSON ({exc}); its versions were restored, not its tags") from exc
    path = os.path.join(plan.state_dir, HISTORY, TAGS)
    try:
        with open(path, encoding="utf-8") as handle:
            ours = json.load(handle)
    except FileNotFoundError:
        ours = {}
    stored = set(stored_numbers(plan.state_dir))
    merged = dict(ours)
    for name, number in (theirs.items() if isinstance(theirs, dict) else ()):
        if name not in merged and isinstance(number, int) and number in stored:
            merged[name] = number
    if merged != ours:
        write_atomically(path, json.dumps(merged, indent=1, sort_keys=True) + "\n")


def _extract(plan: RestorePlan, staging: str) -> None:
    """The members the plan writes, below `staging`, each checked against the verified index as it is written."""
    expected = {m.path: m for m in plan.backup.members}
    wanted = {f"{MANIFESTS}/{rel}" for rel in plan.write}
    versions = {f"{HISTORY}/{n:04d}" for n in (*plan.new_versions, *plan.replace_versions)}
    path = plan.backup.path
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise _refuse(path, f"cannot read it ({exc.strerror or exc})") from exc
    seen = set()
    with handle, _read_errors_refused(path):
        for info, tar in _members(handle, path):
            member = expected.get(info.name)
            if info.name == INDEX:
                continue
            if member is None or _kind(info) != member.kind:
                raise _refuse(path, f"{info.name}: the archive changed since it was verified")
            seen.add(info.name)
            if not (info.name in wanted or info.name == TAGS_MEMBER or "/".join(info.name.split("/")[:2]) in versions):
                continue
            target = os.path.join(staging, *info.name.split("/"))
            if member.kind == "dir":
                os.makedirs(target, mode=0o700, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as sink:
                size, digest = _hash(tar, info, sink)
                sink.flush()
                os.fsync(sink.fileno())
            if (size, digest) != (member.size, member.sha256):
                raise _refuse(path, f"{info.name}: the archive changed since it was verified")
            os.chmod(target, (info.mode & 0o777) | 0o600 if info.name.startswith(MANIFESTS + "/") else 0o600)
    if seen != set(expected):
        raise _refuse(path, "the archive changed since it was verified")


# ---------------------------------------------------------------- automatic backups

def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1e6) % 1_000_000:06d}Z"


def project_of(state_dir: str, number: int | None) -> str | None:
    """The project name a version kept with its settings (None when unknown)."""
    if number is None:
        return None
    try:
        with open(os.path.join(state_dir, HISTORY, f"{number:04d}", SETTINGS), encoding="utf-8") as handle:
            project = json.load(handle).get("project")
    except (OSError, ValueError, AttributeError):
        return None
    return project if isinstance(project, str) else None


def auto_backup(state_dir: str, number: int, *, prefix: str = AUTO_PREFIX, version: str, keep: int = KEEP,
                now: float | None = None) -> Backup:
    """A backup of stored version `number` alone (its directory, and its manifests as the manifest set) in
    STATE/backups/, then the oldest of that kind deleted beyond `keep`. Restoring it gives that version's
    manifests back."""
    now = time.time() if now is None else now
    directory = os.path.join(state_dir, BACKUPS)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    version_dir = os.path.join(state_dir, HISTORY, f"{number:04d}")
    files = sources(manifests_dir=os.path.join(version_dir, MANIFESTS), state_dir=state_dir, versions=[number])
    made = write(os.path.join(directory, f"{prefix}{_stamp(now)}-{number:04d}.tar.gz"), files,
                 project=project_of(state_dir, number), current=number, version=version, now=now)
    prune(state_dir, prefix=prefix, keep=keep)
    return made


def full_backup_into_state(state_dir: str, manifests_dir: str, *, prefix: str = SAFETY_PREFIX, version: str,
                           keep: int = KEEP, now: float | None = None) -> Backup:
    """A backup of the manifest set and the whole history in STATE/backups/ (a restore's safety net), pruned
    like the automatic ones."""
    now = time.time() if now is None else now
    directory = os.path.join(state_dir, BACKUPS)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    current = live_number(state_dir)
    files = sources(manifests_dir=manifests_dir, state_dir=state_dir, versions=stored_numbers(state_dir))
    made = write(os.path.join(directory, f"{prefix}{_stamp(now)}.tar.gz"), files,
                 project=project_of(state_dir, current), current=current, version=version, now=now)
    prune(state_dir, prefix=prefix, keep=keep)
    return made


def prune(state_dir: str, *, prefix: str, keep: int = KEEP) -> list[str]:
    """Delete the oldest backups of one kind (`prefix`) in STATE/backups beyond `keep`; the paths deleted."""
    directory = os.path.join(state_dir, BACKUPS)
    names = sorted(n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(".tar.gz"))
    doomed = [os.path.join(directory, n) for n in names[:max(len(names) - keep, 0)]]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return doomed


def listed(state_dir: str, prefix: str = AUTO_PREFIX) -> list[str]:
    """The backups of one kind in STATE/backups, oldest first."""
    directory = os.path.join(state_dir, BACKUPS)
    if not os.path.isdir(directory):
        return []
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if n.startswith(prefix) and n.endswith(".tar.gz")]
