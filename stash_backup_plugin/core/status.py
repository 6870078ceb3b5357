"""What the jobs did last, kept in the archive folder as `status.json`: per job the
last attempt, success and failure with their messages; when the stale-backup
notice went out; when a Stash page last queued an automatic backup. Stash's job
queue says a plugin task FINISHED even when it failed, so the Backups page and
`stash-backup status` read this instead.

The model and its rules are pure; `StatusFile` reads and rewrites the file
atomically under a short lock of its own (not the archive's: a page asks for the
status while a backup holds the archive)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Optional, TypeVar

from .atomic import make_folders, open_lock_file, storage_error, write_bytes_atomic
from .errors import StorageError

T = TypeVar("T")
STATUS_NAME = "status.json"
STATUS_LOCK_NAME = ".stash-backup-status.lock"
FORMAT = 1
LOCK_WAIT_SECONDS = 10.0  # status updates take milliseconds; longer means a stuck process
# The jobs that count for "the last backup": a verified copy in the archive.
BACKUP_JOB = "download"
JOB_TITLES = {
    "backup": "Backup database",
    "download": "Back up to archive",
    "verify": "Verify archive",
    "retention": "Apply retention",
    "offsite": "Copy off-site",
    "drill": "Restore drill",
    "check-live": "Check live database",
    "snapshot": "Snapshot of the stopped Stash",
}


@dataclass
class JobRecord:
    last_attempt: str = ""  # UTC ISO times; "" = never
    last_success: str = ""
    last_failure: str = ""
    last_message: str = ""  # the last finished attempt's outcome line or error
    failure_message: str = ""  # the last failure's error, kept after later successes
    # The order of events: the status file's counter when each was recorded (under its
    # lock), so that two events in the same second cannot tie. 0: recorded by a version
    # that kept times alone; any numbered event is later than every unnumbered one.
    attempt_seq: int = 0
    success_seq: int = 0
    failure_seq: int = 0
    # check-live only: when the live database was first seen damaged in this spell ("": not known damaged)
    damaged_since: str = ""
    damaged_seq: int = 0
    damage_reason: str = ""  # what showed it: the check's finding, or Stash's failed backup

    @property
    def running_or_killed(self) -> bool:
        """An attempt started after the last one that ended."""
        return bool(self.last_attempt) and _order(self.attempt_seq, self.last_attempt) > max(
            _order(self.success_seq, self.last_success), _order(self.failure_seq, self.last_failure)
        )

    @property
    def failing(self) -> bool:
        """Its last outcome was a failure: the one rule, also for the Backups page (which
        reads it from the overview). Two unnumbered events in the same second cannot be
        told apart: that counts as failing (a failure is never hidden)."""
        return bool(self.last_failure) and _order(self.failure_seq, self.last_failure) >= _order(
            self.success_seq, self.last_success
        )

    @classmethod
    def from_dict(cls, data: dict) -> "JobRecord":
        known = {f.name: f.type for f in fields(cls)}
        values: dict = {k: _number(v) if known[k] == "int" else str(v) for k, v in data.items() if k in known}
        return cls(**values)


def _order(seq: int, moment: str) -> tuple[int, str]:
    return seq, moment


def _number(value) -> int:
    """A sequence number as read from the file: anything but a whole number >= 0 is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass
class Status:
    jobs: dict = field(default_factory=dict)  # job name -> JobRecord
    auto_queued_at: str = ""
    overdue_notified_at: str = ""
    sequence: int = 0  # the last event's number (JobRecord's *_seq)

    def job(self, name: str) -> JobRecord:
        return self.jobs.setdefault(name, JobRecord())

    def _next(self) -> int:
        numbers = [self.sequence] + [max(r.attempt_seq, r.success_seq, r.failure_seq) for r in self.jobs.values()]
        self.sequence = max(numbers) + 1
        return self.sequence

    def started(self, name: str, now: str) -> None:
        record = self.job(name)
        record.last_attempt, record.attempt_seq = now, self._next()

    def succeeded(self, name: str, now: str, message: str) -> None:
        record = self.job(name)
        record.last_success, record.last_message, record.success_seq = now, message, self._next()

    def failed(self, name: str, now: str, message: str) -> None:
        record = self.job(name)
        record.last_failure, record.last_message, record.failure_message = now, message, message
        record.failure_seq = self._next()

    def last_failure(self) -> Optional[tuple[str, JobRecord]]:
        """The most recent failure of any job that has not succeeded since."""
        failing = [(name, r) for name, r in self.jobs.items() if r.failing]
        return max(failing, key=lambda item: (item[1].last_failure, item[1].failure_seq), default=None)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "jobs": {name: asdict(r) for name, r in sorted(self.jobs.items())},
            "auto_queued_at": self.auto_queued_at,
            "overdue_notified_at": self.overdue_notified_at,
            "sequence": self.sequence,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Status":
        jobs = {
            str(name): JobRecord.from_dict(r) for name, r in (data.get("jobs") or {}).items() if isinstance(r, dict)
        }
        return cls(
            jobs,
            str(data.get("auto_queued_at") or ""),
            str(data.get("overdue_notified_at") or ""),
            _number(data.get("sequence")),
        )


