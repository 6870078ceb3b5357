"""Stash's own pre-migration backups adopted into the archive. Before migrating its
database Stash writes `<db>.<schema>.<YYYYMMDD_HHMMSS>` into its backup folder (or beside
the database); on a failed migration it renames that file over the database, and with a
blank backup path it deletes it after success (internal/manager/task/migrate.go): the
only copy of the old schema is easily used up. The first job that sees one (download,
snapshot) verifies it and stores it like its own backups, tagged `pre-upgrade <from>→<to>`;
retention keeps it until a verified backup of the new schema has passed a restore drill
(core/retention.held_before_upgrade). Stash's file is only read, never moved or removed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from ..core import stored
from ..core.archive import Archive, backup_files
from ..core.atomic import write_bytes_atomic
from ..core.errors import VerificationError
from ..core.hashing import file_digest
from ..core.reporting import Reporter
from ..core.sqlite_check import has_sqlite_header

SOURCE = "pre-upgrade"
# Stash's backup files already adopted (name -> SHA-256): one released by retention
# after a passing drill is not adopted again while Stash keeps its file.
ADOPTED_NAME = "adopted.json"


def adopt_pre_upgrade(
    archive: Archive,
    folders: Iterable[Optional[Path]],
    database_name: str,
    current_schema: int,
    blob_folders: list[Path],
    level: str,
    report: Reporter,
) -> list[str]:
    """Adopt every plain database backup of `database_name` in `folders` whose schema is
    older than the current database's (the caller holds the archive's lock). A file
    that does not check out is named and left alone. Returns the adopted backups' names."""
    adopted = _adopted(archive)
    names = []
    for path, parsed in _candidates(folders, database_name, current_schema):
        if path.name in adopted:
            continue
        tag = f"{parsed.schema_version}→{current_schema}"
        try:
            sha256 = file_digest(path)
            new = stored.checked_backup(
                archive.free_stored_name(path.name),
                path,
                sha256,
                level,
                includes_blobs=bool(blob_folders),
                source=SOURCE,
                database_member=database_name,
                pre_upgrade=tag,
            )
            source = stored.FolderSource(blob_folders) if blob_folders else stored.NoBlobs()
            header = stored.store_backup(archive.store, new, source, report)
        except (VerificationError, OSError) as error:  # Stash's file: unreadable or unsound, never fatal here
            detail = error if isinstance(error, VerificationError) else (error.strerror or error)
            report.warning(
                f"Stash's backup {path} (schema {parsed.schema_version}) does not check out ({detail}): not adopted"
            )
            continue
        adopted[path.name] = sha256
        _remember(archive, adopted)
        names.append(header.name)
        report.info(
            f"Adopted Stash's pre-upgrade backup {path} as {header.name} (pre-upgrade {tag}): verified, "
            f"kept until a verified backup of schema {current_schema} passes a restore drill"
        )
    return names


def stash_backup_folders(database: Optional[str], backup_directory: Optional[str]) -> list[Path]:
    """Where Stash writes a pre-migration backup: its backup folder (a bare file name
    given to migrate goes there), else beside the database."""
    folders = [Path(backup_directory)] if backup_directory else []
    return folders + ([Path(database).parent] if database else [])


def _candidates(folders: Iterable[Optional[Path]], database_name: str, current_schema: int):
    seen = set()
    for folder in folders:
        if folder is None or folder in seen:
            continue
        seen.add(folder)
        for path, parsed in backup_files(folder):
            if parsed.database_name != database_name or parsed.schema_version >= current_schema:
                continue
            if path.name.endswith(".zip") or not _readable_database(path):
                continue  # Stash migrates from a plain database file; zips are a user's full backups
            yield path, parsed


def _readable_database(path: Path) -> bool:
    try:
        return has_sqlite_header(path)
    except OSError:
        return False


def _adopted(archive: Archive) -> dict:
    path = archive.folder / ADOPTED_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise VerificationError(
            f"{path} is damaged ({error}): move it aside (adopted backups are then adopted again)"
        ) from error
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise VerificationError(f"{path} is not a map of names to SHA-256: move it aside")
    return data


def _remember(archive: Archive, adopted: dict) -> None:
    write_bytes_atomic(archive.folder / ADOPTED_NAME, (json.dumps(adopted, indent=2, sort_keys=True) + "\n").encode())
