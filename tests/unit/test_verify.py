"""Verification of backup files: every kind of damage is caught by name."""

import contextlib
import stat
import zipfile

import pytest

from stash_backup_plugin.core.errors import VerificationError
from stash_backup_plugin.core.backup_zip import member_problem
from stash_backup_plugin.core.sqlite_check import FULL, NONE, check_database
from stash_backup_plugin.core.verify import verify_backup

from tests.support.stashlike import make_database, make_full_backup, vacuum_copy


@pytest.fixture
def backup(tmp_path):
    live = tmp_path / "live.sqlite"
    images = make_database(live, schema=75)
    return vacuum_copy(live, tmp_path / "stash-go.sqlite.75.20261126_180102"), images


def test_good_plain_backup(backup):
    path, images = backup
    report = verify_backup(path)
    assert (report.kind, report.schema_version) == ("sqlite", 75)
    assert report.blobs_not_included == set(images)  # filesystem blobs are not in a plain file


def test_good_full_backup(tmp_path, backup):
    path, images = backup
    full = make_full_backup(tmp_path / "b.zip", path, images)
    report = verify_backup(full, FULL)
    assert (report.kind, report.blob_count, report.blobs_not_included) == ("zip", 3, set())


def test_truncated_database_is_refused(backup):
    path, _ = backup
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VerificationError):
        verify_backup(path)


def test_damaged_page_fails_quick_check(backup):
    """One damaged page that ordinary reads get past: only quick_check can notice it."""
    import sqlite3

    path, _ = backup
    with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as connection:
        [root] = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'performers'").fetchone()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    header = (root - 1) * page_size
    assert data[header] == 0x0D  # a table leaf page
    data[header + 1 : header + 3] = (5).to_bytes(2, "big")  # its first free block "at" offset 5: inside the header
    path.write_bytes(bytes(data))
    assert check_database(path, NONE).schema_version == 75  # every table still reads
    with pytest.raises(VerificationError, match=f"(?s)failed PRAGMA quick_check: .*Page {root}: free space corruption"):
        verify_backup(path)


def test_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "x.sqlite.1.20260101_000000"
    path.write_bytes(b"hello world" * 100)
    with pytest.raises(VerificationError, match="not an SQLite database"):
        verify_backup(path)


def test_sqlite_but_not_stash_is_refused(tmp_path):
    import sqlite3

    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t(a)").connection.commit()
    with pytest.raises(VerificationError, match="not a Stash database"):
        check_database(path)


def test_dirty_migration_is_refused(tmp_path):
    path = tmp_path / "dirty.sqlite"
    make_database(path, wal=False, dirty=True)
    with pytest.raises(VerificationError, match="dirty"):
        check_database(path)


def test_reading_never_creates_side_files(backup):
    path, _ = backup
    before = sorted(p.name for p in path.parent.iterdir())
    verify_backup(path, FULL)
    assert sorted(p.name for p in path.parent.iterdir()) == before


def test_size_and_checksum_mismatch_against_manifest(backup):
    path, _ = backup
    with pytest.raises(VerificationError, match="manifest says 1"):
        verify_backup(path, expected_size=1)
    with pytest.raises(VerificationError, match="SHA-256"):
        verify_backup(path, expected_sha256="0" * 64)


def test_blob_whose_bytes_do_not_match_its_name(tmp_path, backup):
    path, images = backup
    checksum = next(iter(images))
    images[checksum] = b"tampered"
    with pytest.raises(VerificationError, match="does not match its name"):
        verify_backup(make_full_backup(tmp_path / "b.zip", path, images))


def test_missing_blob_in_zip_is_reported_and_required(tmp_path, backup):
    from stash_backup_plugin.core.verify import require_blobs

    path, images = backup
    lost = next(iter(images))
    images.pop(lost)
    report = verify_backup(make_full_backup(tmp_path / "b.zip", path, images))
    assert report.blobs_not_included == {lost}
    with pytest.raises(VerificationError, match="does not hold"):
        require_blobs(report)
    require_blobs(report, tolerated=1)  # missing on the server already when the backup was made