# --- rules (pure) --------------------------------------------------------------------


def parse_time(text: str) -> Optional[datetime]:
    """A recorded UTC time; None for none, or for one a hand edit made unreadable."""
    try:
        moment = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat()


def is_stale(last_verified: Optional[datetime], max_age: timedelta, now: datetime) -> bool:
    """No verified backup, or the newest is older than the interval."""
    return last_verified is None or now - last_verified > max_age


def claim_auto_run(status: Status, now: datetime, window: timedelta) -> bool:
    """Whether this caller may queue the automatic backup: at most one per window,
    counted from the last automatic queueing and from the last backup attempt (so
    a failing backup is not retried by every page view, and ten open tabs queue one)."""
    recent = [parse_time(status.auto_queued_at), parse_time(status.job(BACKUP_JOB).last_attempt)]
    if any(moment and now - moment < window for moment in recent):
        return False
    status.auto_queued_at = iso(now)
    return True


def claim_overdue_notice(status: Status, last_verified: Optional[datetime], now: datetime) -> bool:
    """One message per stale spell: no overdue notice when one went out since the last
    verified backup, nor when a failure since then was reported already."""

    def since_last_backup(moment: Optional[datetime]) -> bool:
        return moment is not None and (last_verified is None or moment > last_verified)

    failure = status.last_failure()
    if since_last_backup(parse_time(status.overdue_notified_at)) or since_last_backup(
        parse_time(failure[1].last_failure) if failure else None
    ):
        return False
    status.overdue_notified_at = iso(now)
    return True


def auto_window(interval: timedelta) -> timedelta:
    """How long an automatic backup attempt holds off the next: an hour, or half
    the interval when that is shorter."""
    return min(timedelta(hours=1), interval / 2)


def describe_age(age: timedelta) -> str:
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


# --- notices (pure): what a failed or overdue backup says ------------------------------


@dataclass(frozen=True)
class Notice:
    title: str
    body: str
    kind: str  # "failure" or "warning" (Apprise's notify types)


def failure_notice(job: str, message: str, archive_folder: Path) -> Notice:
    title = f"Stash backup failed: {JOB_TITLES.get(job, job)}"
    body = (
        f"{JOB_TITLES.get(job, job)} failed: {message}\n"
        f"Archive: {archive_folder}\n"
        "What to do: fix the cause named above, then run the job again (Stash > Backups, or "
        "stash-backup on the command line). Until then your newest backup gets older."
    )
    return Notice(title, body, "failure")


def overdue_notice(
    last_verified: Optional[datetime], interval: timedelta, now: datetime, archive_folder: Path, last_failure: str = ""
) -> Notice:
    if last_verified is None:
        age_line = "There is no verified backup yet"
    else:
        age_line = f"The newest verified backup is {describe_age(now - last_verified)} old"
    body = (
        f"{age_line} (expected every {describe_age(interval)}).\nArchive: {archive_folder}\n"
        + (f"Last failure: {last_failure}\n" if last_failure else "")
        + "What to do: open Stash > Backups and press Back up now, and check that the schedule "
        "(stash-backup schedule show, or the plugin's automatic backups) is running."
    )
    return Notice("Stash backup overdue", body, "warning")


