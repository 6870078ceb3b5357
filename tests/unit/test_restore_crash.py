"""kill -9 at every step of a restore and of an undo. At the instant of the kill the
database path holds the old database or the new one, each with no side file or its
own; a Stash that starts then (a plain sqlite3 connection that writes) finds an intact
database and leaves the copy kept aside intact; running the same command again
finishes the interrupted operation (never the opposite one), says what the database
is now, and leaves no temp file anywhere, the system's temp folder included."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from stash_backup_plugin.core.faults import CRASH_ENV
from stash_backup_plugin.offline.swap import journal_path

from tests.support.harness import REPO, run_restore
from tests.support.restore_fixtures import add_performer_in_wal, make_install

OLD = ["added-after-backup", "performer-0", "performer-1", "performer-2"]
NEW = ["performer-0", "performer-1", "performer-2"]
RESTORED = sorted(NEW + ["added-after-restore"])  # the restored database after Stash used it
BY_STASH = "written-by-stash"
RESTORE_STEPS = [
    "staged",
    "blobs-staged",
    "blobs-batch",
    "settled",
    "journal-temp",
    "journal-saved",
    "aside-created",
    "aside-db",
    "placed",
    "record-temp",
    "recorded",
]
UNDO_STEPS = [
    "settled",
    "journal-temp",
    "journal-saved",
    "aside-created",
    "aside-db",
    "placed",
    "record-temp",
    "recorded",
]


def names_at(database: Path, scratch: Path) -> list:
    """Names in the database at this path *with the side files beside it*, read from a
    private copy; fails when they do not belong together (a foreign -wal reads as
    malformed, or as a mix), or when SQLite finds the result damaged."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for suffix in ("", "-wal", "-journal"):
        if Path(f"{database}{suffix}").exists():
            shutil.copyfile(f"{database}{suffix}", scratch / f"db{suffix}")
    connection = sqlite3.connect(scratch / "db")
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return sorted(r[0] for r in connection.execute("SELECT name FROM performers"))
    finally:
        connection.close()


def stash_starts_and_writes(database: Path) -> None:
    """What Stash does when it starts (a container restart policy, Restart=always)."""
    connection = sqlite3.connect(database)
    try:
        connection.execute("INSERT INTO performers (name) VALUES (?)", (BY_STASH,))
        connection.commit()
    finally:
        connection.close()


def stash_ran_and_was_killed(database: Path) -> None:
    """Stash opens the restored database in WAL mode, commits, and dies: data in the -wal."""
    connection = sqlite3.connect(database)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.close()
    add_performer_in_wal(database, "added-after-restore")


def kept_copies(root: Path, database: Path) -> list[Path]:
    return sorted(a / database.name for a in root.glob("stash-restore-*") if (a / database.name).exists())


def same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and os.stat(a).st_ino == os.stat(b).st_ino


def assert_nothing_left_behind(root: Path, system_temp: Path) -> None:
    assert not [p for p in root.rglob("*stash-backup-tmp*")]
    assert not list(system_temp.iterdir())
    assert not journal_path(root / "stash-go.sqlite").exists()
    assert not any(Path(f"{root / 'stash-go.sqlite'}{s}").exists() for s in ("-wal", "-journal"))


@pytest.fixture
def system_temp(tmp_path):
    folder = tmp_path / "system-temp"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("step", RESTORE_STEPS)
