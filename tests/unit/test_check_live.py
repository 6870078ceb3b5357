"""The live database's health check (jobs/check_live.py) on real SQLite files held open
by a writer in WAL mode as Stash holds its database, its damage spell in status.json,
and the ping (server/notify.send_ping, through jobs/status.recording) to a real local
HTTP receiver."""

import json
import sqlite3
import time
from pathlib import Path

import pytest

from stash_backup_plugin.core.errors import DownloadError
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.core.status import LIVE_CHECK_JOB, StatusFile, live_damage
from stash_backup_plugin.jobs.check_live import check_live, download_watch, healthy_backup_made
from stash_backup_plugin.jobs.status import recording
from stash_backup_plugin.server.notify import describe_url, ping_url

from tests.support.notify_receiver import Receiver
from tests.support.offsite_fixtures import bucket, local_archive, seaweed  # noqa: F401
from tests.support.stash_server.server import free_port

PAGE = 4096


class Lines(Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def info(self, message):
        self.lines.append(f"info: {message}")

    def warning(self, message):
        self.lines.append(f"warning: {message}")

    def error(self, message):
        self.lines.append(f"error: {message}")


def live_database(folder: Path) -> tuple[Path, sqlite3.Connection]:
    """A database in WAL mode with a writer holding it open, as a running Stash does."""
    path = folder / "stash-go.sqlite"
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE schema_migrations (version INTEGER, dirty INTEGER)")
    writer.execute("INSERT INTO schema_migrations VALUES (75, 0)")
    writer.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT)")
    writer.executemany("INSERT INTO tags (name) VALUES (?)", [(f"tag {i} " + "x" * 200,) for i in range(2000)])
    writer.commit()
    return path, writer


def damage_one_page(path: Path, writer: sqlite3.Connection) -> None:
    """A table's b-tree page overwritten in the file: the writer checkpoints first so that
    no newer copy of the page in the -wal hides the damage."""
    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = writer.execute("SELECT rootpage FROM sqlite_master WHERE name = 'tags'").fetchone()[0]
    with open(path, "r+b") as handle:
        handle.seek((root - 1) * PAGE)
        handle.write(b"\xff" * 64)


def fingerprint_of_files(path: Path) -> dict:
    return {
        side.name: (side.read_bytes(), side.stat().st_mtime_ns)
        for side in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        if side.exists()
    }


def test_a_healthy_live_database_is_checked_without_changing_it(tmp_path):
    path, writer = live_database(tmp_path)
    writer.execute("INSERT INTO tags (name) VALUES ('in the wal only')")
    writer.commit()
    before = fingerprint_of_files(path)
    assert set(before) == {"stash-go.sqlite", "stash-go.sqlite-wal", "stash-go.sqlite-shm"}
    report = Lines()
    result = check_live(path, StatusFile(tmp_path / "archive"), report)
    assert result.ok and result.line().startswith("live database healthy: PRAGMA quick_check ok")
    assert fingerprint_of_files(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["archive", *before])
    record = StatusFile(tmp_path / "archive").read().jobs[LIVE_CHECK_JOB]
    assert record.last_success and not record.failing and not record.damaged_since


def test_one_damaged_page_is_reported_notified_and_starts_a_damage_spell(tmp_path):
    path, writer = live_database(tmp_path)
    damage_one_page(path, writer)
    status_file, notices = StatusFile(tmp_path / "archive"), []
    result = check_live(path, status_file, Lines(), notices.append)
    assert not result.ok and result.line().startswith("live database damaged: ")
    assert "\n" not in result.line()
    record = live_damage(status_file.read())
    assert record is not None and record.failing and record.damaged_since
    assert [n.title for n in notices] == ["Stash backup failed: Check live database"]
    first_seen = record.damaged_since
    time.sleep(1.1)
    check_live(path, status_file, Lines())
    assert live_damage(status_file.read()).damaged_since == first_seen  # the spell's first sighting stays

    # A backup while the check still finds damage does not end the spell ...
    healthy_backup_made(status_file, Lines())
    assert live_damage(status_file.read()) is not None
    # ... one after a healthy check does.
    writer.close()
    healthy = tmp_path / "repaired"
    healthy.mkdir()
    repaired, _ = live_database(healthy)
    assert check_live(repaired, status_file, Lines()).ok
    report = Lines()
    healthy_backup_made(status_file, report)
    assert live_damage(status_file.read()) is None
    assert any("retention runs again" in line for line in report.lines)