def merge(first: Status, second: Status) -> Status:
    """Two status files' knowledge as one: per job the record of the later attempt."""
    merged = Status(
        dict(first.jobs),
        max(first.auto_queued_at, second.auto_queued_at),
        max(first.overdue_notified_at, second.overdue_notified_at),
        max(first.sequence, second.sequence),
    )
    for name, record in second.jobs.items():
        if name not in merged.jobs or record.last_attempt > merged.jobs[name].last_attempt:
            merged.jobs[name] = record
    return merged


# --- the file --------------------------------------------------------------------------


class StatusFile:
    """status.json in the archive folder; where that folder cannot be written (an
    unmounted disk, a wrong setting: exactly when a failure must be recorded), in
    the fallback folder instead. Reading merges both."""

    def __init__(self, folder: Path, fallback: Optional[Path] = None):
        self.folder = Path(folder)
        self.fallback = Path(fallback) if fallback else None

    @property
    def path(self) -> Path:
        return self.folder / STATUS_NAME

    def read(self) -> Status:
        status = _read(self.path)
        if self.fallback:
            with contextlib.suppress(StorageError):
                status = merge(status, _read(self.fallback / STATUS_NAME))
        return status

    def apply(self, change: Callable[[Status], T]) -> T:
        """Read, change, write back atomically, one writer at a time; returns what
        `change` returns. Falls back to the fallback folder when the archive's fails."""
        try:
            return _apply(self.folder, change, self.read)
        except StorageError:
            if not self.fallback:
                raise
            return _apply(self.fallback, change, self.read)


def _read(path: Path) -> Status:
    try:
        if not path.is_file():
            return Status()
        data = json.loads(path.read_text(encoding="utf-8"))
        return Status.from_dict(data if isinstance(data, dict) else {})
    except (ValueError, TypeError, AttributeError) as error:
        raise StorageError(f"{path} is damaged ({error}): move it aside; the next job writes a new one") from error
    except OSError as error:
        raise storage_error("read", path, error) from error


def _apply(folder: Path, change: Callable[[Status], T], read: Callable[[], Status]) -> T:
    try:
        make_folders(folder)
        handle = open_lock_file(folder / STATUS_LOCK_NAME)
    except OSError as error:
        raise storage_error("write the backup status into", folder, error) from error
    with handle:
        _wait_for_lock(handle, folder / STATUS_NAME)
        status = read()
        result = change(status)
        write_bytes_atomic(folder / STATUS_NAME, (json.dumps(status.to_dict(), indent=2) + "\n").encode())
        return result


def _wait_for_lock(handle, path: Path) -> None:
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            _try_lock(handle)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise StorageError(
                    f"{path} stayed locked for {LOCK_WAIT_SECONDS:.0f} s by another stash-backup process: try again"
                ) from None
            time.sleep(0.05)


def _try_lock(handle) -> None:
    if os.name == "nt":
        import msvcrt

        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]  # Windows only
        return
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


# --- the live database's health (pure) ---------------------------------------------------
# The *Check live database* job's record also carries the damage spell: when damage was
# first seen (by the check, or by Stash's own backup failing on a malformed database).
# While that is set, retention removes nothing: the backups from before the damage are
# the ones to restore. A healthy backup (a download after the live check passed) ends it.

LIVE_CHECK_JOB = "check-live"
JOB_TITLES[LIVE_CHECK_JOB] = "Check live database"
MALFORMED = "database disk image is malformed"  # SQLite's SQLITE_CORRUPT message, as Stash passes it on


def record_live_damage(status: Status, now: str, reason: str) -> None:
    """Damage seen now; the spell's first sighting is kept, the reason is the latest."""
    record = status.job(LIVE_CHECK_JOB)
    if not record.damaged_since:
        record.damaged_since, record.damaged_seq = now, status._next()
    record.damage_reason = reason


def record_healthy_backup(status: Status) -> bool:
    """A verified backup was made: it ends the damage spell unless the live database's
    last check still failed (then the backup was made of a damaged database). Returns
    whether a spell ended."""
    record = status.jobs.get(LIVE_CHECK_JOB)
    if not record or not record.damaged_since or record.failing:
        return False
    record.damaged_since, record.damaged_seq, record.damage_reason = "", 0, ""
    return True


def live_damage(status: Status) -> Optional[JobRecord]:
    """The check-live record while the live database is known damaged, else None."""
    record = status.jobs.get(LIVE_CHECK_JOB)
    return record if record and record.damaged_since else None
