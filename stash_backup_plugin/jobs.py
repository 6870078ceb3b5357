"""The four jobs, as a library: make a backup on the server, bring a verified backup
into the archive, re-verify the archive, apply retention. The plugin and the CLI
are thin layers over these functions."""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

from .core import backup_zip as fullbackup
from .core.archive import Archive, Entry, backup_files, entry_from_name, utc_now
from .core.atomic import discard, staged_file
from .core.errors import (ConfigError, DownloadError, LinkExpiredError, StashBackupError,
                     VerificationError)
from .server.api import UNKNOWN_SERVER, Downloaded, ServerInfo, StashAPI
from .core.naming import blob_relative_path, zip_name_for
from .core.reporting import Reporter, human_size
from .core.retention import Decision, Duration, Policy, plan_retention
from .core.sqlite_check import QUICK, check_database
from .core.status import (Notice, Status, StatusFile, auto_window, claim_auto_run, claim_overdue_notice,
                          failure_notice, is_stale, iso, overdue_notice, parse_time)
from .core.verify import BackupReport, require_blobs, verify_backup

FRESH_BACKUP_ATTEMPTS = 3  # a link that expired mid-download needs a new backup


@dataclass
class DownloadOptions:
    include_blobs: bool = True
    blobs_path: Optional[Path] = None  # override for building our own zip (old servers)
    check_level: str = QUICK
    if_older_than: Optional[Duration] = None


# --- Backup on the server ---------------------------------------------------------

@dataclass
class ServerBackup:
    path: Optional[Path]
    size: Optional[int]
    includes_blobs: bool


def backup_on_server(client: StashAPI, include_blobs: bool, report: Reporter) -> ServerBackup:
    """Stash's own backup into its backup folder, with blobs where the server can."""
    info = client.server_info()
    with_blobs = include_blobs and info.blobs_on_filesystem and info.supports_include_blobs
    folder = _server_backup_folder(info)
    before = _backup_files(folder)
    report.progress(0.05, "backing up")
    client.backup_database(download=False, include_blobs=with_blobs if info.supports_include_blobs else None)
    made = sorted(_backup_files(folder) - before, key=lambda p: p.stat().st_mtime)
    path = made[-1] if made else None
    size = path.stat().st_size if path else None
    where = f"{path} ({human_size(size)})" if path else f"Stash's backup folder {folder or ''} (not readable from here)"
    report.info(f"Stash backed up its database{' with blobs' if with_blobs else ''} to {where}")
    if include_blobs and info.blobs_on_filesystem and not info.supports_include_blobs:
        report.warning(f"Stash {info.version} cannot include blobs in its own backup: use 'Download backup to archive' "
                       "for a full backup with images")
    report.progress(1.0)
    return ServerBackup(path, size, with_blobs)


def _server_backup_folder(info: ServerInfo) -> Optional[Path]:
    if info.backup_directory:
        return Path(info.backup_directory)
    return Path(info.database_path).parent if info.database_path else None


def _backup_files(folder: Optional[Path]) -> set[Path]:
    return {path for path, _ in backup_files(folder)}


# --- Download into the archive ------------------------------------------------------

@dataclass
class DownloadOutcome:
    entry: Optional[Entry]
    skipped_reason: str = ""


def download_to_archive(client: StashAPI, archive: Archive, options: DownloadOptions,
                        report: Reporter) -> DownloadOutcome:
    with archive.locked():
        skip = _skip_reason(archive, options.if_older_than)
        if skip:
            report.info(skip)
            return DownloadOutcome(None, skip)
        info = client.server_info()
        want_blobs = options.include_blobs and info.blobs_on_filesystem
        if want_blobs and info.supports_include_blobs:
            entry = _fetch_verified(client, archive, info, options, report, include_blobs=True, source="server-zip")
        elif want_blobs:
            entry = _fetch_and_pack_blobs(client, archive, info, options, report)
        else:
            entry = _fetch_verified(client, archive, info, options, report, include_blobs=False, source="database")
        report.info(f"Archived {entry.file}: {human_size(entry.size)}, schema {entry.schema_version}, "
                    f"{entry.blob_count} blob(s), sha256 {entry.sha256[:16]}…, verified ({entry.verified_level})")
        return DownloadOutcome(entry)


