"""The status the jobs keep (core/status.py, recording): attempts and outcomes,
staleness, the automatic-run claim that lets ten tabs queue one backup, and the
once-per-spell overdue notice."""

import json
import multiprocessing
from datetime import datetime, timedelta, timezone

import pytest

from stash_backup_plugin.jobs.status import claim_auto_backup, overview, recording
from stash_backup_plugin.core.archive import Archive
from stash_backup_plugin.core.errors import DownloadError
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.core.retention import parse_duration
from stash_backup_plugin.core.status import Status, StatusFile, claim_auto_run, claim_overdue_notice, is_stale, iso

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def test_staleness_is_measured_against_the_interval():
    day = timedelta(days=1)
    assert is_stale(None, day, NOW)
    assert is_stale(NOW - timedelta(hours=25), day, NOW)
    assert not is_stale(NOW - timedelta(hours=23), day, NOW)


def test_one_automatic_run_per_window_and_none_right_after_an_attempt():
    status, window = Status(), timedelta(hours=1)
    assert claim_auto_run(status, NOW, window)
    assert not claim_auto_run(status, NOW + timedelta(minutes=59), window)
    assert claim_auto_run(status, NOW + timedelta(minutes=61), window)
    failing = Status()
    failing.started("download", iso(NOW))  # a backup attempt (failed or running) holds it off too
    assert not claim_auto_run(failing, NOW + timedelta(minutes=30), window)


def test_one_overdue_notice_per_stale_spell():
    status = Status()
    last = NOW - timedelta(days=2)
    assert claim_overdue_notice(status, last, NOW)
    assert not claim_overdue_notice(status, last, NOW + timedelta(hours=5))
    # a backup succeeded since, then went stale again: a new spell
    assert claim_overdue_notice(status, NOW + timedelta(days=1), NOW + timedelta(days=3))


def test_no_overdue_notice_after_a_reported_failure_in_the_same_spell():
    status, last = Status(), NOW - timedelta(days=2)
    status.failed("download", iso(NOW - timedelta(hours=1)), "cannot reach Stash")
    assert not claim_overdue_notice(status, last, NOW)


def test_recording_keeps_success_and_failure_with_their_messages(tmp_path):
    notices = []
    with recording(StatusFile(tmp_path), "verify", Reporter(), notices.append) as run:
        run.done("Verified 2 backup(s): 2 good, 0 bad")
    with pytest.raises(DownloadError):
        with recording(StatusFile(tmp_path), "download", Reporter(), notices.append):
            raise DownloadError("the connection dropped")
    status = StatusFile(tmp_path).read()
    assert status.job("verify").last_message == "Verified 2 backup(s): 2 good, 0 bad"
    assert status.job("verify").last_success and not status.job("verify").last_failure
    assert status.job("download").failure_message == "the connection dropped"
    assert status.last_failure()[0] == "download"
    assert [n.kind for n in notices] == ["failure"]
    assert "the connection dropped" in notices[0].body


def test_a_failed_verification_without_an_exception_is_a_failure(tmp_path):
    with recording(StatusFile(tmp_path), "verify", Reporter()) as run:
        run.fail("Verified 1 backup(s): 0 good, 1 bad")
    assert StatusFile(tmp_path).read().last_failure()[1].failure_message.endswith("1 bad")


def test_a_damaged_status_file_never_fails_the_job(tmp_path):
    (tmp_path / "status.json").write_text("{not json")
    warnings = []

    class Collect(Reporter):
        def warning(self, message):
            warnings.append(message)

    with recording(StatusFile(tmp_path), "verify", Collect()) as run:
        run.done("ok")
    assert warnings and "damaged" in warnings[0]
    assert (tmp_path / "status.json").read_text() == "{not json"  # left for the user to look at


def _claim(folder: str, results) -> None:
    results.put(claim_auto_backup(Archive(folder), StatusFile(folder), parse_duration("24h")))


