"""What the jobs did, for the Backups page and `stash-backup status`: one place records
every job's attempt and outcome (plugin and CLI alike) and sends the failure notice;
status.json lives in the archive folder, or where that cannot be written, in the
caller's fallback folder (core/status.py). Also the overdue check and the page's overview."""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator, Optional

from ..core.archive import Archive, Entry, utc_now
from ..core.atomic import free_space
from ..core.errors import StashBackupError
from ..core.reporting import Reporter
from ..server.notify import PING_FAIL, PING_START, PING_SUCCESS, send_ping
from ..core.retention import Duration
from .retention import restore_candidate
from ..core.status import (
    LIVE_CHECK_JOB,
    Notice,
    Status,
    StatusFile,
    auto_window,
    claim_auto_run,
    claim_overdue_notice,
    failure_notice,
    is_stale,
    iso,
    overdue_notice,
    parse_time,
)

Notify = Callable[[Notice], None]


class JobRun:
    """What a recorded job ended with; an exception inside `recording` is a failure too."""

    def __init__(self):
        self.ok, self.message = True, ""

    def done(self, message: str) -> None:
        self.ok, self.message = True, message

    def fail(self, message: str) -> None:
        self.ok, self.message = False, message

    @classmethod
    def failure(cls, message: str) -> "JobRun":
        run = cls()
        run.fail(message)
        return run


@contextlib.contextmanager
def recording(
    status_file: StatusFile, job: str, report: Reporter, notify: Optional[Notify] = None, ping: str = ""
) -> Iterator[JobRun]:
    """Record the attempt, then its outcome, in the archive's status.json; notify on
    failure; with a `ping` URL, tell an outside monitor (healthchecks.io style) that
    the job started, succeeded or failed. A status file that cannot be written or a
    ping that cannot be delivered is reported, never fatal: the backup itself matters
    more than its record."""
    run = JobRun()
    _update_status(status_file, report, lambda status: status.started(job, utc_now()))
    if ping:
        send_ping(ping, PING_START, f"stash-backup {job}: started", report)
    try:
        yield run
    except StashBackupError as error:
        _finish(status_file, job, JobRun.failure(report.redact(str(error))), report, notify, ping)
        raise
    except BaseException as error:  # a bug or an interrupt still ends the attempt
        _finish(
            status_file,
            job,
            JobRun.failure(f"stopped: {type(error).__name__} {report.redact(str(error))}".strip()),
            report,
            notify,
            ping,
        )
        raise
    run.message = report.redact(run.message)
    _finish(status_file, job, run, report, notify, ping)


def _finish(
    status_file: StatusFile, job: str, run: JobRun, report: Reporter, notify: Optional[Notify], ping: str = ""
) -> None:
    now = utc_now()
    if ping:
        send_ping(
            ping,
            PING_SUCCESS if run.ok else PING_FAIL,
            f"stash-backup {job}: {'ok' if run.ok else 'failed'}: {run.message}",
            report,
        )
    if run.ok:
        _update_status(status_file, report, lambda status: status.succeeded(job, now, run.message))
        return
    _update_status(status_file, report, lambda status: status.failed(job, now, run.message))
    if notify:
        notify(failure_notice(job, run.message, status_file.folder))


def _update_status(status_file: StatusFile, report: Reporter, change: Callable[[Status], None]) -> None:
    try:
        status_file.apply(change)
    except StashBackupError as error:
        report.warning(f"the backup status was not recorded: {error}")


def interval_timedelta(interval: Duration, now: Optional[datetime] = None) -> timedelta:
    now = now or datetime.now(timezone.utc)
    return now - interval.before(now)


def last_verified_time(archive: Archive) -> Optional[datetime]:
    newest = archive.newest_verified()
    return parse_time(newest.added_at) if newest else None


def check_overdue(
    archive: Archive,
    status_file: StatusFile,
    interval: Duration,
    report: Reporter,
    notify: Optional[Notify] = None,
    factor: float = 1.0,
) -> bool:
    """Whether the newest verified backup is older than `factor` times the interval;
    the first check of each overdue spell sends the overdue notice."""
    now = datetime.now(timezone.utc)
    max_age, last = interval_timedelta(interval, now), last_verified_time(archive)
    if not is_stale(last, max_age * factor, now):
        return False
    if notify:
        try:
            claimed, failure = status_file.apply(
                lambda status: (claim_overdue_notice(status, last, now), status.last_failure())
            )
        except StashBackupError as error:
            report.warning(f"the overdue notice was not sent: {error}")
            return True
        if claimed:
            notify(overdue_notice(last, max_age, now, archive.folder, failure[1].failure_message if failure else ""))
    return True


def claim_auto_backup(archive: Archive, status_file: StatusFile, interval: Duration) -> bool:
    """Whether this caller should queue an automatic backup now: the backup is stale
    and no other caller queued one (or a backup ran) within the hold-off window."""
    now = datetime.now(timezone.utc)
    max_age = interval_timedelta(interval, now)
    if not is_stale(last_verified_time(archive), max_age, now):
        return False
    return status_file.apply(lambda status: claim_auto_run(status, now, auto_window(max_age)))


def overview(archive: Archive, status_file: StatusFile, interval: Duration) -> dict:
    """Everything the Backups page shows, as JSON-ready values."""
    now = datetime.now(timezone.utc)
    max_age = interval_timedelta(interval, now)
    entries = archive.entries()
    status = status_file.read()
    last = last_verified_time(archive)
    failure = status.last_failure()
    return {
        "now": iso(now),
        "archive": {
            "folder": str(archive.folder),
            "backups": len(entries),
            # what the backups added (blobs stored once), without walking every blob file
            "size": sum(e.new_bytes if e.is_stored else e.size for e in entries),
            "free": free_space(archive.folder),
        },
        "interval": str(interval),
        "interval_seconds": int(max_age.total_seconds()),
        "last_verified": iso(last) if last else None,
        "last_verified_age_seconds": int((now - last).total_seconds()) if last else None,
        "stale": is_stale(last, max_age, now),
        "backups": [_entry_view(e) for e in entries],
        "jobs": {
            name: dict(asdict(record), running=record.running_or_killed, failing=record.failing)
            for name, record in status.jobs.items()
        },
        "last_failure": {"job": failure[0], "at": failure[1].last_failure, "message": failure[1].failure_message}
        if failure
        else None,
        "auto_queued_at": status.auto_queued_at or None,
        "live_database": live_database_view(archive, status),
    }


def live_database_view(archive: Archive, status: Status) -> Optional[dict]:
    """The live database's last check and damage spell, with the backup to restore."""
    record = status.jobs.get(LIVE_CHECK_JOB)
    if record is None:
        return None
    candidate = restore_candidate(archive, record.damaged_since) if record.damaged_since else None
    return {
        "checked_at": record.last_attempt or None,
        "ok": not record.failing and not record.damaged_since,
        "message": record.last_message,
        "damaged_since": record.damaged_since or None,
        "damage_reason": record.damage_reason or None,
        "restore": candidate.file if candidate else None,
    }


def _entry_view(entry: Entry) -> dict:
    view = asdict(entry)
    if not entry.is_stored:
        view["new_bytes"] = entry.size  # an older per-backup file holds all it needs itself
    return view