def _skip_reason(archive: Archive, if_older_than: Optional[Duration]) -> str:
    if not if_older_than:
        return ""
    newest = archive.newest_verified()
    if not newest:
        return ""
    added = datetime.fromisoformat(newest.added_at)
    if added > if_older_than.before(datetime.now(timezone.utc)):
        return f"Skipped: the newest verified backup {newest.file} is younger than {if_older_than}"
    return ""


def _request_and_download(client: StashAPI, folder: Path, include_blobs: Optional[bool],
                          report: Reporter) -> tuple[Downloaded, str]:
    """Ask for a download backup and fetch it; on an expired link or a failed transfer
    ask for a fresh one, a bounded number of times."""
    last_error: Optional[StashBackupError] = None
    for attempt in range(1, FRESH_BACKUP_ATTEMPTS + 1):
        report.progress(0.0, "backing up")
        link = client.backup_database(download=True, include_blobs=include_blobs)
        if not link:
            raise DownloadError("Stash returned no download link for the backup: is this a Stash server?")
        name = link.rstrip("/").rsplit("/", 1)[-1]
        entry_from_name(name)  # refuse anything that is not a Stash backup name
        try:
            fetched = client.fetch_backup(link, folder, name, progress=report.bytes_progress("downloading"))
            if fetched.resumes:
                report.warning(f"the connection dropped; resumed {fetched.resumes} time(s)")
            return fetched, name
        except (LinkExpiredError, DownloadError) as error:
            last_error = error
            if isinstance(error, LinkExpiredError) or attempt < FRESH_BACKUP_ATTEMPTS:
                report.warning(f"download attempt {attempt} failed ({error}); asking Stash for a fresh backup")
    raise DownloadError(f"gave up after {FRESH_BACKUP_ATTEMPTS} fresh backups: {last_error}")


def _fetch_verified(client, archive: Archive, info: ServerInfo, options: DownloadOptions,
                    report: Reporter, include_blobs: bool, source: str) -> Entry:
    flag = include_blobs if info.supports_include_blobs else None
    fetched, name = _request_and_download(client, archive.folder, flag, report.phase(0.0, 0.7))
    try:
        verified = verify_backup(fetched.temp_path, options.check_level, known_sha256=fetched.sha256,
                                 progress=report.phase(0.7, 1.0).bytes_progress("verifying"))
        if verified.kind == "zip" and verified.blobs_not_included:
            report.warning(f"{len(verified.blobs_not_included)} blob(s) the database refers to are missing on the "
                           f"server (e.g. {sorted(verified.blobs_not_included)[0]}): the backup cannot hold them")
        entry = _entry(name, verified, info, source, options.check_level)
        return archive.add(fetched.temp_path, entry)
    finally:
        discard(fetched.temp_path)


def _fetch_and_pack_blobs(client, archive: Archive, info: ServerInfo, options: DownloadOptions,
                          report: Reporter) -> Entry:
    """Servers without `includeBlobs`: fetch the database and build the full-backup
    zip ourselves from the blobs folder, in Stash v0.31's layout."""
    blobs_path = options.blobs_path or (Path(info.blobs_path) if info.blobs_path else None)
    if not blobs_path or not blobs_path.is_dir():
        raise ConfigError(f"blobs are stored on the filesystem at {blobs_path or '(unknown)'}, which is not readable "
                          "here: run on the Stash host, pass --blobs-path DIR, or use --no-blobs")
    fetched, name = _request_and_download(client, archive.folder, None, report.phase(0.0, 0.4))
    zip_name, packed = zip_name_for(name), None
    try:
        database = check_database(fetched.temp_path, options.check_level)
        blob_files, missing = _blob_files(database.blobs_on_filesystem, blobs_path)
        if missing:
            report.warning(f"{len(missing)} blob(s) the database refers to are missing from {blobs_path} "
                           f"(e.g. {missing[0]}): the backup cannot hold them")
        database_member = Path(info.database_path).name if info.database_path else name.split(".")[0]
        packed = _pack(archive.folder, zip_name, fetched, database_member, blob_files, report.phase(0.4, 0.7))
        discard(fetched.temp_path)
        verified = verify_backup(packed, options.check_level,
                                 progress=report.phase(0.7, 1.0).bytes_progress("verifying"))
        require_blobs(verified, tolerated=len(missing))
        entry = _entry(zip_name, verified, info, "plugin-zip", options.check_level)
        return archive.add(packed, entry)
    finally:
        discard(fetched.temp_path)
        if packed:
            discard(packed)