def test_ten_concurrent_pages_claim_one_automatic_backup(tmp_path):
    """Ten processes (the status operation of ten open tabs) at once: one wins."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_claim, args=(str(tmp_path), results)) for _ in range(10)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    claims = [results.get(timeout=5) for _ in workers]
    assert claims.count(True) == 1, claims
    assert json.loads((tmp_path / "status.json").read_text())["auto_queued_at"]


def test_a_failure_to_reach_the_archive_is_recorded_in_the_fallback(tmp_path):
    """The archive folder cannot be created (its parent is a file, like an unmounted
    share's mount point gone wrong): exactly the failure the page must still show."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    status_file = StatusFile(blocker / "archive", fallback=tmp_path / "fallback")
    with pytest.raises(DownloadError):
        with recording(status_file, "download", Reporter()):
            raise DownloadError("cannot use the archive folder")
    assert (tmp_path / "fallback" / "status.json").is_file()
    assert status_file.read().last_failure()[1].failure_message == "cannot use the archive folder"


def test_a_failure_in_the_same_second_as_a_success_is_a_failure_everywhere(tmp_path):
    """A good verify, a byte flipped, a second verify in the same second: the status
    file's counter orders them, so `status`, last_failure() and the page (which reads
    the overview's `failing`) all say failed."""
    from tests.support.harness import run_cli

    same_second = "2026-11-27T12:00:00+00:00"
    status_file = StatusFile(tmp_path)
    for change in (
        lambda s: s.started("verify", same_second),
        lambda s: s.succeeded("verify", same_second, "Verified 1 backup(s): 1 good, 0 bad"),
        lambda s: s.started("verify", same_second),
        lambda s: s.failed("verify", same_second, "Verified 1 backup(s): 0 good, 1 bad"),
    ):
        status_file.apply(change)
    status = status_file.read()
    assert status.last_failure() is not None and status.last_failure()[0] == "verify"
    assert status.job("verify").failing
    assert not status.job("verify").running_or_killed
    view = overview(Archive(tmp_path), status_file, parse_duration("1d"))
    assert view["jobs"]["verify"]["failing"] is True and view["last_failure"]["job"] == "verify"
    shown = run_cli("status", "--dest", str(tmp_path), "--max-age", "1d")
    assert (
        "verify     last run 2026-11-27T12:00:00+00:00: failed: Verified 1 backup(s): 0 good, 1 bad" in shown.stdout
    ), shown.stdout + shown.stderr
    status_file.apply(lambda s: s.succeeded("verify", same_second, "fixed"))  # and a success after it counts again
    assert not status_file.read().job("verify").failing and status_file.read().last_failure() is None


def test_a_status_file_of_an_older_version_is_still_read(tmp_path):
    """Times alone: the later one wins; a tie cannot be told apart and counts as failed
    (never hide a failure); the next event, numbered, is later than all of them."""
    old = {
        "format": 1,
        "jobs": {
            "verify": {
                "last_attempt": "2026-11-27T12:00:00+00:00",
                "last_success": "2026-11-27T12:00:00+00:00",
                "last_failure": "2026-11-27T12:00:00+00:00",
                "last_message": "?",
                "failure_message": "1 bad",
            },
            "download": {
                "last_attempt": "2026-11-27T11:00:00+00:00",
                "last_success": "2026-11-27T11:00:00+00:00",
                "last_failure": "2026-11-26T11:00:00+00:00",
                "last_message": "ok",
                "failure_message": "x",
                "success_seq": "not a number",
            },
        },
    }
    (tmp_path / "status.json").write_text(json.dumps(old))
    status = StatusFile(tmp_path).read()
    assert status.last_failure() is not None and status.last_failure()[0] == "verify"
    assert status.job("verify").failing and not status.job("download").failing
    StatusFile(tmp_path).apply(lambda s: s.succeeded("verify", "2026-11-27T11:59:59+00:00", "good again"))
    assert not StatusFile(tmp_path).read().job("verify").failing  # numbered: after every unnumbered event
