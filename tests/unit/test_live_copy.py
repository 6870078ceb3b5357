"""`download` takes the database from Stash's live file where it is readable (jobs/
live_copy.py): SQLite's online backup under a real writer is consistent and changes
nothing; a file that is not the server's database, or a library that changes during
every copy, leaves the work to Stash's own backup. The real Stash is the e2e tests'."""

from __future__ import annotations

import sqlite3
import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stash_backup_plugin.core import library
from stash_backup_plugin.core.archive import Archive
from stash_backup_plugin.core.naming import TEMP_MARKER
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.core.sqlite_check import QUICK, copy_live, integrity_problems
from stash_backup_plugin.jobs import live_copy
from stash_backup_plugin.jobs.download import DownloadOptions, download_to_archive

from tests.support.stashlike import make_database, names_in
from tests.unit.test_check_live import Lines
from tests.unit.test_jobs import LocalStash

ACCOUNTS, TOTAL = 50, 50 * 1000
ROWS = 4000  # about 8 MiB of ledger: each copy takes a while

WRITER = textwrap.dedent(
    """
    import random, sqlite3, sys, time
    connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    connection.execute("PRAGMA wal_autocheckpoint=50")  # checkpoints while copies read
    random.seed(1)
    print("ready", flush=True)
    while True:
        connection.execute("BEGIN IMMEDIATE")
        one, other = random.sample(range({accounts}), 2)
        amount = random.randint(1, 50)
        connection.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, one))
        connection.execute("INSERT INTO ledger (note) VALUES (?)", ("x" * random.randint(10, 3000),))
        connection.execute(  # pages all over the file change, as Stash's edits do
            "UPDATE ledger SET note = ? WHERE id = ?", ("y" * random.randint(10, 3000), random.randint(1, {rows}))
        )
        connection.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, other))
        connection.execute("COMMIT")
    """
).format(accounts=ACCOUNTS, rows=ROWS)


def ledger_database(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
    connection.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, note TEXT)")
    connection.executemany("INSERT INTO accounts VALUES (?, 1000)", [(i,) for i in range(ACCOUNTS)])
    connection.executemany("INSERT INTO ledger (note) VALUES (?)", [("z" * 2000,) for _ in range(ROWS)])
    connection.commit()
    connection.close()


def test_copies_taken_while_a_writer_commits_and_checkpoints_are_each_one_committed_state(tmp_path):
    """Every transaction moves money between two accounts: a copy mixing two states
    would not add up. The writer checkpoints every 50 pages, so the copies overlap
    checkpoints (what open_unchanged's lock-free reader could tear)."""
    database = tmp_path / "live.sqlite"
    ledger_database(database)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(database)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        rows = []
        for index in range(25):
            copy = tmp_path / f"copy-{index}.sqlite"
            copy_live(database, copy)
            with sqlite3.connect(copy) as connection:
                assert integrity_problems(connection, QUICK) == ""
                assert connection.execute("SELECT sum(balance) FROM accounts").fetchone()[0] == TOTAL
                rows.append(connection.execute("SELECT count(*) FROM ledger").fetchone()[0])
            copy.unlink()
        assert writer.poll() is None, "the writer went on while copies were taken"
    finally:
        writer.kill()
        writer.wait()
    assert rows[-1] > rows[0] >= ROWS, rows  # the copies saw the writer's progress


