"""The four jobs, as a library: make a backup on the server, bring a verified backup
into the archive, re-verify the archive, apply retention. The plugin and the CLI
are thin layers over these functions."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

from .core import stored
from .core.snapshot import LEVEL as COMPRESSED, STORED
from .core.archive import Archive, Entry, backup_files, entry_from_name, utc_now
from .core.atomic import discard
from .core.record import Header
from .core.faults import crash_point
from .core.store import SnapshotTee
from .core.errors import (ConfigError, DownloadError, LinkExpiredError, StashBackupError, UsageError,
                          VerificationError)
from .server.api import UNKNOWN_SERVER, Downloaded, ServerInfo, StashAPI
from .core.naming import parse_backup_name
from .core.reporting import Reporter, human_size
from .core.retention import Decision, Duration, Policy, plan_retention
from .core.sqlite_check import QUICK
from .core.status import (Notice, Status, StatusFile, auto_window, claim_auto_run, claim_overdue_notice,
                          failure_notice, is_stale, iso, overdue_notice, parse_time)
from .core.verify import BackupReport, require_blobs, verify_backup

FRESH_BACKUP_ATTEMPTS = 3  # a link that expired mid-download needs a new backup
# What gzip -1 leaves of a Stash database (README, Compression): for estimates only.
ESTIMATED_SNAPSHOT_RATIO = 0.35


@dataclass
class DownloadOptions:
    include_blobs: bool = True
    blobs_path: Optional[Path] = None  # Stash's blobs folder as seen from here (default: the server's)
    check_level: str = QUICK
    if_older_than: Optional[Duration] = None
    compress: bool = True  # False: the snapshot in gzip's stored blocks (faster nights, about 3x the space)

    @property
    def compression_level(self) -> int:
        return COMPRESSED if self.compress else STORED


# --- Backup on the server ---------------------------------------------------------

@dataclass
class ServerBackup:
    path: Optional[Path]
    size: Optional[int]
    includes_blobs: bool


def backup_on_server(client: StashAPI, include_blobs: bool, report: Reporter, keep_last: int = 0,
                     include_others: bool = False) -> ServerBackup:
    """Stash's own backup into its backup folder, with blobs where the server can.
    Stash never removes those: with `keep_last`, the backups this task made there
    beyond the newest `keep_last` are removed (with `include_others`, Stash's own
    too), once the new one is checked."""
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
    if path:
        _remember_ours(path)
    if keep_last > 0:
        _keep_last_in_backup_folder(folder, path, keep_last, include_others, report)
    report.progress(1.0)
    return ServerBackup(path, size, with_blobs)


OURS_LEDGER = ".stash-backup-made.json"  # in Stash's backup folder: the backups our task made there


def _remember_ours(path: Path) -> None:
    _write_ours(path.parent, set(_ours(path.parent)) | {path.name})


def _write_ours(folder: Path, names) -> None:
    from .core.atomic import write_bytes_atomic
    payload = json.dumps({"made_by_stash_backup": sorted(names)}, indent=1) + "\n"
    with contextlib.suppress(StashBackupError):  # readable but not writable here: nothing of ours to count later
        write_bytes_atomic(folder / OURS_LEDGER, payload.encode())


def _ours(folder: Path) -> list[str]:
    try:
        data = json.loads((folder / OURS_LEDGER).read_text(encoding="utf-8"))
        return [n for n in data.get("made_by_stash_backup", []) if isinstance(n, str)]
    except (OSError, ValueError, AttributeError):
        return []


def _keep_last_in_backup_folder(folder: Optional[Path], made: Optional[Path], keep_last: int, include_others: bool,
                                report: Reporter) -> None:
    from .core.retention import plan_backup_folder
    if not made:
        report.warning(f"keep last {keep_last}: Stash's backup folder {folder or ''} is not readable here; nothing removed")
        return
    try:
        verify_backup(made, QUICK, want_sha256=False)  # nothing goes before its replacement is proven good
    except VerificationError as error:
        report.warning(f"keep last {keep_last}: the new backup did not verify ({error}); nothing removed")
        return
    database_name = parse_backup_name(made.name).database_name
    ours = _ours(folder)
    doomed = plan_backup_folder([p.name for p in _backup_files(folder)], ours, keep_last, database_name,
                                include_others, protected=[made.name])
    for name in doomed:
        try:
            (folder / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            report.warning(f"cannot remove {folder / name}: {error.strerror}")
            continue
        report.info(f"removed {folder / name} (keep last {keep_last} in Stash's backup folder)")
    if doomed:
        _write_ours(folder, [n for n in ours if (folder / n).exists()])


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
    """A verified backup into the archive's store: the database (compressed) and the
    blobs the archive does not hold yet. Blobs come straight from Stash's blob folders
    when they are readable here (the plugin, a CLI on Stash's host); otherwise from
    v0.31's includeBlobs zip, of which only the missing blobs are kept."""
    with archive.locked():
        skip = _skip_reason(archive, options.if_older_than)
        if skip:
            report.info(skip)
            return DownloadOutcome(None, skip)
        info = client.server_info()
        want_blobs = options.include_blobs and info.blobs_on_filesystem
        folders = _blob_folders(info, options) if want_blobs else []
        if want_blobs and not folders and not info.supports_include_blobs:
            where = options.blobs_path or info.blobs_path or "(unknown)"
            raise ConfigError(f"blobs are stored on the filesystem at {where}, which is not readable here: run on the "
                              "Stash host, pass --blobs-path DIR, or use --no-blobs")
        from_zip = want_blobs and not folders
        flag = (True if from_zip else False) if info.supports_include_blobs else None
        store = archive.store
        tee_for = None if from_zip else (lambda backup_name: SnapshotTee(store, backup_name, options.compression_level))
        fetched, name, tee = _request_and_download(client, archive.folder, flag, report.phase(0.0, 0.5), tee_for)
        try:
            if tee:
                tee.finish(fetched.temp_path)  # compression goes on beside the blob copying
            header = _store_fetched(archive, info, options, fetched, name, folders, from_zip, report.phase(0.5, 1.0),
                                    tee)
        finally:
            if tee:
                tee.discard()  # first: its thread may still read the downloaded file; nothing left on success
            discard(fetched.temp_path)
        entry = archive.find(header.name)
        if header.missing_blobs:
            report.warning(f"{header.missing_blobs} blob(s) the database refers to were found neither on the server "
                           f"nor in the archive (e.g. {header.missing_examples[0]}): the backup cannot hold them")
        report.info(f"Archived {header.name}: database {human_size(header.snapshot.size)} stored as "
                    f"{human_size(header.snapshot.stored_size)}, schema {header.schema_version}, {header.blob_count} "
                    f"blob(s) of which {header.new_blobs} new ({human_size(header.new_blob_bytes)}); "
                    f"sha256 {header.snapshot.sha256[:16]}…, verified ({header.verified_level})")
        return DownloadOutcome(entry)


def _blob_folders(info: ServerInfo, options: DownloadOptions) -> list[Path]:
    """Stash's blob folders that this process can read: the blobs path first, then
    v0.31's extra (read-only) blob paths."""
    primary = options.blobs_path or (Path(info.blobs_path) if info.blobs_path else None)
    if not primary or not _readable(primary):
        return []
    return [primary] + [Path(p) for p in info.extra_blob_paths if _readable(Path(p))]


def _readable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.R_OK | os.X_OK)