def test_stash_backup_failing_on_a_malformed_database_counts_as_damage(tmp_path):
    status_file = StatusFile(tmp_path)
    with pytest.raises(DownloadError):
        with download_watch(status_file, Lines()):
            raise DownloadError("Stash answered with an error: vacuum failed: database disk image is malformed")
    record = live_damage(status_file.read())
    assert record is not None and "Stash's own backup failed" in record.damage_reason
    with pytest.raises(DownloadError):  # any other failure is not damage
        with download_watch(StatusFile(tmp_path / "other"), Lines()):
            raise DownloadError("connection refused")
    assert live_damage(StatusFile(tmp_path / "other").read()) is None


def test_ping_addresses_follow_healthchecks():
    uuid = "https://hc-ping.com/5f1f3c7e-0000-4000-8000-000000000000"
    assert ping_url(uuid, "start") == uuid + "/start"
    assert ping_url(uuid + "/", "fail") == uuid + "/fail"
    assert ping_url(uuid, "") == uuid
    assert ping_url("http://h/p?k=1", "start") == "http://h/p/start?k=1"


def test_pings_arrive_in_order_and_never_name_the_url(tmp_path):
    with Receiver() as receiver:
        url = f"http://127.0.0.1:{receiver.port}/ping/0b7c-secret-uuid"
        report = Lines()
        with recording(StatusFile(tmp_path), "verify", report, ping=url) as run:
            run.done("Verified 3 backup(s)")
        with pytest.raises(DownloadError):
            with recording(StatusFile(tmp_path), "download", report, ping=url):
                raise DownloadError("cannot reach Stash")
        requests = receiver.wait_for(4)
    assert [r["path"] for r in requests] == [
        "/ping/0b7c-secret-uuid/start",
        "/ping/0b7c-secret-uuid",
        "/ping/0b7c-secret-uuid/start",
        "/ping/0b7c-secret-uuid/fail",
    ]
    assert not any("secret-uuid" in line for line in report.lines)


def test_an_unreachable_ping_is_a_warning_and_the_job_succeeds(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/ping/0b7c-secret-uuid"
    report = Lines()
    with recording(StatusFile(tmp_path), "retention", report, ping=url) as run:
        run.done("Retention: kept 1")
    record = json.loads((tmp_path / "status.json").read_text())["jobs"]["retention"]
    assert record["last_success"] and not record["last_failure"]
    warnings = [line for line in report.lines if line.startswith("warning: ping")]
    assert len(warnings) == 2 and all(describe_url(url) in w and "secret-uuid" not in w for w in warnings)


@pytest.mark.e2e  # a real SeaweedFS
def test_a_known_damage_holds_local_and_off_site_retention(bucket, tmp_path, local_archive):  # noqa: F811
    from stash_backup_plugin.core.archive import Archive
    from stash_backup_plugin.core.retention import Policy
    from stash_backup_plugin.jobs import offsite
    from stash_backup_plugin.jobs.retention import apply_retention, retention_summary
    from stash_backup_plugin.offsite.rclone import Rclone
    from stash_backup_plugin.offsite.remote import RemoteArchive

    config, name = bucket
    remote = RemoteArchive(Rclone(config), f"sw:{name}/stash")
    archive = Archive(local_archive.folder)
    for day in (1, 2, 3):
        local_archive.backup(new_images=1, day=day)
    offsite.push(archive, remote, Lines())
    path, writer = live_database(tmp_path)
    damage_one_page(path, writer)
    assert not check_live(path, StatusFile(archive.folder), Lines()).ok

    report = Lines()
    result = apply_retention(archive, Policy(last=1), False, report)
    assert len(archive.entries()) == 3 and result.held
    held = [line for line in report.lines if "retention holds every backup" in line]
    assert len(held) == 1 and retention_summary(Policy(last=1), result, False).endswith(result.held)
    remote_result = offsite.prune(archive, remote, Policy(last=1), False, Lines())
    assert remote_result.held and not remote_result.forgotten
    assert len(offsite.remote_backups(remote)) == 3


def test_schedule_keeps_the_ping_url_in_the_private_settings_file_only(tmp_path):
    from tests.support.harness import run_cli

    units, env_file = tmp_path / "units", tmp_path / "schedule.env"
    url = "https://hc-ping.com/0b7c-secret-uuid"
    result = run_cli(
        "schedule",
        "install",
        "--via",
        "systemd-user",
        "--unit-dir",
        str(units),
        "--env-file",
        str(env_file),
        "--no-enable",
        "--dest",
        str(tmp_path / "archive"),
        "--ping",
        url,
    )
    assert result.returncode == 0, result.stderr
    assert f"STASH_BACKUP_PING='{url}'" in env_file.read_text() and env_file.stat().st_mode & 0o777 == 0o600
    assert not any("secret-uuid" in p.read_text() for p in units.iterdir())
    assert "secret-uuid" not in result.stdout + result.stderr
