"""kill -9 at every step of a restore (and of an undo): the database at its path is
the old one or the new one, the old one stays recoverable, and running the same
command again finishes or rolls back."""
import json
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from stash_backup_plugin.offline.swap import CRASH_ENV, journal_path

from .conftest import run_restore
from .restore_fixtures import make_install

OLD = ["added-after-backup", "performer-0", "performer-1", "performer-2"]
OLD_WITHOUT_WAL = ["performer-0", "performer-1", "performer-2"]
NEW = ["performer-0", "performer-1", "performer-2"]
RESTORE_STEPS = ["staged", "blobs-batch", "journal-saved", "aside-created", "aside-db", "aside-wal", "aside-shm",
                 "moved-aside", "placed"]


def read_names(files: dict, scratch: Path) -> list:
    """Names in a database made of these files (suffix -> path), read from a private copy."""
    scratch.mkdir(parents=True, exist_ok=True)
    for old in scratch.iterdir():
        old.unlink()
    for suffix, path in files.items():
        shutil.copyfile(path, scratch / f"db{suffix}")
    connection = sqlite3.connect(scratch / "db")
    try:
        return sorted(r[0] for r in connection.execute("SELECT name FROM performers"))
    finally:
        connection.close()


def files_at(database: Path) -> dict:
    return {s: Path(f"{database}{s}") for s in ("", "-wal") if Path(f"{database}{s}").exists()}


def old_files(database: Path, root: Path) -> dict:
    """The pre-restore database and its -wal: in an aside folder once moved, else in place."""
    asides = sorted(root.glob("stash-restore-*"))
    found = {}
    for suffix in ("", "-wal"):
        moved = [a / f"{database.name}{suffix}" for a in asides if (a / f"{database.name}{suffix}").exists()]
        found[suffix] = moved[0] if moved else Path(f"{database}{suffix}")
    return found


@pytest.mark.parametrize("step", RESTORE_STEPS)
def test_kill_during_restore_then_rerun(tmp_path, step):
    install = make_install(tmp_path / "stash")
    db = install.database
    checksum = next(iter(install.images))  # one blob to extract, so every step is reached
    (install.blobs / checksum[:2] / checksum[2:4] / checksum).unlink()
    args = [str(install.backup_zip), "--config", str(install.config), "--yes"]
    crashed = run_restore(*args, env={CRASH_ENV: step})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    # At the moment of the crash: the database at its path is the old or the new one.
    assert read_names(files_at(db), tmp_path / "now") in (OLD, OLD_WITHOUT_WAL, NEW)
    # The old one, with the data that lived only in its -wal, is recoverable.
    assert read_names(old_files(db, install.root), tmp_path / "old") == OLD

    rerun = run_restore(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert not journal_path(db).exists()
    assert read_names(files_at(db), tmp_path / "after") == NEW
    assert not any(Path(f"{db}{s}").exists() for s in ("-wal", "-shm", "-journal"))
    kept = [a for a in install.root.glob("stash-restore-*") if (a / db.name).exists()]
    assert any(read_names(files_at(a / db.name), tmp_path / "kept") == OLD for a in kept)
    assert not [p for p in install.root.rglob("*stash-backup-tmp*")]
    assert (install.blobs / checksum[:2] / checksum[2:4] / checksum).read_bytes() == install.images[checksum]


@pytest.mark.parametrize("step", ["journal-saved", "aside-created", "aside-db", "moved-aside", "placed"])
def test_kill_during_undo_then_rerun(tmp_path, step):
    install = make_install(tmp_path / "stash")
    db = install.database
    assert run_restore(str(install.backup_zip), "--config", str(install.config), "--yes").returncode == 0
    crashed = run_restore("--undo", "--config", str(install.config), "--yes", env={CRASH_ENV: step})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert read_names(files_at(db), tmp_path / "now") in (OLD, NEW)
    rerun = run_restore("--undo", "--config", str(install.config), "--yes")
    assert rerun.returncode == 0, rerun.stderr
    assert read_names(files_at(db), tmp_path / "after") == OLD
    assert not journal_path(db).exists()


def test_a_database_changed_after_a_crash_is_not_rolled_back_blindly(tmp_path):
    install = make_install(tmp_path / "stash")
    db = install.database
    args = [str(install.backup_zip), "--config", str(install.config), "--yes"]
    assert run_restore(*args, env={CRASH_ENV: "aside-wal"}).returncode == -signal.SIGKILL
    with open(db, "ab") as handle:  # as if Stash had started and written meanwhile
        handle.write(b"\0" * 4096)
    rerun = run_restore(*args)
    assert rerun.returncode != 0 and "changed since" in rerun.stderr and "Traceback" not in rerun.stderr
    assert json.loads(journal_path(db).read_text())["kind"] == "restore"
