"""The local archive: atomic adds, manifest, lock, cleanup of a killed run's temps."""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stash_backup_plugin.core.archive import Archive, Entry
from stash_backup_plugin.core.atomic import RUN_LIMIT_SECONDS, scratch_folder, temp_path_in
from stash_backup_plugin.core.errors import StorageError
from stash_backup_plugin.core.naming import TEMP_MARKER


def entry(name="stash-go.sqlite.75.20261126_180102", created="2026-11-26T18:01:02", ok=True):
    return Entry(
        file=name,
        size=3,
        sha256="a" * 64,
        schema_version=75,
        created=created,
        kind="sqlite",
        verified_ok=ok,
        verified_at="x" if ok else "",
    )


def staged(archive, content=b"abc"):
    temp = temp_path_in(archive.folder, "x")
    temp.write_bytes(content)
    return temp


def test_add_moves_the_temp_file_into_place_and_records_it(tmp_path):
    archive = Archive(tmp_path)
    with archive.locked():
        archive.add(staged(archive), entry())
    assert (tmp_path / "stash-go.sqlite.75.20261126_180102").read_bytes() == b"abc"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["entries"][0]["file"] == "stash-go.sqlite.75.20261126_180102"
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_add_never_overwrites_a_backup_of_the_same_second(tmp_path):
    archive = Archive(tmp_path)
    with archive.locked():
        archive.add(staged(archive), entry())
        second = archive.add(staged(archive, b"other"), entry())
    assert (tmp_path / "stash-go.sqlite.75.20261126_180102").read_bytes() == b"abc"
    assert second.file == "stash-go.sqlite.75.20261126_180102-2"
    assert (tmp_path / second.file).read_bytes() == b"other"
    assert len(archive.entries()) == 2


def test_entries_newest_first_and_newest_verified(tmp_path):
    archive = Archive(tmp_path)
    with archive.locked():
        archive.add(staged(archive), entry("a.1.20260101_000000", "2026-01-01T00:00:00"))
        archive.add(staged(archive), entry("a.1.20260301_000000", "2026-03-01T00:00:00", ok=False))
        archive.add(staged(archive), entry("a.1.20260201_000000", "2026-02-01T00:00:00"))
    assert [e.file for e in archive.entries()] == ["a.1.20260301_000000", "a.1.20260201_000000", "a.1.20260101_000000"]
    assert archive.newest_verified().file == "a.1.20260201_000000"


def test_remove_forgets_then_deletes(tmp_path):
    archive = Archive(tmp_path)
    with archive.locked():
        archive.add(staged(archive), entry())
        archive.remove(archive.entries()[0])
    assert archive.entries() == [] and not (tmp_path / entry().file).exists()


REPO = Path(__file__).resolve().parents[2]
# A run that makes a temp file and a scratch folder (as `verify PATH` and a restore
# dry run do, without the archive's lock), says where, and works on until killed.
MAKES_TEMPS = (
    "import sys, time; from pathlib import Path\n"
    "from stash_backup_plugin.core.atomic import scratch_folder, temp_path_in\n"
    "folder = Path(sys.argv[1])\n"
    "temp = temp_path_in(folder, 'stash-go.sqlite.75.20261126_180102.zip')\n"
    "with scratch_folder(folder) as scratch:\n"
    "    (scratch / 'stash-go.sqlite').write_bytes(b'extracted')\n"
    "    print(temp, scratch, flush=True)\n"
    "    time.sleep(120)\n"
)