def _store_fetched(archive: Archive, info: ServerInfo, options: DownloadOptions, fetched: Downloaded, name: str,
                   folders: list[Path], from_zip: bool, report: Reporter, compressed) -> Header:
    store = archive.store
    stored_name = archive.free_stored_name(name)
    if from_zip:
        return stored.import_backup_file(store, fetched.temp_path, stored_name, options.check_level, report,
                                         source="server-zip", server_version=info.version or "")
    report.progress(0.0, "checking the database")
    new = stored.checked_backup(stored_name, fetched.temp_path, fetched.sha256, options.check_level,
                                includes_blobs=bool(folders), source="filesystem" if folders else "database",
                                server_version=info.version or "",
                                database_member=Path(info.database_path).name if info.database_path else "",
                                compression_level=options.compression_level)
    source = stored.FolderSource(folders) if folders else stored.NoBlobs()
    return stored.store_backup(store, new, source, report, compressed)


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


def _request_and_download(client: StashAPI, folder: Path, include_blobs: Optional[bool], report: Reporter,
                          tee_for: Optional[Callable] = None) -> tuple[Downloaded, str, Optional[SnapshotTee]]:
    """Ask for a download backup and fetch it; on an expired link or a failed transfer
    ask for a fresh one, a bounded number of times. `tee_for(name)` makes what sees
    the bytes as they arrive (the snapshot compressor), one per attempt."""
    last_error: Optional[StashBackupError] = None
    for attempt in range(1, FRESH_BACKUP_ATTEMPTS + 1):
        report.progress(0.0, "backing up")
        link = client.backup_database(download=True, include_blobs=include_blobs)
        if not link:
            raise DownloadError("Stash returned no download link for the backup: is this a Stash server?")
        name = link.rstrip("/").rsplit("/", 1)[-1]
        entry_from_name(name)  # refuse anything that is not a Stash backup name
        tee = tee_for(name) if tee_for else None
        try:
            # never committed as it is: the store keeps its compressed copy, or what it takes from the zip
            fetched = client.fetch_backup(link, folder, name, progress=report.bytes_progress("downloading"), tee=tee,
                                          durable=False)
            if fetched.resumes:
                report.warning(f"the connection dropped; resumed {fetched.resumes} time(s)")
            return fetched, name, tee
        except (LinkExpiredError, DownloadError) as error:
            last_error = error
            if isinstance(error, LinkExpiredError) or attempt < FRESH_BACKUP_ATTEMPTS:
                report.warning(f"download attempt {attempt} failed ({error}); asking Stash for a fresh backup")
        except BaseException:
            if tee:
                tee.discard()
            raise
        if tee:
            tee.discard()
    raise DownloadError(f"gave up after {FRESH_BACKUP_ATTEMPTS} fresh backups: {last_error}")


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
    read_data: str = ""  # which blobs' contents were re-hashed: "", "all" or "N/M"

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        text = f"Verified {self.checked} backup(s): {self.checked - len(self.failed)} good, {len(self.failed)} bad"
        if self.read_data:
            text += "; blob contents read: " + ("all" if self.read_data == "all" else f"part {self.read_data}")
        return text + (f"; adopted {len(self.adopted)} unrecorded file(s)" if self.adopted else "")