def test_corrupted_zip_entry_fails_crc(tmp_path, backup):
    path, images = backup
    full = tmp_path / "b.zip"
    with zipfile.ZipFile(full, "w", zipfile.ZIP_STORED) as archive:
        archive.write(path, "stash-go.sqlite")
        for checksum, data in images.items():
            archive.writestr(f"blobs/{checksum[:2]}/{checksum[2:4]}/{checksum}", data)
    raw = bytearray(full.read_bytes())
    spot = raw.find(next(iter(images.values()))[:20])
    raw[spot + 5] ^= 0xFF
    full.write_bytes(bytes(raw))
    with pytest.raises(VerificationError, match="damaged|CRC"):
        verify_backup(full)


@pytest.mark.parametrize(
    "name,problem",
    [
        ("/etc/passwd", "absolute"),
        ("../../evil", "climbs out"),
        ("blobs/../../x", "climbs out"),
        ("C:/windows/x", "absolute"),
        ("blobs\\aa\\x", "backslashes"),
    ],
)
def test_zip_slip_names_are_refused(tmp_path, backup, name, problem):
    path, images = backup
    with pytest.raises(VerificationError, match=problem):
        verify_backup(make_full_backup(tmp_path / "b.zip", path, images, extra={name: b"x"}))


def test_symlink_entry_is_refused():
    info = zipfile.ZipInfo("blobs/aa/bb/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert "symbolic link" in member_problem(info)
    plain = zipfile.ZipInfo("stash-go.sqlite")  # writestr leaves no type bits: not a link
    assert member_problem(plain) is None


def test_unexpected_entries_and_two_databases_are_refused(tmp_path, backup):
    path, images = backup
    with pytest.raises(VerificationError, match="unexpected entry"):
        verify_backup(make_full_backup(tmp_path / "a.zip", path, images, extra={"other/file": b"x"}))
    with pytest.raises(VerificationError, match="found 2"):
        verify_backup(make_full_backup(tmp_path / "b.zip", path, images, extra={"second.sqlite": b"x"}))


def test_streamed_blob_references_are_the_checks_own_sorted_once_each(tmp_path):
    """The one SQL query (streamed, sorted by SQLite) against the check's table-by-table
    gathering: every column with a foreign key to blobs, a checksum referred to from
    several places once, NULLs and blobs whose bytes are in the database left out."""
    import sqlite3

    from stash_backup_plugin.core.sqlite_check import (
        count_filesystem_blob_references,
        filesystem_blob_references,
    )

    database = tmp_path / "stash-go.sqlite"
    images = make_database(database, performers=40, wal=False)
    checksums = sorted(images)
    connection = sqlite3.connect(database)
    connection.executescript('''
        CREATE TABLE studios (id integer PRIMARY KEY, image_blob varchar(255) REFERENCES blobs(checksum));
        CREATE TABLE "odd ""name""" (id integer PRIMARY KEY, front varchar(255) REFERENCES blobs(checksum),
                                     back varchar(255) REFERENCES blobs(checksum), checksum text);
    ''')
    connection.executemany("INSERT INTO studios (image_blob) VALUES (?)", [(c,) for c in checksums[::3]] + [(None,)])
    connection.executemany(
        'INSERT INTO "odd ""name""" (front, back, checksum) VALUES (?, ?, ?)',
        [(c, checksums[-1], "not a reference") for c in checksums[5:9]] + [(None, "f" * 32, None)],
    )
    connection.execute("INSERT INTO blobs VALUES (?, NULL)", ("f" * 32,))
    connection.executemany("UPDATE blobs SET blob = x'00' WHERE checksum = ?", [(c,) for c in checksums[10:14]])
    connection.commit()
    connection.close()

    streamed = list(filesystem_blob_references(database))
    gathered = check_database(database).blobs_on_filesystem
    assert streamed == sorted(gathered) == sorted(set(checksums) - set(checksums[10:14]) | {"f" * 32})
    assert count_filesystem_blob_references(database) == len(streamed)