def test_a_copy_changes_nothing_of_the_live_database_and_never_removes_its_wal(tmp_path):
    """A Stash killed mid-flight leaves committed data in its -wal and no connection
    open: ours is then the last to close, and a writable one would checkpoint and
    delete the -wal. A read-only one changes neither file."""
    database = tmp_path / "live.sqlite"
    ledger_database(database)
    killed = textwrap.dedent(
        """
        import os, signal, sqlite3, sys
        connection = sqlite3.connect(sys.argv[1], isolation_level=None)
        connection.execute("PRAGMA wal_autocheckpoint=0")
        connection.execute("INSERT INTO ledger (note) VALUES ('in the wal only')")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    subprocess.run([sys.executable, "-c", killed, str(database)])
    wal = Path(f"{database}-wal")
    before = (database.read_bytes(), wal.read_bytes())
    copy = tmp_path / "copy.sqlite"
    copy_live(database, copy)
    with sqlite3.connect(copy) as connection:
        assert connection.execute("SELECT note FROM ledger WHERE id > ?", (ROWS,)).fetchall() == [("in the wal only",)]
    assert (database.read_bytes(), wal.read_bytes()) == before


def test_a_database_that_cannot_be_read_with_a_lock_is_an_error_not_a_guess(tmp_path):
    database = tmp_path / "live.sqlite"
    ledger_database(database)
    (tmp_path / "live.sqlite-shm").unlink(missing_ok=True)
    database.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)  # a header, then nothing SQLite can read
    with pytest.raises(sqlite3.DatabaseError):
        copy_live(database, tmp_path / "copy.sqlite")


# --- the job ------------------------------------------------------------------------------


def test_on_stashs_host_the_database_comes_from_the_live_file_without_asking_for_a_backup(tmp_path):
    stash = LocalStash(tmp_path / "stash", blobs_storage="FILESYSTEM")
    archive = Archive(tmp_path / "archive")
    outcome = download_to_archive(stash, archive, DownloadOptions(), Reporter())
    assert outcome.entry.source == live_copy.SOURCE and outcome.entry.verified_ok
    assert stash.requests == [] and stash.fingerprints == 1  # a quiet library: asked once, after the copy
    assert outcome.entry.blob_count == len(stash.images)
    restored = tmp_path / "restored.sqlite"
    with open(restored, "wb") as out:
        archive.store.read_snapshot(archive.store.header(outcome.entry.file), out)
    assert names_in(restored) == names_in(stash.database)
    assert outcome.entry.file.startswith("stash-go.sqlite.85.")
    assert not [p for p in archive.folder.iterdir() if TEMP_MARKER in p.name]


def test_a_file_at_the_servers_path_that_is_another_database_is_named_and_stashs_backup_used(tmp_path):
    """A stale database left at the same path (Stash moved into Docker): backing it up
    every night would look fine and lose every later edit."""
    stash = LocalStash(tmp_path / "stash", blobs_storage="FILESYSTEM")
    stash.serves = tmp_path / "the-real-one.sqlite"
    make_database(stash.serves, schema=85, performers=4)
    report = Lines()
    outcome = download_to_archive(stash, Archive(tmp_path / "archive"), DownloadOptions(), report)
    assert outcome.entry.source == "filesystem" and stash.requests == [(True, False)]
    assert stash.fingerprints == 3  # a first copy that differs, then one between two equal answers
    warned = [line for line in report.lines if line.startswith("warning")]
    assert warned and str(stash.database) in warned[0] and "performers" in warned[0], report.lines
    assert not [p for p in (tmp_path / "archive").iterdir() if TEMP_MARKER in p.name]


def test_another_schema_at_the_servers_path_is_not_the_servers_database(tmp_path):
    import dataclasses

    stash = LocalStash(tmp_path / "stash")
    stash.info = dataclasses.replace(stash.info, schema_version=86)
    outcome = download_to_archive(stash, Archive(tmp_path / "archive"), DownloadOptions(), Reporter())
    assert outcome.entry.source == "database" and len(stash.requests) == 1
    assert stash.fingerprints == 0  # the schema alone tells


def test_a_library_changing_during_every_copy_leaves_it_to_stashs_backup(tmp_path):
    stash = LocalStash(tmp_path / "stash")
    answers = iter(range(100))

    def changing() -> library.Fingerprint:
        stash.fingerprints += 1
        return library.Fingerprint({"performers": next(answers)}, {})

    stash.library_fingerprint = changing
    outcome = download_to_archive(stash, Archive(tmp_path / "archive"), DownloadOptions(), Reporter())
    assert outcome.entry.source == "database" and len(stash.requests) == 1
    assert stash.fingerprints == 1 + 2 * live_copy.ATTEMPTS  # a first copy, then as many bracketed as ever


def test_a_first_copy_that_differs_is_made_again_between_two_answers(tmp_path):
    """An edit during the first copy: it holds neither the library before it (not asked)
    nor after it. The next copy is asked about before and after, and kept when it holds
    the library of either answer (here the one before: an edit came after its lock)."""
    stash = LocalStash(tmp_path / "stash")
    truth, stash.fingerprints = stash.library_fingerprint(), 0
    edited = library.Fingerprint({"performers": 99}, {})
    answers = [edited, truth, edited]

    def edits_during_the_copies() -> library.Fingerprint:
        stash.fingerprints += 1
        return answers.pop(0)

    stash.library_fingerprint = edits_during_the_copies
    outcome = download_to_archive(stash, Archive(tmp_path / "archive"), DownloadOptions(), Reporter())
    assert outcome.entry.source == live_copy.SOURCE and stash.requests == [] and stash.fingerprints == 3


def test_a_copy_matching_the_library_after_it_changed_is_kept(tmp_path):
    """An edit during the first copy, and one between the next question and its copy:
    that copy holds the library the server reports afterwards, which is a committed
    state of the server's database."""
    stash = LocalStash(tmp_path / "stash")
    real = stash.library_fingerprint
    answers = [library.Fingerprint({"performers": 2}, {}), library.Fingerprint({"performers": 2}, {}), None]

    def edited_meanwhile() -> library.Fingerprint:
        answer = answers.pop(0)
        return answer or real()

    stash.library_fingerprint = edited_meanwhile
    outcome = download_to_archive(stash, Archive(tmp_path / "archive"), DownloadOptions(), Reporter())
    assert outcome.entry.source == live_copy.SOURCE and stash.requests == []


def test_no_live_copy_where_the_servers_path_is_not_readable_here(tmp_path):
    import dataclasses

    stash = LocalStash(tmp_path / "stash")
    stash.info = dataclasses.replace(stash.info, database_path="/root/.stash/not-on-this-machine.sqlite")
    outcome = download_to_archive(stash, Archive(tmp_path / "archive"), DownloadOptions(), Reporter())
    assert outcome.entry.source == "database" and stash.fingerprints == 0
    relative = dataclasses.replace(stash.info, database_path="stash-go.sqlite")
    assert live_copy.live_database_path(relative) is None  # relative to Stash's folder, not ours


def test_a_server_that_cannot_describe_its_library_leaves_it_to_stashs_backup(tmp_path):
    """Stash's own queries fail on a damaged database: that is no reason to fail the
    backup; Stash's backup (and the live check before it) says what is wrong."""
    from stash_backup_plugin.core.errors import ServerError

    stash = LocalStash(tmp_path / "stash")

    def failing() -> library.Fingerprint:
        raise ServerError("Stash answered with an error: database disk image is malformed")

    stash.library_fingerprint = failing
    report = Lines()
    outcome = download_to_archive(stash, Archive(tmp_path / "archive"), DownloadOptions(), report)
    assert outcome.entry.source == "database" and len(stash.requests) == 1
    assert any("could not describe its library" in line for line in report.lines), report.lines


def test_another_users_run_never_creates_the_side_files_stash_needs(tmp_path, monkeypatch):
    """An idle Stash has closed its files and SQLite removed its -wal and -shm; a read-only
    connection would create them, owned by whoever runs it: only the database's owner
    (or root, whose files SQLite gives the database's owner) copies the live file then."""
    stash = LocalStash(tmp_path / "stash")
    for suffix in ("-wal", "-shm"):
        Path(f"{stash.database}{suffix}").unlink(missing_ok=True)
    owner = stash.database.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    assert live_copy.live_database_path(stash.info) is None
    outcome = download_to_archive(stash, Archive(tmp_path / "archive"), DownloadOptions(), Reporter())
    assert outcome.entry.source == "database" and not Path(f"{stash.database}-shm").exists()
    monkeypatch.setattr(os, "geteuid", lambda: owner)
    assert live_copy.live_database_path(stash.info) == stash.database
    sqlite3.connect(stash.database).execute("PRAGMA user_version").fetchone()  # a connection of Stash's: side files
    writer = sqlite3.connect(stash.database)
    writer.execute("BEGIN IMMEDIATE")  # held open: the -wal and -shm stay
    try:
        monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
        assert live_copy.live_database_path(stash.info) == stash.database
    finally:
        writer.rollback()
        writer.close()


# --- the fingerprint, pure ------------------------------------------------------------------


def test_an_answer_of_another_shape_is_refused():
    good = {"stats": {name: 1 for name in library.STATS_FIELDS.values()}}
    good.update({f"newest_{kind}": {items: []} for kind, (_, items) in library.NEWEST_EDITS.items()})
    assert library.from_answer(good).counts["scenes"] == 1
    for broken in (
        None,
        {},
        {**good, "stats": {"scene_count": "1"}},
        {**good, "newest_tags": {"tags": [{"updated_at": 5}]}},
        {**good, "newest_tags": {"tags": [{}, {}]}},
        {**good, "newest_scenes": None},
    ):
        with pytest.raises(library.UnexpectedAnswer):
            library.from_answer(broken)


@pytest.mark.parametrize(
    "stored, answered, same",
    [
        ("2026-12-03T05:54:03Z", "2026-12-03T05:54:03Z", True),
        ("2021-05-01T12:00:00+02:00", "2021-05-01T10:00:00Z", True),  # Go wrote the local zone
        ("2021-05-01 10:00:00.123456+00:00", "2021-05-01T10:00:00Z", True),  # fractions, a space
        ("2021-05-01T10:00:00", "2021-05-01T10:00:00Z", True),  # no zone: UTC, as Go reads it
        ("2021-05-01T10:00:01Z", "2021-05-01T10:00:00Z", False),
        ("not a time", "not a time", True),
        ("not a time", "2021-05-01T10:00:00Z", False),
        (None, None, True),
        (None, "2021-05-01T10:00:00Z", False),
    ],
)
def test_stashs_times_compare_by_the_second_they_name(stored, answered, same):
    assert library.same_moment(stored, answered) is same


# --- the live check, read from the copy -------------------------------------------------------


def test_the_live_copy_is_the_live_check_healthy_once_and_recorded_as_the_live_file(tmp_path):
    from stash_backup_plugin.core.status import LIVE_CHECK_JOB, StatusFile
    from stash_backup_plugin.jobs.download import checked_download

    stash = LocalStash(tmp_path / "stash", blobs_storage="FILESYSTEM")
    archive, report = Archive(tmp_path / "archive"), Lines()
    status_file = StatusFile(archive.folder)
    outcome = checked_download(stash, archive, DownloadOptions(), status_file, report)
    assert outcome.entry.source == live_copy.SOURCE and outcome.entry.verified_level == QUICK
    checked = [line for line in report.lines if "live database healthy" in line]
    assert len(checked) == 1 and str(stash.database) in checked[0] and TEMP_MARKER not in checked[0]
    assert StatusFile(archive.folder).read().jobs[LIVE_CHECK_JOB].last_success


def test_a_damaged_live_database_found_in_its_copy_starts_the_spell_and_stashs_backup_is_tried(tmp_path):
    """As before the live copy: the damage is recorded and notified, and Stash's own
    backup is asked for (its VACUUM INTO may read what the damaged pages do not hold;
    when it fails on the malformed file, that too is recorded)."""
    from stash_backup_plugin.core.errors import StashBackupError
    from stash_backup_plugin.core.status import StatusFile, live_damage
    from stash_backup_plugin.jobs.download import checked_download
    from tests.unit.test_check_live import live_database

    stash = LocalStash(tmp_path / "stash")
    (tmp_path / "stash" / "damaged").mkdir()
    path, writer = live_database(tmp_path / "stash" / "damaged")
    # a table the library's counts do not read: the copy is made, and its check finds it
    writer.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    writer.executemany("INSERT INTO notes (text) VALUES (?)", [("n" * 300,) for _ in range(500)])
    writer.commit()
    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = writer.execute("SELECT rootpage FROM sqlite_master WHERE name = 'notes'").fetchone()[0]
    with open(path, "r+b") as handle:
        handle.seek((root - 1) * 4096)
        handle.write(b"\xff" * 64)
    stash.database = path
    stash.info = dataclasses.replace(stash.info, database_path=str(path), schema_version=75)
    archive, report = Archive(tmp_path / "archive"), Lines()
    status_file = StatusFile(archive.folder)
    with pytest.raises(StashBackupError, match="malformed"):  # Stash's VACUUM INTO of it fails too
        checked_download(stash, archive, DownloadOptions(), status_file, report)
    assert stash.requests == [(True, False)]
    assert live_damage(status_file.read()) is not None
    assert any(line.startswith("error: live database damaged") for line in report.lines), report.lines
    assert not any("cannot be copied" in line for line in report.lines), report.lines  # found in the copy
    assert not list(archive.folder.glob("pending/*")) and not list(archive.folder.glob("incoming/*"))
    assert archive.entries() == []
    assert not [p for p in archive.folder.iterdir() if TEMP_MARKER in p.name]
    writer.close()