def verify_archive(archive: Archive, level: str, report: Reporter,
                   read_data: Optional[stored.ReadData] = None) -> VerifySummary:
    """Every backup: stored ones (database and blobs, each blob looked at once; with
    `read_data` its content re-hashed) and older per-backup files."""
    summary = VerifySummary()
    with archive.locked():
        entries = archive.entries()
        for problem in archive.manifest_problems:
            report.warning(problem)
        work = [(e, archive.path_of(e)) for e in entries if not e.is_stored]
        work += [(None, p) for p in archive.unregistered_files()]
        kept = [e for e in entries if e.is_stored]
        share = len(kept) / (len(kept) + len(work)) if kept else 0.0
        for index, (entry, path) in enumerate(work):
            step = report.phase(share + (1 - share) * index / len(work), share + (1 - share) * (index + 1) / len(work))
            summary.checked += 1
            _report_check(summary, report, path.name, _verify_one(archive, entry, path, level, step, summary))
        if kept:
            problems = _verify_stored(archive, kept, level, read_data, report.phase(0.0, share))
            for entry in kept:
                summary.checked += 1
                _record_check(archive, entry, level, "; ".join(problems[entry.file][:3]))
                _report_check(summary, report, entry.file, "; ".join(problems[entry.file][:3]))
            if read_data:
                summary.read_data = str(read_data)
    report.progress(1.0)
    return summary  # the caller shows summary.line(): the plugin answers it as its error when bad


def _report_check(summary: VerifySummary, report: Reporter, name: str, problem: str) -> None:
    if problem:
        summary.failed.append((name, problem))
        report.error(f"BAD {name}: {problem}")
    else:
        report.info(f"ok  {name}")


