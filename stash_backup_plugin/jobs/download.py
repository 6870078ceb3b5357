"""The *Download backup to archive* job: a verified backup of the server into the
archive's store: the database checked and compressed as it downloads, only the images
the archive lacks."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from ..core import settings, stored
from ..core.archive import Archive, Entry, entry_from_name
from ..core.atomic import discard
from ..core.errors import ConfigError, DamagedDatabase, DownloadError, LinkExpiredError, StashBackupError
from ..core.record import Header
from ..core.reporting import Reporter, human_size
from ..core.retention import Duration
from ..core.snapshot import LEVEL as COMPRESSED
from ..core.snapshot import STORED
from ..core.sqlite_check import QUICK, check_database
from ..core.status import StatusFile
from ..server.api import Downloaded, ServerInfo, StashAPI
from . import live_copy
from .adopt import adopt_pre_upgrade, stash_backup_folders
from .check_live import HealthCheck, download_watch, healthy_backup_made, live_database
from .status import Notify

FRESH_BACKUP_ATTEMPTS = 3  # a link that expired mid-download needs a new backup


@dataclass
class DownloadOptions:
    include_blobs: bool = True
    blobs_path: Optional[Path] = None  # Stash's blobs folder as seen from here (default: the server's)
    check_level: str = QUICK
    if_older_than: Optional[Duration] = None
    compress: bool = True  # False: new pages in zlib's stored blocks (faster nights, about 3x their space)
    settings: bool = True  # Stash's config.yml, plugins, scrapers, ... (core/settings.py), where readable here
    # The database from Stash's live file where it is readable here (jobs/live_copy.py);
    # False: always Stash's own backup (VACUUM INTO), downloaded.
    live_copy: bool = True

    @property
    def compression_level(self) -> int:
        return COMPRESSED if self.compress else STORED


@dataclass
class DownloadOutcome:
    entry: Optional[Entry]
    skipped_reason: str = ""


def checked_download(
    client: StashAPI,
    archive: Archive,
    options: DownloadOptions,
    status_file: StatusFile,
    report: Reporter,
    notify: Optional[Notify] = None,
    database: Optional[Path] = None,
) -> DownloadOutcome:
    """The download with the live database's health check (jobs/check_live), watched
    for Stash's own backup failing on a malformed database; a verified backup ends a
    damage spell. `database`: the live file to check (default: the server's, when
    readable here)."""
    info = client.server_info()
    health = HealthCheck(live_database(info.database_path, database, report), status_file, report, notify)
    if database is not None:  # a file the user named, perhaps not the server's: checked first, as itself
        health.of_live_file()
    with download_watch(status_file, report):
        outcome = download_to_archive(client, archive, options, report, health, info)
    if outcome.entry:
        healthy_backup_made(status_file, report)
    return outcome


def download_to_archive(
    client: StashAPI,
    archive: Archive,
    options: DownloadOptions,
    report: Reporter,
    health: Optional[HealthCheck] = None,
    info: Optional[ServerInfo] = None,  # the server's, when the caller asked already
) -> DownloadOutcome:
    """A verified backup into the archive's store: the database (compressed) and the
    blobs the archive does not hold yet. Blobs come straight from Stash's blob folders
    when they are readable here (the plugin, a CLI on Stash's host); otherwise from
    v0.31's includeBlobs zip, of which only the missing blobs are kept."""
    with archive.locked():
        skip = _skip_reason(archive, options.if_older_than)
        if skip:
            report.info(skip)
            return DownloadOutcome(None, skip)
        info = info or client.server_info()
        want_blobs = options.include_blobs and info.blobs_on_filesystem
        folders = _blob_folders(info, options) if want_blobs else []
        if want_blobs and not folders and not info.supports_include_blobs:
            where = options.blobs_path or info.blobs_path or "(unknown)"
            raise ConfigError(
                f"blobs are stored on the filesystem at {where}, which is not readable here: run on the "
                "Stash host, pass --blobs-path DIR, or use --no-blobs"
            )
        from_zip = want_blobs and not folders
        with archive.store.blobs_read_ahead() if folders else contextlib.nullcontext():
            header = _download_and_store(client, archive, info, options, folders, from_zip, health, report)
        if info.database_path:  # Stash's own pre-migration backups, where this process can read them
            adopt_pre_upgrade(
                archive,
                stash_backup_folders(info.database_path, info.backup_directory),
                Path(info.database_path).name,
                header.schema_version,
                folders,
                options.check_level,
                report,
            )
        entry = archive.find(header.name)
        if header.missing_blobs:
            report.warning(
                f"{header.missing_blobs} blob(s) the database refers to were found neither on the server "
                f"nor in the archive (e.g. {header.missing_examples[0]}): the backup cannot hold them"
            )
        report.info(
            f"Archived {header.name}: database {human_size(header.snapshot.size)}, of which "
            f"{human_size(header.snapshot.added)} new pages stored, schema {header.schema_version}, {header.blob_count} "
            f"blob(s) of which {header.new_blobs} new ({human_size(header.new_blob_bytes)}); "
            f"sha256 {header.snapshot.sha256[:16]}…, verified ({header.verified_level})"
        )
        return DownloadOutcome(entry)


def _download_and_store(
    client: StashAPI,
    archive: Archive,
    info: ServerInfo,
    options: DownloadOptions,
    folders: list[Path],
    from_zip: bool,
    health: Optional[HealthCheck],
    report: Reporter,
) -> Header:
    live = options.live_copy and not from_zip  # the zip is what brings the blobs
    header = _from_live_copy(client, archive, info, options, folders, health, report) if live else None
    if header is not None:
        return header
    if health:
        health.of_live_file()
    flag = (True if from_zip else False) if info.supports_include_blobs else None
    fetched, name = _request_and_download(client, archive.folder, flag, report.phase(0.0, 0.5))
    try:
        return _store_fetched(archive, info, options, fetched, name, folders, from_zip, report.phase(0.5, 1.0))
    finally:
        discard(fetched.temp_path)


def _from_live_copy(
    client: StashAPI,
    archive: Archive,
    info: ServerInfo,
    options: DownloadOptions,
    folders: list[Path],
    health: Optional[HealthCheck],
    report: Reporter,
) -> Optional[Header]:
    """The backup stored from a copy of the live file (jobs/live_copy.py); None when
    Stash's own backup must be used: no copy could be taken, or the copy's check found
    the live database damaged (Stash's VACUUM INTO may still read what it needs)."""
    live = live_copy.live_database_path(info)
    copied = live_copy.copy_live_database(client, info, live, archive.folder, report) if live else None
    if copied is None or live is None:
        return None
    fetched, name = copied
    check = _live_check(health, live, options.check_level) if health else None
    try:
        return _store_fetched(
            archive, info, options, fetched, name, folders, False, report.phase(0.5, 1.0), live_copy.SOURCE, check
        )
    except DamagedDatabase:
        return None  # the check recorded and reported it
    finally:
        discard(fetched.temp_path)


def _live_check(health: HealthCheck, live: Path, level: str) -> Callable[[Path], None]:
    """The live database's check read from its copy, beside the storing of its pages
    and blobs (one read for both): damage raises DamagedDatabase; a deeper --full-check
    still runs on the copy."""

    def check(copy: Path) -> None:
        healthy = health.of_copy(live, copy)
        if healthy is False:
            raise DamagedDatabase(f"the live database {live} is damaged")
        if healthy is None or level != QUICK:
            check_database(copy, level, blob_references=False)

    return check


def _blob_folders(info: ServerInfo, options: DownloadOptions) -> list[Path]:
    """Stash's blob folders that this process can read: the blobs path first, then
    v0.31's extra (read-only) blob paths."""
    primary = options.blobs_path or (Path(info.blobs_path) if info.blobs_path else None)
    if not primary or not _readable(primary):
        return []
    return [primary] + [Path(p) for p in info.extra_blob_paths if _readable(Path(p))]


def _readable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.R_OK | os.X_OK)


