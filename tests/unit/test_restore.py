"""The offline restore on a stopped install on disk: verification first, refusals
with nothing changed, the swap with its side files, undo, and the CLI's errors."""

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from stash_backup_plugin.offline import restore as engine
from stash_backup_plugin.core import faults
from stash_backup_plugin.offline import swap
from stash_backup_plugin.core.archive import Archive, Entry
from stash_backup_plugin.core.errors import RestoreRefused, StorageError, UsageError, VerificationError
from stash_backup_plugin.core.naming import TEMP_MARKER, blob_relative_path
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.offline.stash_config import load_config

from tests.support.harness import run_restore
from tests.support.restore_fixtures import make_install
from tests.support.stashlike import make_database, names_in, vacuum_copy


def snapshot(folder: Path) -> dict:
    """Every file under folder with its bytes' hash: proof that nothing changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def install(tmp_path):
    return make_install(tmp_path / "stash")


def target(install):
    config = load_config(install.config)
    return engine.Target(config.database, config.blobs_path, config.blobs_storage, config)


def do_restore(install, backup, **options):
    return engine.restore(backup, target(install), engine.RestoreOptions(assume_yes=True, **options), Reporter())


def test_restore_zip_puts_the_backup_in_place_and_keeps_the_old_database_with_its_wal_data(install):
    result = do_restore(install, install.backup_zip)
    assert install.names() == ["performer-0", "performer-1", "performer-2"]
    assert not any(Path(f"{install.database}{s}").exists() for s in ("-wal", "-shm", "-journal"))
    aside = result.aside
    assert sorted(p.name for p in aside.iterdir()) == ["restore-record.json", "stash-go.sqlite"]
    # the data that lived only in the old -wal was folded into the file kept aside
    assert "added-after-backup" in names_in(aside / "stash-go.sqlite")


def test_a_stale_wal_is_never_replayed_into_the_restored_database(install):
    do_restore(install, install.backup_plain)
    connection = sqlite3.connect(install.database)  # a normal read-write open, as Stash does
    assert [r[0] for r in connection.execute("PRAGMA quick_check")] == ["ok"]
    assert "added-after-backup" not in [r[0] for r in connection.execute("SELECT name FROM performers")]
    connection.close()


def test_blobs_are_extracted_identical_ones_kept_extra_ones_left(install):
    checksum = next(iter(install.images))
    lost = install.blobs / checksum[:2] / checksum[2:4] / checksum
    lost.unlink()
    extra = install.blobs / "ff" / "ff" / ("f" * 32)
    extra.parent.mkdir(parents=True)
    extra.write_bytes(b"not in the backup")
    result = do_restore(install, install.backup_zip)
    assert lost.read_bytes() == install.images[checksum]
    assert result.blobs_written == 1 and result.blobs_kept == 2
    assert extra.exists()
    assert any("not in the backup" in note for note in result.plan.notes)


def test_damaged_existing_blob_is_replaced_and_kept_aside(install):
    checksum = next(iter(install.images))
    damaged = install.blobs / checksum[:2] / checksum[2:4] / checksum
    damaged.write_bytes(b"bit rot")
    result = do_restore(install, install.backup_zip)
    assert damaged.read_bytes() == install.images[checksum]
    assert (result.aside / "damaged-blobs" / checksum[:2] / checksum[2:4] / checksum).read_bytes() == b"bit rot"


def test_dry_run_changes_nothing(install):
    before = snapshot(install.root)
    result = do_restore(install, install.backup_zip, dry_run=True)
    assert snapshot(install.root) == before and not result.restored
    assert result.plan.steps


def test_bad_backup_is_refused_with_nothing_changed(install, tmp_path):
    bad = tmp_path / "stash-go.sqlite.75.20261126_190000"
    bad.write_bytes(install.backup_plain.read_bytes()[:5000])
    before = snapshot(install.root)
    with pytest.raises(VerificationError):
        do_restore(install, bad)
    assert snapshot(install.root) == before


def archived(install, tmp_path, backup: Path) -> Path:
    """A copy of `backup` in an archive folder, recorded in its manifest."""
    folder = tmp_path / "archive"
    folder.mkdir(exist_ok=True)
    copy = folder / backup.name
    shutil.copyfile(backup, copy)
    data = copy.read_bytes()
    Archive(folder).record(
        Entry(
            file=copy.name,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            schema_version=75,
            created="2026-11-26T18:01:02",
            kind="sqlite",
            verified_ok=True,
        )
    )
    return copy


def flip_unindexed_byte(install, database: Path) -> None:
    """Change one character of performer-0's image_blob, a column no index covers:
    quick_check and even integrity_check still pass."""
    checksum = list(install.images)[0].encode()
    data = bytearray(database.read_bytes())
    at = data.index(b"performer-0" + checksum) + len(b"performer-0")
    data[at] = ord("0") if data[at] != ord("0") else ord("1")
    database.write_bytes(bytes(data))
    connection = sqlite3.connect(f"file:{database}?immutable=1", uri=True)
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    connection.close()


@pytest.mark.parametrize("dry_run", [False, True], ids=["restore", "dry-run"])
def test_an_archived_database_backup_must_match_its_recorded_sha256(install, tmp_path, dry_run):
    backup = archived(install, tmp_path, install.backup_plain)
    flip_unindexed_byte(install, backup)
    before = snapshot(install.root)
    with pytest.raises(VerificationError, match="SHA-256"):
        do_restore(install, backup, check_level="full", dry_run=dry_run)
    assert snapshot(install.root) == before


def test_an_archived_backup_must_have_its_recorded_size(install, tmp_path):
    backup = archived(install, tmp_path, install.backup_zip)
    with open(backup, "ab") as grown:
        grown.write(b"\0")
    before = snapshot(install.root)
    with pytest.raises(VerificationError, match="manifest says"):
        do_restore(install, backup)
    assert snapshot(install.root) == before


def test_an_intact_archived_backup_is_restored_with_its_hash_checked_on_the_way(install, tmp_path):
    backup = archived(install, tmp_path, install.backup_plain)
    assert do_restore(install, backup).restored
    assert install.names() == ["performer-0", "performer-1", "performer-2"]


def test_newer_schema_is_refused_unless_allowed(install, tmp_path):
    newer = tmp_path / "newer.sqlite"
    make_database(newer, schema=99, wal=False)
    before = snapshot(install.root)
    with pytest.raises(RestoreRefused, match="newer than the current database's 75"):
        do_restore(install, newer)
    assert snapshot(install.root) == before
    result = do_restore(install, newer, allow_newer_schema=True)
    assert result.restored


def test_older_schema_goes_ahead_and_says_stash_will_migrate(install, tmp_path):
    older = tmp_path / "older.sqlite"
    make_database(older, schema=60, wal=False)
    result = do_restore(install, older)
    assert any("migrate" in note for note in result.plan.notes)


def test_not_enough_space_is_refused(install, monkeypatch):
    monkeypatch.setattr(engine, "free_space", lambda folder: 10)
    before = snapshot(install.root)
    with pytest.raises(RestoreRefused, match="not enough free space"):
        do_restore(install, install.backup_zip)
    assert snapshot(install.root) == before


def test_no_confirmation_without_a_terminal(install):
    before = snapshot(install.root)
    with pytest.raises(RestoreRefused, match="--yes"):
        engine.restore(install.backup_zip, target(install), engine.RestoreOptions(), Reporter())
    assert snapshot(install.root) == before


def test_a_process_holding_the_database_makes_the_restore_refuse(install):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('SELECT count(*) FROM performers').fetchall(); print('ready', flush=True); "
            "time.sleep(60)",
            str(install.database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = snapshot(install.root)
        with pytest.raises(RestoreRefused, match="running"):
            do_restore(install, install.backup_zip)
        assert snapshot(install.root) == before
    finally:
        holder.kill()
        holder.wait()


@contextlib.contextmanager
def listening_on(port: int, healthz: bool):
    """Something on Stash's port: a web server whose /healthz answers (as Stash's
    does, without a login), or a bare socket that never speaks HTTP."""
    if not healthz:
        with socket.create_server(("127.0.0.1", port)) as bare:
            yield bare
        return

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b".")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_an_answering_healthz_is_proof_that_stash_stopped_cannot_overrule(install):
    with listening_on(load_config(install.config).port, healthz=True):
        before = snapshot(install.root)
        with pytest.raises(RestoreRefused, match="Stash answers"):
            do_restore(install, install.backup_zip, stash_stopped=True)
        assert snapshot(install.root) == before


def test_a_busy_port_that_is_not_stash_is_a_doubt_the_user_may_overrule(install):
    with listening_on(load_config(install.config).port, healthz=False):
        before = snapshot(install.root)
        with pytest.raises(RestoreRefused, match="cannot tell.*--stash-stopped"):
            do_restore(install, install.backup_zip)
        assert snapshot(install.root) == before
        assert do_restore(install, install.backup_zip, stash_stopped=True).restored


def test_cli_finds_the_config_through_stashs_own_variable(install, tmp_path):
    """Stash reads STASH_CONFIG_FILE (the Docker image sets it): so does --list."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"STASH_CONFIG_FILE": str(install.config), "STASH_CONFIG": "", "HOME": str(elsewhere)}
    result = run_restore("--list", "--json", env=env, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert str(install.backup_zip) in {row["path"] for row in json.loads(result.stdout)}
    missing = run_restore("--list", env=dict(env, STASH_CONFIG_FILE=str(elsewhere / "none.yml")), cwd=elsewhere)
    assert missing.returncode != 0 and "STASH_CONFIG_FILE names" in missing.stderr


def test_undo_puts_back_the_old_database_and_its_wal_data(install):
    do_restore(install, install.backup_zip)
    engine.undo(target(install), engine.RestoreOptions(assume_yes=True), Reporter())
    assert "added-after-backup" in install.names()
    # and the undo can itself be undone
    engine.undo(target(install), engine.RestoreOptions(assume_yes=True), Reporter())
    assert "added-after-backup" not in install.names()


def test_undo_with_nothing_to_undo(install):
    with pytest.raises(UsageError, match="nothing to undo"):
        engine.undo(target(install), engine.RestoreOptions(assume_yes=True), Reporter())


def test_restore_into_an_empty_place(tmp_path, install):
    fresh = tmp_path / "fresh" / "stash-go.sqlite"
    result = engine.restore(
        install.backup_plain,
        engine.Target(fresh, None, "DATABASE"),
        engine.RestoreOptions(assume_yes=True, stash_stopped=True),
        Reporter(),
    )
    assert result.restored and names_in(fresh) == ["performer-0", "performer-1", "performer-2"]


def test_what_a_root_restore_creates_takes_its_folders_owner(install):
    """Run as root for a Stash that runs as another user: blob folders, the aside
    folder, its record and the restored files must stay that user's."""
    assert os.geteuid() == 0, "this test gives files away with chown: run the tests as root"
    stash_user = (1234, 1234)
    for path in [install.root, *install.root.rglob("*")]:
        os.lchown(path, *stash_user)
    checksums = sorted(install.images)
    shutil.rmtree(install.blobs / checksums[0][:2])  # its folders must be made again
    (install.blobs / blob_relative_path(checksums[1])).write_bytes(b"bit rot")  # moves into damaged-blobs/aa/bb/
    result = do_restore(install, install.backup_zip)
    engine.undo(target(install), engine.RestoreOptions(assume_yes=True), Reporter())
    made = [
        p for p in [install.root, *install.root.rglob("*")] if (os.lstat(p).st_uid, os.lstat(p).st_gid) != stash_user
    ]
    assert made == [] and (result.aside / "damaged-blobs").is_dir()


def test_restored_file_keeps_the_old_files_mode(install):
    os.chmod(install.database, 0o640)
    do_restore(install, install.backup_zip)
    assert oct(install.database.stat().st_mode & 0o777) == "0o640"


# --- the command line ------------------------------------------------------------------


def test_cli_restore_by_name_from_the_backup_folder(install):
    result = run_restore(install.backup_zip.name, "--config", str(install.config), "--yes")
    assert result.returncode == 0, result.stderr
    assert install.names() == ["performer-0", "performer-1", "performer-2"]


def test_cli_without_yes_and_without_terminal_refuses(install):
    before = snapshot(install.root)
    result = run_restore(str(install.backup_zip), "--config", str(install.config), input="")
    assert result.returncode != 0 and "--yes" in result.stderr
    assert snapshot(install.root) == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing-backup.sqlite"], "not found"),
        (["--config", "/nonexistent/config.yml", "x"], "does not exist"),
        ([], "give a BACKUP"),
        (["--salvage", "x.sqlite"], "--output"),
    ],
)
def test_cli_user_mistakes_are_one_line_errors(install, args, message):
    if "--config" not in args:
        args = args + ["--config", str(install.config)]
    before = snapshot(install.root)
    result = run_restore(*args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2
    assert snapshot(install.root) == before


def test_cli_refuses_a_file_that_is_not_a_backup(install, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"x" * 4096)
    result = run_restore(str(junk), "--config", str(install.config), "--yes")
    assert result.returncode == 1 and "not an SQLite database" in result.stderr and "Traceback" not in result.stderr


def test_cli_list_shows_backups(install):
    result = run_restore("--list", "--config", str(install.config), "--json")
    import json

    rows = json.loads(result.stdout)
    assert {r["path"] for r in rows} == {str(install.backup_plain), str(install.backup_zip)}
    assert {r["schema_version"] for r in rows} == {75}


def anonymised_beside_the_backups(install) -> Path:
    return vacuum_copy(install.database, install.backup_plain.parent / "stash-go.sqlite.anonymous.75.20261127_090000")


def test_cli_never_offers_or_finds_stashs_anonymised_database_by_name(install):
    anonymised = anonymised_beside_the_backups(install)
    listed = run_restore("--list", "--config", str(install.config), "--json")
    assert listed.returncode == 0 and str(anonymised) not in {r["path"] for r in json.loads(listed.stdout)}
    before = snapshot(install.root)
    by_name = run_restore(anonymised.name, "--config", str(install.config), "--yes", "--allow-anonymised")
    assert by_name.returncode != 0 and "found only by its path" in by_name.stderr
    assert snapshot(install.root) == before


def test_cli_restores_an_anonymised_database_only_by_path_with_the_flag_and_a_warning(install):
    anonymised = anonymised_beside_the_backups(install)
    before = snapshot(install.root)
    refused = run_restore(str(anonymised), "--config", str(install.config), "--yes")
    assert refused.returncode != 0 and "--allow-anonymised" in refused.stderr and "Traceback" not in refused.stderr
    assert snapshot(install.root) == before
    allowed = run_restore(str(anonymised), "--config", str(install.config), "--yes", "--allow-anonymised")
    assert allowed.returncode == 0, allowed.stderr
    assert "your real data will be replaced by anonymised data" in allowed.stderr


def test_cli_looks_in_the_plugins_archive_folder_setting(install, tmp_path):
    """Stash stores plugin settings in config.yml under plugins.settings.<id>, and
    nests an ID with dots (checked against a real Stash: see test_e2e_restore)."""
    import yaml

    folders = {"plain": tmp_path / "my-archive", "dotted": tmp_path / "dotted-archive"}
    config = yaml.safe_load(install.config.read_text())
    config["plugins"] = {
        "settings": {
            "my-backups": {"archiveFolder": str(folders["plain"]), "keepDaily": 7},
            "my": {"backups": {"archiveFolder": str(folders["dotted"])}},
        }
    }
    install.config.write_text(yaml.safe_dump(config))
    copies = []
    for folder in folders.values():
        folder.mkdir()
        copies.append(
            folder / install.backup_zip.name.replace("180103", "200000" if "dotted" in folder.name else "210000")
        )
        shutil.copyfile(install.backup_zip, copies[-1])
    listed = run_restore("--list", "--config", str(install.config), "--json")
    assert {str(c) for c in copies} <= {r["path"] for r in json.loads(listed.stdout)}
    by_name = run_restore(copies[0].name, "--config", str(install.config), "--dry-run")
    assert by_name.returncode == 0, by_name.stderr


def test_docker_paths_are_found_relative_to_the_config_folder(install, tmp_path):
    import yaml

    config = yaml.safe_load(install.config.read_text())
    config["database"] = "/root/.stash/stash-go.sqlite"
    config["blobs_path"] = "/root/.stash/blobs"
    install.config.write_text(yaml.safe_dump(config))
    result = run_restore(str(install.backup_zip), "--config", str(install.config), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"using {install.database}" in result.stderr


# --- reading the current database: no copy where SQLite allows it, never in the system temp ---


def files_and_times(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def schema_in_wal_only(database: Path, version: int) -> None:
    """A committed schema version that lives only in the -wal (Stash was killed)."""
    connection = sqlite3.connect(database)
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute("UPDATE schema_migrations SET version = ?", (version,))
    connection.commit()
    wal, shm, main = (Path(f"{database}{s}").read_bytes() for s in ("-wal", "-shm", ""))
    connection.close()
    database.write_bytes(main)
    Path(f"{database}-wal").write_bytes(wal)
    Path(f"{database}-shm").write_bytes(shm)


def test_immutable_would_miss_what_lives_in_the_wal(install):
    """Why the -wal case cannot use immutable=1: it ignores the -wal."""
    schema_in_wal_only(install.database, 76)
    connection = sqlite3.connect(f"file:{install.database}?immutable=1", uri=True)
    assert connection.execute("SELECT version FROM schema_migrations").fetchone()[0] == 75
    connection.close()


def test_a_wal_database_is_read_without_a_copy_and_left_exactly_as_it_was(install, monkeypatch):
    from stash_backup_plugin.core import sqlite_check

    schema_in_wal_only(install.database, 76)
    before = files_and_times(install.root)

    def no_copy(*args, **kwargs):
        raise AssertionError("the database was copied")

    monkeypatch.setattr(sqlite_check.shutil, "copyfile", no_copy)
    assert sqlite_check.read_schema_version(install.database) == 76
    assert files_and_times(install.root) == before  # bytes and times; no new file, -shm untouched


def test_a_hot_journal_is_read_through_a_copy_beside_the_database(tmp_path, monkeypatch):
    from stash_backup_plugin.core import sqlite_check

    database = tmp_path / "db" / "stash-go.sqlite"
    database.parent.mkdir()
    make_database(database, schema=75, wal=False)
    connection = sqlite3.connect(database)
    connection.execute("PRAGMA cache_size=1")
    connection.execute("BEGIN")
    connection.execute("UPDATE schema_migrations SET version = 99")
    connection.executemany("INSERT INTO performers (name) VALUES (?)", [(f"p{i}" * 50,) for i in range(3000)])
    main, journal = database.read_bytes(), Path(f"{database}-journal").read_bytes()  # mid-transaction
    connection.rollback()
    connection.close()
    database.write_bytes(main)
    Path(f"{database}-journal").write_bytes(journal)
    before = files_and_times(database.parent)
    made = []
    import tempfile

    real_mkdtemp = tempfile.mkdtemp

    def spy(*args, **kwargs):
        made.append(Path(real_mkdtemp(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr("tempfile.mkdtemp", spy)
    assert sqlite_check.read_schema_version(database) == 75  # the hot journal rolled back, in the copy
    assert [m.parent for m in made] == [database.parent] and not made[0].exists()
    assert files_and_times(database.parent) == before


def system_temp_is_full(monkeypatch) -> None:
    """A small tmpfs that a copy of the database would fill: any file or folder made in
    the system's temp folder fails with ENOSPC."""
    import errno
    import tempfile

    system = Path(tempfile.gettempdir()).resolve()
    for name in ("mkdtemp", "mkstemp"):
        real = getattr(tempfile, name)

        def guarded(*args, _real=real, **kwargs):
            where = kwargs.get("dir") or (args[2] if len(args) > 2 else None)
            if where is None or Path(where).resolve() == system:
                raise OSError(errno.ENOSPC, "No space left on device")
            return _real(*args, **kwargs)

        monkeypatch.setattr(tempfile, name, guarded)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "restore"])
def test_a_wal_beside_the_database_needs_no_room_in_the_system_temp_folder(install, monkeypatch, dry_run):
    system_temp_is_full(monkeypatch)
    result = do_restore(install, install.backup_zip, dry_run=dry_run)
    assert result.restored != dry_run
    assert result.plan.steps or result.restored


def test_cli_turns_an_unexpected_os_error_into_one_line(install, tmp_path):
    import yaml

    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_bytes(b"x")
    config = tmp_path / "elsewhere" / "config.yml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({"database": str(not_a_folder / "stash-go.sqlite"), "port": 1}))
    result = run_restore(str(install.backup_plain), "--config", str(config), "--yes")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].endswith(f"{not_a_folder / 'stash-go.sqlite'}: Not a directory")


def test_cli_turns_an_unexpected_sqlite_error_into_one_line(install, monkeypatch, capsys):
    from stash_backup_plugin.offline import cli as restore_cli

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(engine, "read_backup", broken)
    code = restore_cli.main([str(install.backup_zip), "--config", str(install.config), "--yes"])
    err = capsys.readouterr().err
    assert code != 0 and err.strip().splitlines()[-1] == "error: SQLite: disk I/O error"


# --- temp files: none left by an error, a killed run's removed, nothing else touched ---------


def blob_path(install, checksum: str) -> Path:
    return install.blobs / checksum[:2] / checksum[2:4] / checksum


def temps_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_MARKER in p.name]


def test_an_error_while_extracting_blobs_leaves_no_temp_files(install, monkeypatch):
    from stash_backup_plugin.core import backup_zip as fullbackup

    for checksum in list(install.images)[:2]:
        blob_path(install, checksum).unlink()
    real, blobs_copied = fullbackup.copy_member, []

    def fails_on_the_second_blob(archive, name, out, *rest):
        if name.startswith("blobs/") and hasattr(out, "fileno"):  # written to disk, not only checked
            blobs_copied.append(name)
            if len(blobs_copied) == 2:
                out.write(b"partial")
                raise OSError(28, "No space left on device")
        return real(archive, name, out, *rest)

    monkeypatch.setattr(fullbackup, "copy_member", fails_on_the_second_blob)
    before = install.names()
    with pytest.raises(StorageError, match="disk is full"):
        do_restore(install, install.backup_zip)
    assert not temps_under(install.root)
    assert install.names() == before and not swap.journal_path(install.database).exists()


def test_the_next_run_removes_a_killed_runs_temp_files_and_nothing_else(install):
    checksum = next(iter(install.images))
    folder = blob_path(install, checksum).parent
    ours = [
        folder / f".{checksum}{TEMP_MARKER}abc123",  # a blob being extracted
        install.root / f".stash-go.sqlite.read{TEMP_MARKER}xyz",  # a read copy
        install.root / f".stash-go.sqlite{swap.JOURNAL_SUFFIX}{TEMP_MARKER}q1",
    ]  # the journal's temp
    ours[0].write_bytes(b"partial blob")
    ours[1].mkdir()
    (ours[1] / "stash-go.sqlite").write_bytes(b"copy")
    ours[2].write_bytes(b"{")
    not_ours = [folder / "notes.txt", install.root / f".scratch{TEMP_MARKER}of-another-tool"]
    not_ours[0].write_bytes(b"user's file")
    not_ours[1].mkdir()
    do_restore(install, install.backup_zip)
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in not_ours)


def test_undo_removes_a_killed_runs_journal_temp(install):
    do_restore(install, install.backup_zip)
    leftover = install.root / f".stash-go.sqlite{swap.JOURNAL_SUFFIX}{TEMP_MARKER}k9"
    leftover.write_bytes(b'{"kind": "undo"')
    engine.undo(target(install), engine.RestoreOptions(assume_yes=True), Reporter())
    assert not leftover.exists()


def test_a_second_run_on_the_same_database_is_refused_while_one_runs(install):
    import fcntl

    fd = os.open(install.root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running stash-restore holds it
        before = snapshot(install.root)
        with pytest.raises(RestoreRefused, match="another stash-restore is running"):
            do_restore(install, install.backup_zip)
        assert snapshot(install.root) == before
    finally:
        os.close(fd)


# --- the swap: locks before the journal; an error anywhere rolls back (or finishes) at once ---


def test_a_restore_refused_at_the_lock_leaves_no_journal(install, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setattr(engine, "ensure_stash_stopped", lambda target, options: None)  # Stash started after the probe
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('SELECT count(*) FROM performers').fetchall(); print('ready', flush=True); "
            "time.sleep(60)",
            str(install.database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = install.names()
        with pytest.raises(RestoreRefused, match="open in another process"):
            do_restore(install, install.backup_zip)
    finally:
        holder.kill()
        holder.wait()
    assert not swap.journal_path(install.database).exists()
    assert install.names() == before and not list(install.root.glob("stash-restore-*"))
    assert not temps_under(install.root)
    assert do_restore(install, install.backup_zip).restored  # nothing blocks the next run


SWAP_STEPS = ["journal-temp", "journal-saved", "aside-created", "aside-db", "placed", "record-temp", "recorded"]


@pytest.mark.parametrize("step", SWAP_STEPS)
def test_an_error_at_any_step_of_a_restore_is_recovered_at_once(install, monkeypatch, step):
    old, new = install.names(), ["performer-0", "performer-1", "performer-2"]
    monkeypatch.setenv(faults.FAIL_ENV, step)
    with pytest.raises(StorageError, match=f"injected failure at {step}") as raised:
        do_restore(install, install.backup_zip)
    finished = SWAP_STEPS.index(step) >= SWAP_STEPS.index("placed")
    assert ("is now the restored backup" if finished else "is the database from before it") in str(raised.value)
    assert not swap.journal_path(install.database).exists() and not temps_under(install.root)
    assert install.names() == (new if finished else old)
    kept = [a for a in install.root.glob("stash-restore-*") if (a / install.database.name).exists()]
    assert [names_in(a / install.database.name) for a in kept] == ([old] if finished else [])
    assert do_restore(install, install.backup_zip).restored


@pytest.mark.parametrize("step", SWAP_STEPS)
def test_an_error_at_any_step_of_an_undo_is_recovered_at_once(install, monkeypatch, step):
    do_restore(install, install.backup_zip)
    old, new = ["added-after-backup", "performer-0", "performer-1", "performer-2"], install.names()
    monkeypatch.setenv(faults.FAIL_ENV, step)
    with pytest.raises(StorageError, match=f"injected failure at {step}"):
        engine.undo(target(install), engine.RestoreOptions(assume_yes=True), Reporter())
    finished = SWAP_STEPS.index(step) >= SWAP_STEPS.index("placed")
    assert not swap.journal_path(install.database).exists() and not temps_under(install.root)
    assert install.names() == (old if finished else new)
    engine.undo(target(install), engine.RestoreOptions(assume_yes=True), Reporter())
    assert install.names() == (new if finished else old)  # the next undo goes on from there


def test_undo_after_a_restore_that_was_rolled_back_does_not_undo_an_older_one(install):
    import signal

    do_restore(install, install.backup_plain)  # an older restore, undoable
    args = [str(install.backup_zip), "--config", str(install.config), "--yes"]
    assert run_restore(*args, env={faults.CRASH_ENV: "aside-db"}).returncode == -signal.SIGKILL
    before = install.names()
    result = run_restore("--undo", "--config", str(install.config), "--yes")
    assert result.returncode == 0, result.stderr
    assert "rolled back the interrupted restore" in result.stderr and "nothing more to do" in result.stderr
    assert install.names() == before


def test_undo_of_a_folder_kept_by_an_older_version_folds_its_wal_first(install):
    """Older versions kept the -wal and -shm beside the database in the aside folder:
    SQLite folds them into it there, so only whole files ever move into place."""
    import json
    import shutil

    legacy = install.root / "stash-restore-20250101_000000"
    legacy.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(f"{install.database}{suffix}", legacy / f"stash-go.sqlite{suffix}")
    (legacy / swap.RECORD_NAME).write_text(json.dumps({"kind": "restore"}))
    old = names_in(legacy / "stash-go.sqlite")
    for suffix in ("-wal", "-shm"):
        Path(f"{install.database}{suffix}").unlink()
    shutil.copyfile(install.backup_plain, install.database)
    engine.undo(target(install), engine.RestoreOptions(assume_yes=True), Reporter())
    assert not any(Path(f"{install.database}{s}").exists() for s in ("-wal", "-shm", "-journal"))
    assert install.names() == old and "added-after-backup" in old
    assert (legacy / f"{swap.RECORD_NAME}.undone").exists()