def _pack(folder: Path, zip_name: str, fetched: Downloaded, database_member: str, blob_files,
          report: Reporter) -> Path:
    """The full-backup zip, in a temp file beside its final place."""
    total = fetched.size + sum(p.stat().st_size for _, p in blob_files)
    done = [0]

    def advance(count: int) -> None:
        done[0] += count
        report.progress(done[0] / total if total else 1.0, "packing blobs")

    with staged_file(folder, zip_name) as (handle, packed):
        fullbackup.write_full_backup(handle, fetched.temp_path, database_member, blob_files, advance)
    return packed


def _blob_files(checksums: set[str], blobs_path: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    present, missing = [], []
    for checksum in sorted(checksums):
        path = blobs_path / blob_relative_path(checksum)
        (present.append((checksum, path)) if path.is_file() else missing.append(checksum))
    return present, missing


def _entry(name: str, verified: BackupReport, info: ServerInfo, source: str, level: str) -> Entry:
    return Entry(file=name, size=verified.size, sha256=verified.sha256, **entry_from_name(name),
                 kind=verified.kind, blob_count=verified.blob_count, includes_blobs=verified.kind == "zip",
                 blobs_not_included=len(verified.blobs_not_included), source=source,
                 server_version=info.version or "", verified_at=utc_now(), verified_level=level, verified_ok=True)


# --- Verify the archive ------------------------------------------------------------

@dataclass
class VerifySummary:
    checked: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        text = f"Verified {self.checked} backup(s): {self.checked - len(self.failed)} good, {len(self.failed)} bad"
        return text + (f"; adopted {len(self.adopted)} unrecorded file(s)" if self.adopted else "")


def verify_archive(archive: Archive, level: str, report: Reporter) -> VerifySummary:
    summary = VerifySummary()
    with archive.locked():
        work = [(e, archive.path_of(e)) for e in archive.entries()]
        work += [(None, p) for p in archive.unregistered_files()]
        for index, (entry, path) in enumerate(work):
            step = report.phase(index / len(work), (index + 1) / len(work))
            summary.checked += 1
            problem = _verify_one(archive, entry, path, level, step, summary)
            if problem:
                summary.failed.append((path.name, problem))
                report.error(f"BAD {path.name}: {problem}")
            else:
                report.info(f"ok  {path.name}")
    report.progress(1.0)
    return summary  # the caller shows summary.line(): the plugin answers it as its error when bad


def _verify_one(archive: Archive, entry: Optional[Entry], path: Path, level: str, report: Reporter,
                summary: VerifySummary) -> str:
    try:
        verified = verify_backup(path, level, expected_size=entry.size if entry else None,
                                 expected_sha256=entry.sha256 if entry else None,
                                 progress=report.bytes_progress("verifying"))
        if verified.kind == "zip":
            require_blobs(verified, tolerated=entry.blobs_not_included if entry else 0)
    except VerificationError as error:
        if entry:
            entry.verified_at, entry.verified_level, entry.verified_ok, entry.verify_error = utc_now(), level, False, str(error)
            archive.record(entry)
        return str(error)
    if entry is None:
        entry = _entry(path.name, verified, UNKNOWN_SERVER, "adopted", level)
        summary.adopted.append(path.name)
    entry.verified_at, entry.verified_level, entry.verified_ok, entry.verify_error = utc_now(), level, True, ""
    archive.record(entry)
    return ""


# --- Retention ---------------------------------------------------------------------

def apply_retention(archive: Archive, policy: Policy, dry_run: bool, report: Reporter) -> list[Decision]:
    """Prune by the policy. Only verified-good backups count; those that failed
    verification are reported apart and left in place (retention.plan_retention)."""
    with archive.locked():
        decisions = plan_retention([(e, e.created_time, e.verified_ok) for e in archive.entries()], policy)
        verb = "would remove" if dry_run else "removed"
        for decision in decisions:
            entry: Entry = decision.item
            if decision.failed:
                report.warning(f"failed {entry.file}: failed verification ({entry.verify_error or 'no detail'}); "
                               "not counted by any rule and not removed: re-verify it, or delete it yourself")
            elif decision.keep:
                report.info(f"keep   {entry.file} ({', '.join(decision.reasons)})")
            else:
                if not dry_run:
                    archive.remove(entry)
                report.info(f"{verb} {entry.file}")
        report.progress(1.0)
        report.info(retention_summary(policy, decisions, dry_run))
        return decisions


def retention_summary(policy: Policy, decisions: list[Decision], dry_run: bool) -> str:
    failed = sum(1 for d in decisions if d.failed)
    kept = sum(1 for d in decisions if d.keep and not d.failed)
    removed = len(decisions) - kept - failed
    verb = "would remove" if dry_run else "removed"
    return (f"Retention ({policy.describe()}){' [dry run]' if dry_run else ''}: kept {kept}, {verb} {removed}"
            + (f", left {failed} that failed verification" if failed else ""))


# --- Status: what the jobs did, for the Backups page and `stash-backup status` -------
# One place records every job's attempt and outcome (plugin and CLI alike) and sends
# the failure notice; status.json lives in the archive folder, or where that cannot be
# written, in the caller's fallback folder (core/status.py).

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
def recording(status_file: StatusFile, job: str, report: Reporter,
              notify: Optional[Notify] = None) -> Iterator[JobRun]:
    """Record the attempt, then its outcome, in the archive's status.json; notify on
    failure. A status file that cannot be written is reported, never fatal: the
    backup itself matters more than its record."""
    run = JobRun()
    _update_status(status_file, report, lambda status: status.started(job, utc_now()))
    try:
        yield run
    except StashBackupError as error:
        _finish(status_file, job, JobRun.failure(report.redact(str(error))), report, notify)
        raise
    except BaseException as error:  # a bug or an interrupt still ends the attempt
        _finish(status_file, job,
                JobRun.failure(f"stopped: {type(error).__name__} {report.redact(str(error))}".strip()), report, notify)
        raise
    run.message = report.redact(run.message)
    _finish(status_file, job, run, report, notify)


def _finish(status_file: StatusFile, job: str, run: JobRun, report: Reporter, notify: Optional[Notify]) -> None:
    now = utc_now()
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


def check_overdue(archive: Archive, status_file: StatusFile, interval: Duration, report: Reporter,
                  notify: Optional[Notify] = None, factor: float = 1.0) -> bool:
    """Whether the newest verified backup is older than `factor` times the interval;
    the first check of each overdue spell sends the overdue notice."""
    now = datetime.now(timezone.utc)
    max_age, last = interval_timedelta(interval, now), last_verified_time(archive)
    if not is_stale(last, max_age * factor, now):
        return False
    if notify:
        try:
            claimed, failure = status_file.apply(lambda status: (claim_overdue_notice(status, last, now),
                                                                 status.last_failure()))
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
        "archive": {"folder": str(archive.folder), "backups": len(entries),
                    "size": sum(e.size for e in entries), "free": _free_space(archive.folder)},
        "interval": str(interval), "interval_seconds": int(max_age.total_seconds()),
        "last_verified": iso(last) if last else None,
        "last_verified_age_seconds": int((now - last).total_seconds()) if last else None,
        "stale": is_stale(last, max_age, now),
        "backups": [_entry_view(e) for e in entries],
        "jobs": {name: dict(asdict(record), running=record.running_or_killed) for name, record in status.jobs.items()},
        "last_failure": {"job": failure[0], "at": failure[1].last_failure, "message": failure[1].failure_message}
                        if failure else None,
        "auto_queued_at": status.auto_queued_at or None,
    }


def _entry_view(entry: Entry) -> dict:
    view = asdict(entry)
    view["new_bytes"] = view.get("new_bytes", entry.size)  # every backup is self-contained today
    return view


def _free_space(folder: Path) -> Optional[int]:
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent  # the archive may not exist yet: the disk it will be on
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None