def _verify_stored(archive: Archive, entries: list[Entry], level: str, read_data: Optional[stored.ReadData],
                   report: Reporter) -> dict[str, list[str]]:
    """Each database, then every blob of every backup in one merged pass."""
    store = archive.store
    problems: dict[str, list[str]] = {e.file: [] for e in entries}
    readable = []
    for index, entry in enumerate(entries):
        step = report.phase(0.5 * index / len(entries), 0.5 * (index + 1) / len(entries))
        try:
            header = store.header(entry.file)
        except VerificationError as error:
            problems[entry.file].append(str(error))
            continue
        readable.append(entry.file)
        problems[entry.file] += stored.check_snapshot(store, header, level, step)
    blob_problems = stored.check_blobs(store, readable, read_data, report.phase(0.5, 1.0),
                                       total_hint=max((e.blob_count for e in entries), default=0))
    for name, found in blob_problems.items():
        if found:
            problems[name].append(f"{len(found)} blob problem(s): {found[0]}")
    return problems


def _record_check(archive: Archive, entry: Entry, level: str, problem: str) -> None:
    entry.verified_at, entry.verified_level, entry.verified_ok, entry.verify_error = utc_now(), level, not problem, problem
    archive.record(entry)


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

@dataclass
class RetentionResult:
    decisions: list[Decision]
    freed_bytes: int = 0  # old files removed, and what garbage collection deleted (or would)
    collected_blobs: int = 0
    collected_snapshots: int = 0
    spared_blobs: int = 0  # unreferenced but possibly a run in progress's


def apply_retention(archive: Archive, policy: Policy, dry_run: bool, report: Reporter) -> RetentionResult:
    """Prune by the policy (restic's forget), then collect the stored data no remaining
    backup refers to (restic's prune). Only verified-good backups count; those that
    failed verification are reported apart and left in place (retention.plan_retention)."""
    with archive.locked():
        decisions = plan_retention([(e, e.created_time, e.verified_ok) for e in archive.entries()], policy)
        result = RetentionResult(decisions)
        verb = "would remove" if dry_run else "removed"
        for decision in decisions:
            entry: Entry = decision.item
            if decision.failed:
                report.warning(f"failed {entry.file}: failed verification ({entry.verify_error or 'no detail'}); "
                               "not counted by any rule and not removed: re-verify it, or delete it yourself")
            elif decision.keep:
                report.info(f"keep   {entry.file} ({', '.join(decision.reasons)})")
            else:
                if not entry.is_stored:
                    result.freed_bytes += entry.size
                if not dry_run:
                    archive.remove(entry)
                    crash_point("forgotten")
                report.info(f"{verb} {entry.file}")
        _collect_garbage(archive, decisions, dry_run, result, report)
        report.progress(1.0)
        report.info(retention_summary(policy, result, dry_run))
        return result


STRAYS_SHOWN = 5  # stray file names named in prune's output; the rest counted


def _collect_garbage(archive: Archive, decisions: list[Decision], dry_run: bool, result: RetentionResult,
                     report: Reporter) -> None:
    store = archive.store
    if not store.exists():
        return
    keep = [d.item.file for d in decisions if d.item.is_stored and (d.keep or d.failed)] if dry_run else None
    plan = stored.plan_collection(store, keep)
    result.freed_bytes += plan.freed_bytes
    result.collected_blobs, result.collected_snapshots = len(plan.delete_blobs), len(plan.delete_snapshots)
    result.spared_blobs = plan.spared_blobs
    if plan.spared_blobs:
        report.info(f"spared {plan.spared_blobs} unreferenced blob(s) written since a run still marked in progress "
                    "began; a later prune collects them")
    if plan.strays:
        shown = ", ".join(plan.strays[:STRAYS_SHOWN]) + (f" and {len(plan.strays) - STRAYS_SHOWN} more"
                                                         if len(plan.strays) > STRAYS_SHOWN else "")
        report.warning(f"ignored {len(plan.strays)} file(s) in the archive's blobs folder that are not blobs "
                       f"(left alone): {shown}")
    if plan.rescued_blobs:
        report.warning(f"kept {plan.rescued_blobs} blob(s) a kept backup refers to that the sorted walk missed "
                       "(the blobs folder lists out of order): please report this")
    if not dry_run:
        stored.collect(store, plan, report.phase(0.5, 1.0))


