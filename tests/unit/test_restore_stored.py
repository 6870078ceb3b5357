"""stash-restore of a stored backup (the archive's store): by name or path, verified
before the swap (snapshot SHA-256, SQLite check, every blob present with its size and
its MD5 as it is copied), only missing or damaged blobs written, journaled, undoable,
and kill -9 at every step finished by a rerun."""

import json
import signal
from pathlib import Path

import pytest

from stash_backup_plugin.core import stored
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.core.store import Store
from stash_backup_plugin.core.faults import CRASH_ENV
from stash_backup_plugin.offline.swap import journal_path

from tests.support.harness import run_restore
from tests.support.stored import gzip_snapshot
from tests.support.restore_fixtures import make_install

OLD = ["added-after-backup", "performer-0", "performer-1", "performer-2"]
NEW = ["performer-0", "performer-1", "performer-2"]
NAME = "stash-go.sqlite.75.20261126_180103"
RESTORE_STEPS = ["staged", "blobs-staged", "blobs-batch", "settled", "journal-saved", "aside-db", "placed", "recorded"]


@pytest.fixture
def install(tmp_path):
    install = make_install(tmp_path / "stash")
    install.archive = tmp_path / "stash" / "stash-backup-archive"  # the plugin's default: beside config.yml
    stored.import_backup_file(Store(install.archive), install.backup_zip, NAME, "quick", Reporter(), source="test")
    return install


def blob(install, checksum) -> Path:
    return install.blobs / checksum[:2] / checksum[2:4] / checksum


def test_restore_by_name_writes_only_missing_or_damaged_blobs_and_undoes(install):
    missing, damaged, intact = sorted(install.images)
    blob(install, missing).unlink()
    blob(install, damaged).write_bytes(b"not that image")
    before_intact = blob(install, intact).stat().st_ino
    result = run_restore(NAME, "--config", str(install.config), "--yes")
    assert result.returncode == 0, result.stderr
    assert "copy" in result.stderr or "extract 2 blob(s)" in result.stderr
    assert install.names() == NEW
    assert all(blob(install, c).read_bytes() == data for c, data in install.images.items())
    assert blob(install, intact).stat().st_ino == before_intact  # an identical blob is left as it is
    kept = list(install.root.glob("stash-restore-*/damaged-blobs/**/" + damaged))
    assert kept and kept[0].read_bytes() == b"not that image"  # moved aside, never deleted
    undo = run_restore("--undo", "--config", str(install.config), "--yes")
    assert undo.returncode == 0, undo.stderr
    assert install.names() == OLD


@pytest.mark.parametrize("how", ["record", "archive/name", "archive option"])
def test_restore_by_path(install, how):
    args = {
        "record": [str(install.archive / "backups" / f"{NAME}.record")],
        "archive/name": [str(install.archive / NAME)],
        "archive option": [NAME + ".zip", "--archive", str(install.archive)],
    }[how]
    result = run_restore(*args, "--config", str(install.config), "--yes")
    assert result.returncode == 0, result.stderr
    assert install.names() == NEW


def test_list_shows_stored_backups_and_dry_run_changes_nothing(install):
    listing = run_restore("--list", "--json", "--config", str(install.config))
    rows = json.loads(listing.stdout)
    assert any(r["path"].endswith(f"backups/{NAME}.record") and r["blobs"] and r["verified"] == "yes" for r in rows)
    blob(install, sorted(install.images)[0]).unlink()
    before = {p: p.read_bytes() for p in install.root.rglob("*") if p.is_file()}
    dry = run_restore(NAME, "--config", str(install.config), "--dry-run")
    assert dry.returncode == 0 and "compressed database in the archive" in dry.stderr, dry.stderr
    assert {p: p.read_bytes() for p in install.root.rglob("*") if p.is_file()} == before


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda store, checksum: flip(store.blob_path(checksum)), "does not match its name"),
        (lambda store, checksum: store.blob_path(checksum).unlink(), "missing from the archive"),
        (lambda store, checksum: store.blob_path(checksum).write_bytes(b"short"), "bytes, the record says"),
        (lambda store, checksum: flip(store.page_list_path(NAME)), "damaged"),
        (lambda store, checksum: flip(next(store.folder.glob("packs/*/*.pack"))), "damaged"),
        (lambda store, checksum: next(store.folder.glob("packs/*/*.pack")).unlink(), "missing"),
    ],
)
def test_a_damaged_stored_backup_is_refused_before_the_swap(install, damage, message):
    checksum = sorted(install.images)[0]
    blob(install, checksum).unlink()  # so the restore must copy it from the archive
    damage(Store(install.archive), checksum)
    result = run_restore(NAME, "--config", str(install.config), "--yes")
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert install.names() == OLD and not list(install.root.glob("stash-restore-*/stash-go.sqlite"))
    assert not journal_path(install.database).exists()


def test_a_prune_waits_for_a_restore_reading_the_archive(install):
    from stash_backup_plugin.core.archive import Archive
    from stash_backup_plugin.core.errors import UsageError

    with Archive(install.archive).reading():
        with pytest.raises(UsageError, match="another stash-backup run"):
            with Archive(install.archive).locked():
                pass


@pytest.mark.parametrize("step", RESTORE_STEPS)
def test_kill_at_every_step_of_a_stored_restore(install, step):
    checksum = sorted(install.images)[0]
    blob(install, checksum).unlink()  # one blob to copy, so every step is reached
    args = [NAME, "--config", str(install.config), "--yes"]
    crashed = run_restore(*args, env={CRASH_ENV: step})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert install.names() in (OLD, NEW)
    rerun = run_restore(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert install.names() == NEW and not journal_path(install.database).exists()
    assert blob(install, checksum).read_bytes() == install.images[checksum]
    assert not [p for p in install.root.rglob("*stash-backup-tmp*")]


def test_restoring_a_stored_backups_snapshot_file_restores_that_backup(install):
    """`stash-restore <archive>/snapshots/<name>.pages`: the snapshot of a stored
    backup, restored as that backup (checked against its record, its images with it)."""
    snapshot = install.archive / "snapshots" / f"{NAME}.pages"
    result = run_restore(str(snapshot), "--config", str(install.config), "--yes")
    assert result.returncode == 0, result.stderr
    assert install.names() == NEW and f"restored {NAME}.record" in result.stderr, result.stderr
    Store(install.archive).forget(NAME)  # a snapshot no backup records any more: refused, with the command
    refused = run_restore(str(snapshot), "--config", str(install.config), "--yes")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "no backup in" in refused.stderr and "gzip -dc" not in refused.stderr, refused.stderr


def test_restoring_an_older_gzip_snapshot_file(install):
    """Archives made before page snapshots keep their gzip snapshots: restored as before."""
    gzip_snapshot(Store(install.archive), NAME)
    snapshot = install.archive / "snapshots" / f"{NAME}.gz"
    result = run_restore(str(snapshot), "--config", str(install.config), "--yes")
    assert result.returncode == 0, result.stderr
    assert install.names() == NEW
    Store(install.archive).forget(NAME)
    refused = run_restore(str(snapshot), "--config", str(install.config), "--yes")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert f"gzip -dc {snapshot} > {NAME}.sqlite && stash-restore {NAME}.sqlite" in refused.stderr, refused.stderr