@contextlib.contextmanager
def run_making_temps(folder):
    """Yield (process, its temp file, its scratch folder); kill -9 it at the end."""
    process = subprocess.Popen(
        [sys.executable, "-c", MAKES_TEMPS, str(folder)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        temp, scratch = process.stdout.readline().split()
        yield process, Path(temp), Path(scratch)
    finally:
        process.kill()
        process.wait()


def test_temp_files_of_a_killed_run_are_removed_by_the_next_run(tmp_path):
    archive = Archive(tmp_path)
    with run_making_temps(tmp_path) as (_, temp, scratch):
        pass  # killed here, as kill -9 would
    (tmp_path / "keep-me.txt").write_text("user file")
    with archive.locked():
        pass
    assert not temp.exists() and not scratch.exists() and (tmp_path / "keep-me.txt").exists()


def test_a_live_runs_temps_survive_another_run_taking_the_lock(tmp_path):
    """`verify PATH` or a restore dry run works in the archive without its lock: a
    prune at that moment must not pull its scratch copy away."""
    archive = Archive(tmp_path)
    with run_making_temps(tmp_path) as (process, temp, scratch):
        with archive.locked():
            pass
        assert process.poll() is None
        assert temp.exists() and (scratch / "stash-go.sqlite").read_bytes() == b"extracted"


def test_temps_whose_maker_cannot_be_asked_are_removed_only_after_a_day(tmp_path):
    """Another host on a shared folder, another container, an older version's name:
    the PID means nothing here, so only age tells."""
    foreign = tmp_path / f".stash-go.sqlite.75.20261126_180102.zip{TEMP_MARKER}1.00000000-abc"
    legacy = tmp_path / f".scratch{TEMP_MARKER}xyz"
    foreign.write_bytes(b"partial")
    legacy.mkdir()
    (legacy / "stash-go.sqlite").write_bytes(b"extracted")
    archive = Archive(tmp_path)
    with archive.locked():
        pass
    assert foreign.exists() and legacy.exists()
    day_and_a_bit = time.time() - RUN_LIMIT_SECONDS - 60
    for path in (foreign, legacy, legacy / "stash-go.sqlite"):
        os.utime(path, (day_and_a_bit, day_and_a_bit))
    with archive.locked():
        pass
    assert not foreign.exists() and not legacy.exists()


STASH_USER = (1234, 1234)  # a uid/gid that is not ours, as a Docker PUID or a systemd User= is


def owned_by_others(root):
    """Paths under root (root included) whose owner is not STASH_USER."""
    return [p for p in [root, *root.rglob("*")] if (os.lstat(p).st_uid, os.lstat(p).st_gid) != STASH_USER]


def test_what_a_root_run_creates_in_the_archive_takes_the_folders_owner(tmp_path):
    assert os.geteuid() == 0, "this test gives files away with chown: run the tests as root"
    home = tmp_path / "stash-home"
    home.mkdir()
    os.chown(home, *STASH_USER)
    archive = Archive(home / "backups" / "archive")  # two folders to make
    with archive.locked():
        archive.add(staged(archive), entry())
        with scratch_folder(archive.folder) as scratch:
            assert (os.stat(scratch).st_uid, os.stat(scratch).st_gid) == STASH_USER
    assert owned_by_others(home) == []
    assert {p.name for p in archive.folder.iterdir()} == {".stash-backup.lock", "manifest.json", entry().file}


def test_unregistered_backup_files_are_found(tmp_path):
    (tmp_path / "stash-go.sqlite.75.20261126_180102").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in Archive(tmp_path).unregistered_files()] == ["stash-go.sqlite.75.20261126_180102"]


def test_second_run_at_once_is_refused(tmp_path):
    archive = Archive(tmp_path)
    with archive.locked():
        import subprocess
        import sys

        code = (
            "import sys; from pathlib import Path; from stash_backup_plugin.core.archive import Archive\n"
            "try:\n    Archive(Path(sys.argv[1])).locked().__enter__()\nexcept Exception as e:\n    print(e); sys.exit(3)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=str(REPO)
        )
    assert result.returncode == 3 and "another stash-backup run" in result.stdout


def test_damaged_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StorageError, match="damaged"):
        Archive(tmp_path).entries()


