"""Backups on real files: a round trip gives every byte back, and an archive that is not sound (truncated, corrupt,
altered, foreign, or reaching outside its place) is refused with a clear message and nothing written."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from orchestrator.core.events import Note
from orchestrator.interfaces.cli import cli
from orchestrator.operations import backups
from orchestrator.state import backup as archive
from orchestrator.state.backup import BackupError
from orchestrator.state.history import History


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _version(state: Path, number: int, *, agent_text: str = "a", status: str = "applied") -> None:
    """A stored version as history writes one (the files restore and backup care about)."""
    root = state / "history" / f"{number:04d}"
    _write(root / "version.json", json.dumps({"number": number, "created": 1.0 + number, "status": status}))
    _write(root / "agents.json", json.dumps({"a": agent_text}))
    _write(root / "settings.json", json.dumps({"project": "desk"}))
    _write(root / "supervisord.conf", f"[supervisord]\n; version {number}\n")
    _write(root / "programs" / "a.conf", f"[program:a]\ncommand=run {agent_text}\n")
    _write(root / "manifests" / "orchestrator.yaml", "project: desk\n")
    _write(root / "manifests" / "agents" / "a.yaml", f"name: a\ncommand: [run, {agent_text}]\n")
    _write(root / "manifests" / ".orchestrator-origin.json", "{}\n")


def _live(state: Path, number: int) -> None:
    link = state / "current"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(f"history/{number:04d}")


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    """A manifests directory (every part, odd bytes included, and a file that is not part of the set) and a state
    directory with versions 1 and 2, 2 live."""
    manifests, state = tmp_path / "manifests", tmp_path / "state"
    _write(manifests / "orchestrator.yaml", "project: desk\n# naïve: 100% \"quoted\" ; # \t\n")
    _write(manifests / "agents" / "a.yaml", "name: a\ncommand: [run, a]\n")
    _write(manifests / "agents" / "b.yaml", "name: b\ncommand: [run, b]\r\n")
    _write(manifests / "templates" / "base.yaml", "restart: {policy: manual}\n")
    _write(manifests / "env" / "prod.yaml", "defaults: {env: {MODE: prod}}\n")
    _write(manifests / "README", "not part of the set\n")
    (manifests / "agents" / "b.yaml").chmod(0o640)
    _version(state, 1)
    _version(state, 2, agent_text="b")
    _live(state, 2)
    return manifests, state


def _tree(*roots: Path) -> dict[str, object]:
    """Every entry below `roots`: files by their bytes and mode, links by their target, directories by their mode."""
    found: dict[str, object] = {}
    for root in roots:
        if not root.exists():
            found[str(root)] = None
            continue
        for directory, dirs, names in os.walk(root):
            for name in dirs + names:
                path = Path(directory) / name
                if path.is_symlink():
                    found[str(path)] = ("link", os.readlink(path))
                elif path.is_dir():
                    found[str(path)] = ("dir", path.stat().st_mode)
                else:
                    found[str(path)] = ("file", path.read_bytes(), path.stat().st_mode)
    return found


def _backup(site: tuple[Path, Path], path: Path) -> archive.Backup:
    manifests, state = site
    return backups.backup(str(path), manifests_dir=str(manifests), state_dir=str(state))


def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path, "r:gz") as tar:
        return [(info, tar.extractfile(info).read() if info.isreg() else b"") for info in tar.getmembers()]


def _pack(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _restore(site: tuple[Path, Path], path: Path, *extra: str):
    manifests, state = site
    return CliRunner().invoke(cli, ["-m", str(manifests), "--state-dir", str(state), "restore", "--yes", *extra, str(path)])


def test_a_restore_gives_back_every_manifest_byte_and_every_version_into_an_empty_place(site, tmp_path):
    made = _backup(site, tmp_path / "b.tar.gz")
    assert made.versions == [1, 2] and made.current == 2 and made.project == "desk"
    assert sorted(made.manifests) == ["agents/a.yaml", "agents/b.yaml", "env/prod.yaml", "orchestrator.yaml",
                                      "templates/base.yaml"]
    elsewhere = (tmp_path / "elsewhere" / "manifests", tmp_path / "elsewhere" / "state")
    result = _restore(elsewhere, tmp_path / "b.tar.gz")
    assert result.exit_code == 0, result.output
    for rel in made.manifests:
        assert (elsewhere[0] / rel).read_bytes() == (site[0] / rel).read_bytes(), rel
    assert (elsewhere[0] / "agents" / "b.yaml").stat().st_mode & 0o777 == 0o640
    assert not (elsewhere[0] / "README").exists()
    for number in (1, 2):
        assert archive.version_files(str(elsewhere[1]), number) == archive.version_files(str(site[1]), number)
    assert not (elsewhere[1] / "current").exists()  # nothing was applied there: no version is live
    assert "orchestrator -m" in result.output and "apply" in result.output


def test_a_restore_puts_back_edited_and_deleted_manifests_and_deletes_those_the_backup_lacks(site, tmp_path):
    manifests, state = site
    _backup(site, tmp_path / "b.tar.gz")
    before = _tree(manifests)
    (manifests / "agents" / "a.yaml").write_text("name: a\ncommand: [changed]\n")
    (manifests / "env" / "prod.yaml").unlink()
    _write(manifests / "agents" / "c.yaml", "name: c\n")
    _version(state, 3, agent_text="c")          # a newer version here, made after the backup
    _live(state, 3)
    result = _restore(site, tmp_path / "b.tar.gz")
    assert result.exit_code == 0, result.output
    assert _tree(manifests) == before
    assert archive.stored_numbers(str(state)) == [1, 2, 3] and archive.live_number(str(state)) == 3
    safety = archive.listed(str(state), archive.SAFETY_PREFIX)
    assert len(safety) == 1 and "pre-restore" in result.output
    kept = archive.verify(safety[0])            # what the restore overwrote is itself a sound backup
    assert "agents/c.yaml" in kept.manifests and kept.versions == [1, 2, 3]
    again = _restore(site, tmp_path / "b.tar.gz")
    assert again.exit_code == 0 and "Nothing to restore" in again.output


def test_the_backup_file_is_never_overwritten_without_force_and_no_temporary_file_stays(site, tmp_path):
    path = tmp_path / "b.tar.gz"
    path.write_bytes(b"precious")
    with pytest.raises(BackupError, match="exists; .*--force"):
        _backup(site, path)
    assert path.read_bytes() == b"precious"
    made = backups.backup(str(path), manifests_dir=str(site[0]), state_dir=str(site[1]), force=True)
    assert archive.verify(str(path)).members == made.members
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_the_backup_command_prints_what_it_wrote_and_json_for_scripts(site, tmp_path):
    manifests, state = site
    base = ["-m", str(manifests), "--state-dir", str(state), "backup"]
    text = CliRunner().invoke(cli, [*base, str(tmp_path / "one.tar.gz")])
    assert text.exit_code == 0, text.output
    assert "5 manifest files, 2 versions (1-2), live: 2" in text.output
    data = CliRunner().invoke(cli, [*base, "--output", "json", str(tmp_path / "two.tar.gz")])
    summary = json.loads(data.stdout)
    assert summary["versions"] == [1, 2] and summary["current"] == 2 and summary["manifest_files"] == 5
    assert summary["archive_bytes"] == (tmp_path / "two.tar.gz").stat().st_size
    again = CliRunner().invoke(cli, [*base, str(tmp_path / "one.tar.gz")])
    assert again.exit_code == 1 and "exists" in again.stderr


def _refused(site: tuple[Path, Path], path: Path, expected: str) -> None:
    """Restoring `path` exits 1 naming `expected`, and changes nothing of the manifests nor of the state."""
    before = _tree(*site)
    result = _restore(site, path)
    assert result.exit_code == 1, result.output
    assert expected in result.stderr and "nothing was changed" in result.stderr, result.stderr
    assert _tree(*site) == before


@pytest.mark.parametrize("fraction", [0.0005, 0.1, 0.5, 0.9, 0.999])
def test_a_truncated_archive_is_refused_and_nothing_is_written(site, tmp_path, fraction):
    data = (_backup(site, tmp_path / "b.tar.gz"), (tmp_path / "b.tar.gz").read_bytes())[1]
    _write(site[0] / "agents" / "a.yaml", "name: a\ncommand: [edited]\n")  # a restore would have something to do
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[:max(int(len(data) * fraction), 3)])
    _refused(site, cut, "truncated")


def test_an_archive_cut_just_before_its_gzip_trailer_is_refused(site, tmp_path):
    """The tar members are all there; only the gzip stream's checksum and length are missing."""
    data = (_backup(site, tmp_path / "b.tar.gz"), (tmp_path / "b.tar.gz").read_bytes())[1]
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[:-8])
    _refused(site, cut, "truncated")


