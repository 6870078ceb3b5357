"""`stash-backup snapshot --offline`: a verified backup of a *stopped* Stash straight
from its files (before an upgrade: systemd's ExecStartPre=, a Docker entrypoint, by hand
before `docker compose pull`), stored as `download` stores: the snapshot, only the blobs
the archive lacks, the record last. `--salvage` stores what SQLite can recover from a
damaged database, marked salvaged: never a good backup, restored only when asked."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

from ..core import settings, stored
from ..core.archive import Archive, Entry
from ..core.atomic import scratch_folder
from ..core.errors import UsageError, VerificationError
from ..core.hashing import file_digest
from ..core.record import Header
from ..core.reporting import Reporter, human_size
from ..core.snapshot import LEVEL as COMPRESSED
from ..core.snapshot import STORED
from ..core.sqlite_check import QUICK, backup_into, check_database, has_sqlite_header, open_unchanged
from ..offline.liveness import ensure_stopped
from ..offline.stash_config import FILESYSTEM, StashConfig, find_config_file, load_config
from .adopt import adopt_pre_upgrade

SOURCE = "offline"
SALVAGED_SOURCE = "offline (salvaged)"


@dataclass
class SnapshotOptions:
    config: Optional[Path] = None  # Stash's config.yml (default: found as Stash finds it)
    check_level: str = QUICK
    compress: bool = True
    salvage: bool = False  # the database is damaged: store what SQLite recovers, marked salvaged
    stash_stopped: bool = False  # the user vouches that Stash is stopped where the probes cannot tell
    settings: bool = True  # Stash's config.yml, plugins, scrapers, ... (core/settings.py)


def snapshot_offline(archive: Archive, options: SnapshotOptions, report: Reporter) -> Optional[Entry]:
    """The new backup's entry; None when Stash has no database yet (a first start:
    nothing is at risk, and ExecStartPre= must not keep a new Stash from starting)."""
    config = load_config(find_config_file(options.config))
    database = config.database
    report.info(f"using {config.path}: database {database}")
    ensure_stopped(database, config.path, config.host, config.port, options.stash_stopped)
    if not database.exists():
        report.info(f"Skipped: {database} does not exist yet (Stash creates it on its first start): nothing to back up")
        return None
    if not database.is_file() or not has_sqlite_header(database):
        raise UsageError(f"{database} is not an SQLite database: is `database` in {config.path} right?")
    with archive.locked(), scratch_folder(archive.folder, ".snapshot") as work:
        copy = work / database.name
        damage = _copy_database(database, copy, options.check_level)
        salvaged = bool(damage)
        if damage and not options.salvage:
            raise VerificationError(
                f"{database} is damaged ({damage}): nothing was stored; with Stash stopped, "
                "`stash-backup snapshot --offline --salvage` stores what SQLite can recover"
            )
        if damage:
            copy = _salvage(database, work, report)
        header = _store(archive, config, copy, options, salvaged, report.phase(0.1, 1.0))
        if not salvaged:  # a salvaged schema is no sure "to" for Stash's pre-migration backups
            blobs = [config.blobs_path] if config.blobs_storage == FILESYSTEM and config.blobs_path else []
            adopt_pre_upgrade(
                archive,
                [config.backup_directory, database.parent],
                database.name,
                header.schema_version,
                blobs,
                options.check_level,
                report,
            )
    return _reported(archive, header, report)


def _copy_database(database: Path, copy: Path, level: str) -> str:
    """Copy the database through SQLite's backup API from a connection that changes
    nothing (core/sqlite_check.open_unchanged: a -wal's committed data included), then
    check the copy at `level`. Returns "" when it is sound, else what is wrong."""
    try:
        with open_unchanged(database) as source:
            backup_into(source, copy)
    except sqlite3.DatabaseError as error:
        return f"SQLite cannot copy it: {' '.join(str(error).split())}"
    try:
        check_database(copy, level, blob_references=False)
    except VerificationError as error:
        return " ".join(str(error).replace(str(copy), database.name).split())  # SQLite's report spans lines
    return ""


def _salvage(database: Path, work: Path, report: Reporter) -> Path:
    """offline/salvage's engine (sqlite3 .recover, else a table-by-table copy) on a
    private copy; the recovered database must itself pass quick_check."""
    from ..offline.salvage import salvage

    recovered = salvage(database, work / "salvaged" / database.name)
    lost = {table: rows for table, rows in recovered.rows.items() if rows[0] != rows[1]}
    report.warning(
        f"SALVAGED {database.name} ({recovered.method}): stored as a salvaged backup, never counted as "
        f"a good one; {len(lost)} table(s) differ from what the damaged file lists"
        + (f", e.g. {next(iter(lost))} {lost[next(iter(lost))]}" if lost else "")
    )
    return recovered.output


def _store(
    archive: Archive, config: StashConfig, copy: Path, options: SnapshotOptions, salvaged: bool, report: Reporter
) -> Header:
    """As `download` stores: blobs from Stash's own blobs folder, only those missing."""
    schema = check_database(copy, "none", blob_references=False).schema_version
    name = archive.free_stored_name(f"{config.database.name}.{schema}.{datetime.now():%Y%m%d_%H%M%S}")
    blobs = config.blobs_path if config.blobs_storage == FILESYSTEM else None
    if blobs is not None and not blobs.is_dir():
        raise UsageError(
            f"blobs are stored on the filesystem at {blobs}, which does not exist here: the backup "
            "would lack its images"
        )
    new = stored.checked_backup(
        name,
        copy,
        file_digest(copy),
        options.check_level,
        includes_blobs=blobs is not None,
        source=SALVAGED_SOURCE if salvaged else SOURCE,
        database_member=config.database.name,
        compression_level=COMPRESSED if options.compress else STORED,
        salvaged=salvaged,
        prechecked=True,
    )
    if options.settings:
        sources = settings.sources_for(config.path, config.setting_paths(), archive.folder)
        new.settings = settings.gather(sources, report.warning)
    source = stored.FolderSource([blobs]) if blobs is not None else stored.NoBlobs()
    return stored.store_backup(archive.store, new, source, report)


def _reported(archive: Archive, header: Header, report: Reporter) -> Entry:
    if header.missing_blobs:
        report.warning(
            f"{header.missing_blobs} blob(s) the database refers to are neither in Stash's blobs folder "
            f"nor in the archive (e.g. {header.missing_examples[0]}): the backup cannot hold them"
        )
    state = (
        "SALVAGED (restore only with stash-restore --allow-salvaged)"
        if header.salvaged
        else f"verified ({header.verified_level})"
    )
    report.info(
        f"Archived {header.name} from the stopped Stash: database {human_size(header.snapshot.size)}, of which "
        f"{human_size(header.snapshot.added)} new pages stored, schema {header.schema_version}, {header.blob_count} "
        f"blob(s) of which {header.new_blobs} new ({human_size(header.new_blob_bytes)}); {state}"
    )
    return archive.find(header.name)