def retention_summary(policy: Policy, result: RetentionResult, dry_run: bool) -> str:
    decisions = result.decisions
    failed = sum(1 for d in decisions if d.failed)
    kept = sum(1 for d in decisions if d.keep and not d.failed)
    removed = len(decisions) - kept - failed
    verb = "would remove" if dry_run else "removed"
    freed = ""
    if result.freed_bytes or result.collected_blobs or result.collected_snapshots:
        freed = (f"; {'would free' if dry_run else 'freed'} {human_size(result.freed_bytes)} "
                 f"({result.collected_blobs} blob(s), {result.collected_snapshots} database snapshot(s) collected)")
    return (f"Retention ({policy.describe()}){' [dry run]' if dry_run else ''}: kept {kept}, {verb} {removed}"
            + (f", left {failed} that failed verification" if failed else "") + freed)


# --- Export one backup as a zip ------------------------------------------------------

def export_backup(archive: Archive, name: str, output: Path, report: Reporter) -> Path:
    """One backup as a self-contained zip in Stash v0.31's layout (for another machine,
    or Stash's own manual restore). Holds the archive's lock: no collection runs
    while the backup's blobs are being read."""
    if output.exists():
        raise UsageError(f"{output} already exists: choose another --output (nothing is overwritten)")
    with archive.locked():
        entry = archive.find(name) or archive.find(name + ".zip") or archive.find(name.removesuffix(".zip"))
        if entry is None:
            raise UsageError(f"no backup named {name!r} in {archive.folder}: see stash-backup list")
        if entry.is_stored:
            stored.export_zip(archive.store, entry.file, output, report)
        elif entry.kind == "zip":
            _copy_verified(archive.path_of(entry), entry, output, report)
        else:
            raise UsageError(f"{entry.file} is a plain database file already: copy {archive.path_of(entry)} as it is")
    report.info(f"exported {entry.file} to {output} ({human_size(output.stat().st_size)}), verified")
    return output


def _copy_verified(source: Path, entry: Entry, output: Path, report: Reporter) -> None:
    from .core.atomic import atomic_output, make_folders, private_mode
    from .core.hashing import copy_and_hash
    make_folders(output.parent)
    with atomic_output(output) as (handle, temp), open(source, "rb") as original:
        copy_and_hash(original, handle)
        handle.flush()
        verify_backup(temp, QUICK, expected_size=entry.size, expected_sha256=entry.sha256,
                      progress=report.bytes_progress("verifying the copy"))
        os.chmod(temp, private_mode(output.parent))  # the whole library: private as the archive


# --- Migrate older per-backup files into the store -------------------------------------

@dataclass
class MigrationOutcome:
    steps: list
    imported: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def migrate_archive(archive: Archive, dry_run: bool, level: str, report: Reporter) -> MigrationOutcome:
    """Fold the per-backup zips (and plain sqlite files) into the store, one by one:
    verify the old file, import it (record written last), check the new backup,
    only then remove the old file. A run killed anywhere is finished by the next."""
    from .core.store_plan import OldBackup, plan_migration
    with archive.locked():
        store = archive.store
        old = {e.file: e for e in archive.file_entries()}
        imported_from = {e.migrated_from: e.file for e in archive.entries() if e.is_stored and e.migrated_from}
        steps = plan_migration([OldBackup(e.file, e.size, e.verified_ok, e.verified_at, e.verify_error)
                                for e in old.values()], imported_from, store.record_names())
        outcome = MigrationOutcome(steps)
        for step in steps:
            report.info(_step_line(step, dry_run))
        if dry_run:
            report.info(_migration_estimate(archive, [old[s.old.file] for s in steps if s.action == "import"]))
            report.info("dry run: nothing was changed (run with --apply to migrate)")
            return outcome
        work = [s for s in steps if s.action != "skip"]
        for index, step in enumerate(work):
            phase = report.phase(index / len(work), (index + 1) / len(work))
            try:
                _migrate_one(archive, old[step.old.file], step, level, phase)
                outcome.imported.append(step.old.file)
            except VerificationError as error:
                outcome.failed.append((step.old.file, str(error)))
                report.error(f"BAD {step.old.file}: {error}; it stays as it is")
        report.progress(1.0)
        report.info(f"Migrated {len(outcome.imported)} backup(s) into the store; {len(outcome.failed)} failed, "
                    f"{sum(1 for s in steps if s.action == 'skip')} skipped; archive now "
                    f"{human_size(archive.usage().total)}")
        return outcome


