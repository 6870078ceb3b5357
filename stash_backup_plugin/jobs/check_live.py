"""The *Check live database* job: SQLite's `PRAGMA quick_check` of the database Stash
is running on, read without changing it (core/sqlite_check.open_unchanged: in WAL mode
SQLite's own read-only reader, which touches neither the file, its -wal nor its -shm).
A damaged result starts a damage spell in status.json, and while it lasts retention
removes nothing (`retention_hold`): the backups from before the damage are the ones to
restore (jobs/retention.retention_hold). A healthy backup ends it (`healthy_backup_made`)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ..core.archive import utc_now
from ..core.errors import ConfigError, StashBackupError, VerificationError
from ..core.reporting import Reporter, human_size
from ..core.sqlite_check import QUICK, has_sqlite_header, integrity_problems, open_unchanged
from ..core.status import (
    LIVE_CHECK_JOB,
    MALFORMED,
    StatusFile,
    record_healthy_backup,
    record_live_damage,
)
from .status import Notify, recording

DAMAGED = "live database damaged"
# A page torn by a checkpoint running while we read could look like damage: damage is
# only reported when a second, fresh read finds it too.
CONFIRMING_READS = 2
DETAIL_LIMIT = 300  # characters of SQLite's findings in the one line (a damaged page can list hundreds)


@dataclass
class LiveCheck:
    database: str
    ok: bool
    detail: str  # SQLite's finding when damaged
    seconds: float
    size: int

    def line(self) -> str:
        if self.ok:
            return (
                f"live database healthy: PRAGMA quick_check ok ({self.database}, {human_size(self.size)}, "
                f"{self.seconds:.1f} s)"
            )
        detail = self.detail if len(self.detail) <= DETAIL_LIMIT else self.detail[:DETAIL_LIMIT] + "…"
        return f"{DAMAGED}: {self.database} failed PRAGMA quick_check: {detail}"


def quick_check_live(database: Path) -> LiveCheck:
    """The check itself; damage is confirmed by a second read. A database that cannot be
    read for another reason (missing, no permission) is an error, not damage."""
    if not database.is_file():
        raise ConfigError(f"{database}: no such file (the live database; pass --database PATH)")
    started = time.monotonic()
    detail = ""
    for _ in range(CONFIRMING_READS):
        detail = _findings(database)
        if not detail:
            break
    return LiveCheck(str(database), not detail, detail, time.monotonic() - started, database.stat().st_size)


def quick_check_copy(database: Path, copy: Path) -> LiveCheck:
    """The check of a consistent copy of the live database (jobs/live_copy: one
    committed state, read under SQLite's locks): nothing can tear it, so one read
    decides; the result names the live file."""
    started = time.monotonic()
    detail = _findings(copy).replace(str(copy), str(database))
    return LiveCheck(str(database), not detail, detail, time.monotonic() - started, copy.stat().st_size)


def _findings(database: Path) -> str:
    try:
        if not has_sqlite_header(database):
            return "not an SQLite database (bad header)"
        with open_unchanged(database) as connection:
            return integrity_problems(connection, QUICK)
    except OSError as error:
        raise VerificationError(f"cannot read the live database {database}: {error.strerror or error}") from None
    except sqlite3.DatabaseError as error:
        text = str(error)
        if "malformed" in text or "not a database" in text or "corrupt" in text:
            return text
        raise VerificationError(f"cannot check the live database {database}: {text}") from None


def check_live(
    database: Path,
    status_file: StatusFile,
    report: Reporter,
    notify: Optional[Notify] = None,
    ping: str = "",
    copy: Optional[Path] = None,
) -> LiveCheck:
    """The recorded job: its outcome in status.json (a damaged database is a failure,
    notified like any), and damage starts the spell that holds retention. `copy`: a
    consistent copy of `database`, read instead of it."""
    with recording(status_file, LIVE_CHECK_JOB, report, notify, ping=ping) as run:
        result = quick_check_live(database) if copy is None else quick_check_copy(database, copy)
        if result.ok:
            report.info(result.line())
            run.done(result.line())
        else:
            _record_damage(status_file, result.line(), report)
            run.fail(result.line())
    return result


def _record_damage(status_file: StatusFile, reason: str, report: Reporter) -> None:
    try:
        status_file.apply(lambda status: record_live_damage(status, utc_now(), reason))
    except StashBackupError as error:
        report.warning(f"the live database's damage was not recorded: {error}")


def live_database(server_path: Optional[str], given: Optional[Path], report: Reporter) -> Optional[Path]:
    """Which database the check reads: the one given, else the server's own when it is
    readable here (on Stash's host); None (said once) when there is none to read."""
    if given:
        return given.expanduser()
    candidate = Path(server_path) if server_path else None
    if candidate and candidate.is_file() and os.access(candidate, os.R_OK):
        return candidate
    report.info(
        "the live database is not readable here (run on Stash's host, or pass --database PATH): "
        "its health check is skipped"
    )
    return None


def check_before_download(
    database: Optional[Path], status_file: StatusFile, report: Reporter, notify: Optional[Notify] = None, ping: str = ""
) -> Optional[LiveCheck]:
    """The check that runs with every download: a damaged database is recorded and
    notified, and the download goes on (a backup of it may still be worth having; the
    spell keeps retention from removing older ones). One that cannot run is a warning."""
    if database is None:
        return None
    try:
        result = check_live(database, status_file, report, notify, ping)
    except StashBackupError as error:
        report.warning(f"the live database check did not run: {report.redact(str(error))}")
        return None
    if not result.ok:
        report.error(result.line())
    return result


@dataclass
class HealthCheck:
    """The live database's check for one download (jobs/download): of the live copy
    when the download takes one (one consistent read, checked once, and its result is
    also the backup's check), else of the live file before Stash's own backup."""

    database: Optional[Path]  # the live database readable here; None: no check
    status_file: StatusFile
    report: Reporter
    notify: Optional[Notify] = None
    done: bool = False

    def of_live_file(self) -> None:
        if not self.done:
            self.done = True
            check_before_download(self.database, self.status_file, self.report, self.notify)

    def of_copy(self, live: Path, copy: Path) -> Optional[bool]:
        """Whether the copy of `live` is healthy; None when it was not checked here."""
        if self.done or self.database is None or self.database != live:
            return None
        self.done = True
        try:
            result = check_live(self.database, self.status_file, self.report, self.notify, copy=copy)
        except StashBackupError as error:
            self.report.warning(f"the live database check did not run: {self.report.redact(str(error))}")
            return None
        if not result.ok:
            self.report.error(result.line())
        return result.ok


@contextlib.contextmanager
def download_watch(status_file: StatusFile, report: Reporter) -> Iterator[None]:
    """Around a download: Stash's backup failing on a malformed database starts a
    damage spell, as the check's finding would."""
    try:
        yield
    except StashBackupError as error:
        if MALFORMED in str(error):
            _record_damage(status_file, f"{DAMAGED}: Stash's own backup failed: {report.redact(str(error))}", report)
        raise


def healthy_backup_made(status_file: StatusFile, report: Reporter) -> None:
    """A verified backup was archived: it ends a damage spell unless the live check
    that ran with it found damage."""
    try:
        ended = status_file.apply(record_healthy_backup)
    except StashBackupError as error:
        report.warning(f"the backup status was not recorded: {error}")
        return
    if ended:
        report.info("a healthy backup was made after the live database's damage: retention runs again")