def test_unwritable_folder_is_a_storage_error(tmp_path):
    if os.geteuid() == 0:
        blocked = tmp_path / "file-not-folder"
        blocked.write_text("x")
        target = blocked / "archive"
    else:
        target = tmp_path / "ro" / "archive"
        (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(StorageError, match="cannot use the archive folder"):
        with Archive(target).locked():
            pass


class Recorder:
    """A Reporter that keeps what it was told, by level."""

    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        if level in ("info", "warning", "error"):
            return lambda message: self.lines.append((level, message))
        if level == "progress":
            return lambda *args: None
        raise AttributeError(level)


def test_retention_keeps_a_days_good_backup_and_leaves_the_failed_one_apart(tmp_path):
    """Issue 8, item 1: with keep-daily 7, a failed backup at 20:00 must not stand in
    for the good one of 03:00 the same day."""
    from stash_backup_plugin.jobs.retention import apply_retention
    from stash_backup_plugin.core.retention import Policy

    archive = Archive(tmp_path)
    stamps = [
        ("a.1.20261124_090000", "2026-11-24T09:00:00", True),
        ("a.1.20261123_200000", "2026-11-23T20:00:00", False),
        ("a.1.20261123_030000", "2026-11-23T03:00:00", True),
        ("a.1.20261122_090000", "2026-11-22T09:00:00", True),
    ]
    with archive.locked():
        for name, created, ok in stamps:
            archive.add(staged(archive), entry(name, created, ok))
    report = Recorder()
    decisions = apply_retention(archive, Policy(daily=7), dry_run=False, report=report).decisions
    assert sorted(e.file for e in archive.entries()) == sorted(name for name, _, _ in stamps)
    assert all((tmp_path / name).exists() for name, _, _ in stamps)
    assert [d.item.file for d in decisions if d.failed] == ["a.1.20261123_200000"]
    assert (
        "warning",
        "failed a.1.20261123_200000: failed verification (no detail); not counted by any rule and "
        "not removed: re-verify it, or delete it yourself",
    ) in report.lines
    assert report.lines[-1] == ("info", "Retention (keep-daily 7): kept 3, removed 0, left 1 that failed verification")


def test_a_damaged_manifest_entry_is_one_line_and_the_rest_still_lists_and_verifies(tmp_path):
    """`"created": null`, a size that is text: each names its entry in one line; the
    backups still list and verify (a stored backup's record is the truth), and verify
    writes good entries in the damaged ones' place."""
    from tests.support.harness import run_cli
    from tests.unit.test_stored import Library, names
    from stash_backup_plugin.core.store import Store

    lib, store = Library(tmp_path / "stash"), Store(tmp_path / "archive")
    for night in (1, 2, 3):
        lib.backup(store, tmp_path, names(night))
    assert run_cli("verify", "--dest", str(store.folder)).returncode == 0
    manifest = json.loads((store.folder / "manifest.json").read_text())
    by_name = {e["file"]: e for e in manifest["entries"]}
    by_name[names(1)]["created"] = None
    by_name[names(2)]["drill"] = "booted"
    (store.folder / "manifest.json").write_text(json.dumps(manifest))
    listed = run_cli("list", "--dest", str(store.folder))
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    damaged = [line for line in listed.stderr.splitlines() if "damaged" in line]
    assert len(damaged) == 2 and names(1) in damaged[0] + damaged[1] and "created is null" in listed.stderr
    assert all(name in listed.stdout for name in (names(1), names(2), names(3)))  # their records are the truth
    verified = run_cli("verify", "--dest", str(store.folder))
    assert verified.returncode == 0 and "3 good, 0 bad" in verified.stdout + verified.stderr, verified.stderr
    again = run_cli("list", "--dest", str(store.folder))  # verify wrote good entries in their place
    assert again.returncode == 0 and "damaged" not in again.stderr, again.stderr


@pytest.mark.parametrize(
    "parent, folder, file",
    [(0o755, "0o700", "0o600"), (0o700, "0o700", "0o600"), (0o750, "0o750", "0o640"), (0o770, "0o770", "0o640")],
)
def test_what_we_make_is_private_unless_its_folder_is_shared_with_the_group_alone(tmp_path, parent, folder, file):
    """0600 and 0700 by default; a folder its owner shared with the group (and closed to
    others) shares what we make in it with that group, to read; others never."""
    from stash_backup_plugin.core.atomic import FilesLikeFolder, make_folders, write_bytes_atomic

    tmp_path.chmod(parent)
    make_folders(tmp_path / "a" / "b")
    write_bytes_atomic(tmp_path / "a" / "f", b"x")
    (tmp_path / "a" / "g").write_bytes(b"left by a killed run, readable by anyone")
    (tmp_path / "a" / "g").chmod(0o644)
    umask = os.umask(0o077)  # a strict umask must not take the group's read where it is given
    try:
        for name in ("e", "g"):
            with FilesLikeFolder(tmp_path / "a").create(name) as out:
                out.write(b"y")
    finally:
        os.umask(umask)
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == folder
    assert oct((tmp_path / "a" / "b").stat().st_mode & 0o777) == folder
    assert oct((tmp_path / "a" / "f").stat().st_mode & 0o777) == file
    assert [oct((tmp_path / "a" / n).stat().st_mode & 0o777) for n in ("e", "g")] == [file, file]
    assert (tmp_path / "a" / "g").read_bytes() == b"y"


def test_giving_a_file_away_tolerates_a_file_system_that_fixes_owners_and_nothing_else(tmp_path, monkeypatch):
    """The restore gave restored files their owner with a bare os.chown: on FAT or SMB
    (owners fixed by mount options) that raised EPERM and failed the restore."""
    import errno
    from stash_backup_plugin.core import atomic

    target = tmp_path / "restored.sqlite"
    target.write_bytes(b"x")
    monkeypatch.setattr(atomic.os, "geteuid", lambda: 0)
    monkeypatch.setattr(atomic.os, "lstat", lambda path: os.stat_result((0o100600, 0, 0, 1, 0, 0, 1, 0, 0, 0)))

    def refuse(code):
        def chown(*args, **kwargs):
            raise OSError(code, os.strerror(code))

        return chown

    monkeypatch.setattr(atomic.os, "chown", refuse(errno.EPERM))
    atomic.give_owner(target, 1000, 1000)
    monkeypatch.setattr(atomic.os, "chown", refuse(errno.EIO))
    with pytest.raises(OSError):
        atomic.give_owner(target, 1000, 1000)