def test_a_flipped_byte_in_the_compressed_stream_is_refused(site, tmp_path):
    data = bytearray((_backup(site, tmp_path / "b.tar.gz"), (tmp_path / "b.tar.gz").read_bytes())[1])
    data[len(data) // 2] ^= 0x01
    flipped = tmp_path / "flipped.tar.gz"
    flipped.write_bytes(bytes(data))
    _refused(site, flipped, "corrupt")


def test_a_member_altered_after_the_backup_was_made_is_refused_by_its_hash(site, tmp_path):
    _backup(site, tmp_path / "b.tar.gz")
    members = _members(tmp_path / "b.tar.gz")
    altered = [(i, d.replace(b"run, a", b"run, A") if i.name == "manifests/agents/a.yaml" else d) for i, d in members]
    _refused(site, _pack(tmp_path / "altered.tar.gz", altered), "manifests/agents/a.yaml does not match its sha256")
    longer = [(i, d + b"#" if i.name == "manifests/agents/a.yaml" else d) for i, d in members]
    _refused(site, _pack(tmp_path / "longer.tar.gz", longer), "manifests/agents/a.yaml has 27 bytes where BACKUP.json says 26")


def test_a_member_missing_from_the_archive_or_not_listed_in_its_index_is_refused(site, tmp_path):
    _backup(site, tmp_path / "b.tar.gz")
    members = _members(tmp_path / "b.tar.gz")
    missing = [(i, d) for i, d in members if i.name != "history/0001/agents.json"]
    _refused(site, _pack(tmp_path / "missing.tar.gz", missing), "history/0001/agents.json is listed in BACKUP.json but missing")
    extra = tarfile.TarInfo("manifests/agents/z.yaml")
    _refused(site, _pack(tmp_path / "extra.tar.gz", [(extra, b"name: z\n"), *members]),
             "manifests/agents/z.yaml is in the archive but not listed in BACKUP.json")


@pytest.mark.parametrize(("name", "why"), [
    ("manifests/agents/../../../../escaped.yaml", "a path with '..'"),
    ("../escaped.yaml", "a path with '..'"),
    ("/tmp/escaped.yaml", "an absolute path"),
    ("history/0001/../../../escaped", "a path with '..'"),
    ("etc/passwd", "a path outside what a backup holds"),
    ("manifests/agents//a.yaml", "an empty or '.' component"),
])
def test_a_member_whose_path_leaves_its_place_is_refused(site, tmp_path, name, why):
    _backup(site, tmp_path / "b.tar.gz")
    hostile = tarfile.TarInfo(name)
    _refused(site, _pack(tmp_path / "hostile.tar.gz", [(hostile, b"owned\n"), *_members(tmp_path / "b.tar.gz")]), why)
    assert not (tmp_path / "escaped.yaml").exists() and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_a_link_is_refused_wherever_it_points(site, tmp_path, kind):
    _backup(site, tmp_path / "b.tar.gz")
    link = tarfile.TarInfo("manifests/agents/a.yaml")
    link.type, link.linkname = kind, "../../../../../etc/passwd"
    members = [(i, d) for i, d in _members(tmp_path / "b.tar.gz") if i.name != "manifests/agents/a.yaml"]
    _refused(site, _pack(tmp_path / "link.tar.gz", [(link, b""), *members]), "a link (manifests/agents/a.yaml -> ../../../../../etc/passwd)")


def test_a_device_file_is_refused(site, tmp_path):
    _backup(site, tmp_path / "b.tar.gz")
    device = tarfile.TarInfo("manifests/agents/null.yaml")
    device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
    _refused(site, _pack(tmp_path / "device.tar.gz", [(device, b""), *_members(tmp_path / "b.tar.gz")]), "a device file")


def test_a_foreign_tarball_a_non_gzip_file_and_a_newer_format_are_refused(site, tmp_path):
    foreign = tarfile.TarInfo("manifests/orchestrator.yaml")
    _refused(site, _pack(tmp_path / "foreign.tar.gz", [(foreign, b"project: other\n")]), "not an orchestrator backup (it has no BACKUP.json)")
    index = tarfile.TarInfo("BACKUP.json")
    _refused(site, _pack(tmp_path / "other.tar.gz", [(index, b'{"format": "something-else"}')]), "not an orchestrator backup")
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        tar.addfile(tarfile.TarInfo("x"), io.BytesIO(b""))
    _refused(site, plain, "not an orchestrator backup (not a gzip file)")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    _refused(site, text, "not a gzip file")
    zipped_text = tmp_path / "notes.gz"
    zipped_text.write_bytes(gzip.compress(b"hello\n" * 200))
    _refused(site, zipped_text, "no tar archive inside the gzip")
    _backup(site, tmp_path / "b.tar.gz")
    newer = [(i, d.replace(b'"format_version": 1', b'"format_version": 2') if i.name == "BACKUP.json" else d)
             for i, d in _members(tmp_path / "b.tar.gz")]
    _refused(site, _pack(tmp_path / "newer.tar.gz", newer), "made by a newer orchestrator")
    _refused(site, tmp_path / "absent.tar.gz", "cannot read it (No such file or directory)")


def test_a_version_that_clashes_with_a_stored_one_is_refused_unless_forced_and_the_live_one_always(site, tmp_path):
    manifests, state = site
    _backup(site, tmp_path / "b.tar.gz")
    _version(state, 1, agent_text="other")  # version 1 here is now another configuration than the backup's
    _refused(site, tmp_path / "b.tar.gz", "version 1 of the backup differs from the stored version of the same number")
    result = _restore(site, tmp_path / "b.tar.gz", "--force")
    assert result.exit_code == 0, result.output
    assert "replace version 1" in result.output
    assert (state / "history" / "0001" / "programs" / "a.conf").read_text() == "[program:a]\ncommand=run a\n"
    kept = archive.verify(archive.listed(str(state), archive.SAFETY_PREFIX)[-1])
    assert kept.version_files(1)["programs/a.conf"] != archive.version_files(str(state), 1)["programs/a.conf"]

    _version(state, 2, agent_text="live and different")  # the live version
    before = _tree(*site)
    forced = _restore(site, tmp_path / "b.tar.gz", "--force")
    assert forced.exit_code == 1 and "never replaces the live version" in forced.stderr
    assert _tree(*site) == before


def test_a_stored_version_whose_only_difference_is_its_metadata_is_kept_as_it_is(site, tmp_path):
    """A version's status and notes change after it is written (applying -> applied): not a clash."""
    manifests, state = site
    _backup(site, tmp_path / "b.tar.gz")
    meta = state / "history" / "0001" / "version.json"
    meta.write_text(json.dumps({"number": 1, "created": 2.0, "status": "failed", "tag": "kept"}))
    result = _restore(site, tmp_path / "b.tar.gz")
    assert result.exit_code == 0, result.output
    assert "Nothing to restore" in result.output and "tag" in meta.read_text()


def test_the_automatic_backups_keep_the_last_ten_and_each_restores_its_version(site, tmp_path):
    manifests, state = site
    made = [archive.auto_backup(str(state), 1 + n % 2, version="test", now=1_800_000_000.0 + n) for n in range(12)]
    kept = archive.listed(str(state))
    assert kept == [m.path for m in made[2:]]
    assert all(not os.path.exists(m.path) for m in made[:2])
    last = archive.verify(kept[-1])
    assert last.versions == [2] and last.current == 2 and last.project == "desk"
    assert sorted(last.manifests) == ["agents/a.yaml", "orchestrator.yaml"]  # the version's manifests, not its origin note
    fresh = (tmp_path / "fresh" / "manifests", tmp_path / "fresh" / "state")
    assert _restore(fresh, Path(kept[-1])).exit_code == 0
    assert (fresh[0] / "agents" / "a.yaml").read_bytes() == (state / "history" / "0002" / "manifests" / "agents" / "a.yaml").read_bytes()


def test_a_failed_automatic_backup_is_a_note_and_never_an_error(site):
    manifests, state = site
    (state / "backups").write_text("a file where the directory should be")
    history = History(str(state))
    notes: list[object] = []
    live = SimpleNamespace(number=2)  # what before_record reads of the live version
    backups.before_record(history, live, emit=notes.append)  # type: ignore[arg-type]
    assert len(notes) == 1 and isinstance(notes[0], Note)
    assert "automatic backup of version 2" in notes[0].text and "goes on" in notes[0].text



@pytest.mark.parametrize(("name", "directory", "why"), [
    ("history/0007", False, "history/0007 must be a directory"),
    ("manifests/agents", False, "manifests/agents must be a directory"),
    ("manifests/orchestrator.yaml", True, "manifests/orchestrator.yaml must be a file"),
    ("history/00007/version.json", False, "a path outside what a backup holds"),
])
def test_a_member_of_the_wrong_kind_for_its_place_is_refused(site, tmp_path, name, directory, why):
    _backup(site, tmp_path / "b.tar.gz")
    odd = tarfile.TarInfo(name)
    odd.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    members = [(i, d) for i, d in _members(tmp_path / "b.tar.gz") if i.name != name]
    _refused(site, _pack(tmp_path / "odd.tar.gz", [(odd, b"x"), *members]), why)


def test_a_manifest_directory_linking_back_to_itself_is_backed_up_once_and_not_forever(site, tmp_path):
    manifests, _state = site
    (manifests / "templates" / "loop").symlink_to(manifests / "templates")
    made = _backup(site, tmp_path / "b.tar.gz")
    assert "templates/base.yaml" in made.manifests and "templates/loop/base.yaml" not in made.manifests


def test_the_historys_tags_travel_with_it_and_join_the_tags_a_restore_finds_without_moving_them(site, tmp_path):
    """Tags name versions (`orchestrator tag`, kept by retention): a restore brings them back; a tag the history
    already has keeps the version it names here."""
    manifests, state = site
    _write(state / "history" / "tags.json", json.dumps({"stable": 1, "friday": 2}))
    made = _backup(site, tmp_path / "b.tar.gz")
    assert made.versions == [1, 2]
    elsewhere = (tmp_path / "elsewhere" / "manifests", tmp_path / "elsewhere" / "state")
    result = _restore(elsewhere, tmp_path / "b.tar.gz")
    assert result.exit_code == 0, result.output
    assert History(str(elsewhere[1])).tags() == {"stable": 1, "friday": 2}
    # into a history that names `stable` otherwise: that one stays, the missing one joins
    (state / "history" / "tags.json").write_text(json.dumps({"stable": 2}))
    result = _restore(site, tmp_path / "b.tar.gz", "--force")
    assert result.exit_code == 0, result.output
    assert History(str(state)).tags() == {"stable": 2, "friday": 2}


def test_a_tags_member_that_is_not_a_file_is_refused(site, tmp_path):
    made = _backup(site, tmp_path / "b.tar.gz")
    members = _members(Path(made.path))
    directory = tarfile.TarInfo("history/tags.json")
    directory.type = tarfile.DIRTYPE
    _pack(tmp_path / "bad.tar.gz", [*members, (directory, b"")])
    before = _tree(*site)
    result = _restore(site, tmp_path / "bad.tar.gz")
    assert result.exit_code == 1 and "tags.json" in result.output, result.output
    assert _tree(*site) == before