def _store_fetched(
    archive: Archive,
    info: ServerInfo,
    options: DownloadOptions,
    fetched: Downloaded,
    name: str,
    folders: list[Path],
    from_zip: bool,
    report: Reporter,
    source: str = "",
    check: Optional[Callable[[Path], None]] = None,
) -> Header:
    store = archive.store
    stored_name = archive.free_stored_name(name)
    if from_zip:
        return stored.import_backup_file(
            store,
            fetched.temp_path,
            stored_name,
            options.check_level,
            report,
            source="server-zip",
            server_version=info.version or "",
        )
    report.progress(0.0, "checking the database")
    new = stored.checked_backup(
        stored_name,
        fetched.temp_path,
        fetched.sha256,
        options.check_level,
        includes_blobs=bool(folders),
        source=source or ("filesystem" if folders else "database"),
        check=check,
        server_version=info.version or "",
        database_member=Path(info.database_path).name if info.database_path else "",
        compression_level=options.compression_level,
    )
    if options.settings:
        new.settings = gather_settings(info, archive.folder, report)
    source = stored.FolderSource(folders) if folders else stored.NoBlobs()
    return stored.store_backup(store, new, source, report)


def gather_settings(info: ServerInfo, archive_folder: Path, report: Reporter) -> Optional[settings.Gathered]:
    """Stash's settings files, from the paths the server reports, when its config file
    is readable here (the plugin, a CLI on Stash's host); else a warning."""
    if not info.config_path:
        report.warning("settings not backed up: the server did not say where its config.yml is")
        return None
    paths = dict(
        info.setting_paths,
        database=info.database_path,
        backup_directory=info.backup_directory,
        blobs=info.blobs_path,
    )
    sources = settings.sources_for(Path(info.config_path), paths, archive_folder)
    return settings.gather(sources, report.warning)


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


def _request_and_download(
    client: StashAPI, folder: Path, include_blobs: Optional[bool], report: Reporter
) -> tuple[Downloaded, str]:
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
            # never committed as it is: the store keeps its pages, or what it takes from the zip
            fetched = client.fetch_backup(
                link, folder, name, progress=report.bytes_progress("downloading"), durable=False
            )
            if fetched.resumes:
                report.warning(f"the connection dropped; resumed {fetched.resumes} time(s)")
            return fetched, name
        except (LinkExpiredError, DownloadError) as error:
            last_error = error
            if isinstance(error, LinkExpiredError) or attempt < FRESH_BACKUP_ATTEMPTS:
                report.warning(f"download attempt {attempt} failed ({error}); asking Stash for a fresh backup")
    raise DownloadError(f"gave up after {FRESH_BACKUP_ATTEMPTS} fresh backups: {last_error}")