def _step_line(step, dry_run: bool) -> str:
    if step.action == "import":
        return f"{'would import' if dry_run else 'import'} {step.old.file} as {step.record_name}"
    if step.action == "remove-old":
        return f"{'would remove' if dry_run else 'remove'} {step.old.file}: already imported as {step.record_name}"
    return f"skip {step.old.file}: {step.reason}"


def _migrate_one(archive: Archive, entry: Entry, step, level: str, report: Reporter) -> None:
    path = archive.folder / entry.file
    store = archive.store
    if step.action == "import":
        verify_backup(path, level, expected_size=entry.size, expected_sha256=entry.sha256,
                      progress=report.phase(0.0, 0.3).bytes_progress(f"verifying {entry.file}"))
        stored.import_backup_file(store, path, step.record_name, level, report.phase(0.3, 0.8),
                                  source=f"{entry.source or entry.kind} (migrated)", server_version=entry.server_version,
                                  migrated_from=entry.file, added_at=entry.added_at)
        crash_point("migrated")
    header = store.header(step.record_name)
    problems = stored.check_snapshot(store, header, level, report.phase(0.8, 0.95))
    problems += stored.check_blobs(store, [header.name], None, report)[header.name]
    if problems:
        raise VerificationError(f"the imported {header.name} does not check out: {problems[0]}")
    archive.remove(entry)  # only now: its replacement is proven good
    report.info(f"migrated {entry.file} -> {header.name}: {header.blob_count} blob(s), {header.new_blobs} new")


def _migration_estimate(archive: Archive, entries: list[Entry]) -> str:
    """What the archive would take after migrating, from the zips' directories alone:
    each blob once, databases at the snapshot codec's typical ratio."""
    import zipfile
    store, seen, blob_bytes, database_bytes = archive.store, set(), 0, 0
    for entry in entries:
        path = archive.folder / entry.file
        if entry.kind != "zip":
            database_bytes += entry.size
            continue
        try:
            with zipfile.ZipFile(path) as packed:
                for info in packed.infolist():
                    checksum = info.filename.rsplit("/", 1)[-1]
                    if info.filename.startswith("blobs/") and checksum not in seen:
                        seen.add(checksum)
                        blob_bytes += 0 if store.blob_size(checksum) is not None else info.file_size
                    elif "/" not in info.filename:
                        database_bytes += info.file_size
        except (OSError, zipfile.BadZipFile):
            continue
    before = sum(e.size for e in entries)
    after = blob_bytes + int(database_bytes * ESTIMATED_SNAPSHOT_RATIO)
    return (f"{len(entries)} backup(s) take {human_size(before)} as per-backup files; in the store about "
            f"{human_size(after)} ({len(seen)} distinct blob(s), databases compressed): about "
            f"{human_size(max(before - after, 0))} freed")




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
                    # what the backups added (blobs stored once), without walking every blob file
                    "size": sum(e.new_bytes if e.is_stored else e.size for e in entries),
                    "free": _free_space(archive.folder)},
        "interval": str(interval), "interval_seconds": int(max_age.total_seconds()),
        "last_verified": iso(last) if last else None,
        "last_verified_age_seconds": int((now - last).total_seconds()) if last else None,
        "stale": is_stale(last, max_age, now),
        "backups": [_entry_view(e) for e in entries],
        "jobs": {name: dict(asdict(record), running=record.running_or_killed, failing=record.failing)
                 for name, record in status.jobs.items()},
        "last_failure": {"job": failure[0], "at": failure[1].last_failure, "message": failure[1].failure_message}
                        if failure else None,
        "auto_queued_at": status.auto_queued_at or None,
    }


def _entry_view(entry: Entry) -> dict:
    view = asdict(entry)
    if not entry.is_stored:
        view["new_bytes"] = entry.size  # an older per-backup file holds all it needs itself
    return view


def _free_space(folder: Path) -> Optional[int]:
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent  # the archive may not exist yet: the disk it will be on
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None