def test_kill_at_every_step_of_a_restore(tmp_path, system_temp, step):
    install = make_install(tmp_path / "stash")
    db, scratch = install.database, tmp_path / "read"
    checksum = next(iter(install.images))  # one blob to extract, so every step is reached
    (install.blobs / checksum[:2] / checksum[2:4] / checksum).unlink()
    args = [str(install.backup_zip), "--config", str(install.config), "--yes"]
    env = {"TMPDIR": str(system_temp)}
    crashed = run_restore(*args, env={CRASH_ENV: step, **env})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    at_kill = names_at(db, scratch)
    assert at_kill in (OLD, NEW)
    for copy in kept_copies(install.root, db):
        assert names_at(copy, scratch) == OLD
    stash_starts_and_writes(db)
    assert names_at(db, scratch) == sorted(at_kill + [BY_STASH])
    for copy in kept_copies(install.root, db):  # a hard link is the live file itself; anything else is untouched
        assert names_at(copy, scratch) == (sorted(OLD + [BY_STASH]) if same_file(copy, db) else OLD)

    rerun = run_restore(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "is now the restored backup" in rerun.stderr
    wrote_into_new = at_kill == NEW
    assert names_at(db, scratch) == (sorted(NEW + [BY_STASH]) if wrote_into_new else NEW)
    old_now = OLD if wrote_into_new else sorted(OLD + [BY_STASH])
    assert old_now in [names_at(copy, scratch) for copy in kept_copies(install.root, db)]
    assert_nothing_left_behind(install.root, system_temp)
    assert (install.blobs / checksum[:2] / checksum[2:4] / checksum).read_bytes() == install.images[checksum]


@pytest.mark.parametrize("step", UNDO_STEPS)
def test_kill_at_every_step_of_an_undo(tmp_path, system_temp, step):
    install = make_install(tmp_path / "stash")
    db, scratch = install.database, tmp_path / "read"
    assert run_restore(str(install.backup_zip), "--config", str(install.config), "--yes").returncode == 0
    stash_ran_and_was_killed(db)
    env = {"TMPDIR": str(system_temp)}
    crashed = run_restore("--undo", "--config", str(install.config), "--yes", env={CRASH_ENV: step, **env})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    at_kill = names_at(db, scratch)
    assert at_kill in (RESTORED, OLD)
    for copy in kept_copies(install.root, db):
        assert names_at(copy, scratch) in (OLD, RESTORED)
    stash_starts_and_writes(db)
    assert names_at(db, scratch) == sorted(at_kill + [BY_STASH])

    rerun = run_restore("--undo", "--config", str(install.config), "--yes", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "is now the database from" in rerun.stderr
    undone_before_the_write = at_kill == OLD
    # finished, never swapped back: the database from before the restore
    assert names_at(db, scratch) == (sorted(OLD + [BY_STASH]) if undone_before_the_write else OLD)
    restored_now = RESTORED if undone_before_the_write else sorted(RESTORED + [BY_STASH])
    assert restored_now in [names_at(copy, scratch) for copy in kept_copies(install.root, db)]
    assert_nothing_left_behind(install.root, system_temp)


def damage_header(install) -> dict:
    """A current database SQLite cannot open at all (its header is gone), with a -wal:
    Stash cannot open it either. Returns the bytes of its files."""
    data = bytearray(install.database.read_bytes())
    data[:100] = b"\xab" * 100
    install.database.write_bytes(bytes(data))
    return {s: Path(f"{install.database}{s}").read_bytes() for s in ("", "-wal", "-shm")}


@pytest.mark.parametrize("step", ["aside-db", "aside-wal", "aside-shm", "placed"])
def test_kill_while_a_damaged_database_moves_aside_with_its_side_files(tmp_path, step):
    install = make_install(tmp_path / "stash")
    before = damage_header(install)
    args = [str(install.backup_plain), "--config", str(install.config), "--yes"]
    assert run_restore(*args, env={CRASH_ENV: step}).returncode == -signal.SIGKILL
    rerun = run_restore(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert install.names() == NEW
    kept = kept_copies(install.root, install.database)
    assert len(kept) == 1
    assert {s: Path(f"{kept[0]}{s}").read_bytes() for s in before} == before  # every byte, side files included


def test_a_database_changed_after_a_crash_is_not_mixed_with_its_old_wal(tmp_path):
    install = make_install(tmp_path / "stash")
    damage_header(install)
    db = install.database
    args = [str(install.backup_plain), "--config", str(install.config), "--yes"]
    assert run_restore(*args, env={CRASH_ENV: "aside-wal"}).returncode == -signal.SIGKILL
    with open(db, "ab") as handle:  # as if something had written to it meanwhile
        handle.write(b"\0" * 4096)
    rerun = run_restore(*args)
    assert rerun.returncode != 0 and "changed since" in rerun.stderr and "Traceback" not in rerun.stderr
    assert json.loads(journal_path(db).read_text())["kind"] == "restore"


def test_without_hard_links_the_database_path_never_goes_missing(tmp_path):
    """FAT and some network shares have no hard links: the old database is copied aside,
    not moved (a Stash started while its path is empty creates a fresh, empty one)."""
    install = make_install(tmp_path / "stash")
    args = [str(install.backup_zip), "--config", str(install.config), "--yes"]
    no_links = (
        "import os, sys\n"
        "def refuse(*a, **k): raise PermissionError(1, 'Operation not permitted')\n"
        "os.link = refuse\n"
        "from stash_backup_plugin.offline.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), **{CRASH_ENV: "aside-db"})
    crashed = subprocess.run([sys.executable, "-c", no_links, *args], env=env, capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert names_at(install.database, tmp_path / "read") == OLD
    del env[CRASH_ENV]
    rerun = subprocess.run([sys.executable, "-c", no_links, *args], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert install.names() == NEW
    assert [names_at(c, tmp_path / "read") for c in kept_copies(install.root, install.database)] == [OLD]
    assert not [p for p in install.root.rglob("*stash-backup-tmp*")]
