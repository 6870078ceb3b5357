"""Verification of one backup file: a plain sqlite backup or a full-backup zip.
Standard library only (the offline restore uses it before touching anything)."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import backup_zip as fullbackup
from .atomic import scratch_folder
from .errors import VerificationError
from .hashing import file_digest  # noqa: F401 (its callers import it from here too)
from .sqlite_check import QUICK, DatabaseReport, check_database

# progress(done_bytes, total_bytes, phase)
Progress = Optional[Callable[[int, int, str], None]]


@dataclass
class BackupReport:
    path: Path
    kind: str  # "sqlite" or "zip"
    size: int
    sha256: str
    schema_version: int
    check_level: str
    blob_count: int = 0
    # Blobs the database needs from the filesystem that this file does not hold.
    blobs_not_included: set[str] = field(default_factory=set)
    database_member: Optional[str] = None


def is_zip(path: Path) -> bool:
    return path.suffix == ".zip" or zipfile.is_zipfile(path)


def verify_backup(
    path: Path,
    level: str = QUICK,
    expected_size: Optional[int] = None,
    expected_sha256: Optional[str] = None,
    known_sha256: Optional[str] = None,
    progress: Progress = None,
    want_sha256: bool = True,
) -> BackupReport:
    """Check `path` completely; raise VerificationError on the first problem.
    `known_sha256` is a hash computed while the file streamed in (no second read);
    without `want_sha256` and an expected hash, the file is not hashed at all."""
    if not path.is_file():
        raise VerificationError(f"{path} does not exist")
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise VerificationError(
            f"{path} is {size} bytes but the manifest says {expected_size}: the file changed or is truncated"
        )
    digest = known_sha256 or (file_digest(path, progress=progress) if want_sha256 or expected_sha256 else "")
    if expected_sha256 and digest != expected_sha256:
        raise VerificationError(
            f"{path} has SHA-256 {digest[:12]}… but the manifest says {expected_sha256[:12]}…: the file is damaged"
        )
    if is_zip(path):
        return _verify_zip(path, size, digest, level, progress)
    database = check_database(path, level)
    return BackupReport(
        path,
        "sqlite",
        size,
        digest,
        database.schema_version,
        level,
        blobs_not_included=set(database.blobs_on_filesystem),
    )


def _verify_zip(path: Path, size: int, digest: str, level: str, progress: Progress) -> BackupReport:
    try:
        with zipfile.ZipFile(path) as archive:
            layout = fullbackup.read_layout(archive, path)
            total = sum(info.file_size for info in archive.infolist())
            done = [0]

            def advance(count: int) -> None:
                done[0] += count
                if progress:
                    progress(done[0], total, "contents")

            fullbackup.check_blob_members(archive, layout, advance)
            database = _check_database_member(archive, layout.database_member, path, level, advance)
    except zipfile.BadZipFile as error:
        raise VerificationError(f"{path} is not a readable zip ({error}): the file is damaged") from error
    missing = database.blobs_on_filesystem - set(layout.blob_members)
    return BackupReport(
        path,
        "zip",
        size,
        digest,
        database.schema_version,
        level,
        blob_count=len(layout.blob_members),
        blobs_not_included=missing,
        database_member=layout.database_member,
    )


def require_blobs(report: BackupReport, tolerated: int = 0) -> None:
    """A full backup must hold every blob its database refers to, except those that
    were already missing from the server when it was made (recorded then, with a warning)."""
    if report.kind == "zip" and len(report.blobs_not_included) > tolerated:
        example = sorted(report.blobs_not_included)[0]
        raise VerificationError(
            f"{report.path}: the database refers to {len(report.blobs_not_included)} blob(s) the zip "
            f"does not hold (e.g. {example}): images would be lost on restore"
        )


def _check_database_member(
    archive: zipfile.ZipFile, member: str, source: Path, level: str, advance: Callable[[int], None]
) -> DatabaseReport:
    # SQLite cannot read inside a zip: check a private extracted copy.
    with scratch_folder(source.parent) as work:
        extracted = Path(work) / os.path.basename(member)
        with open(extracted, "wb") as target:
            fullbackup.copy_member(archive, member, target, advance)
        try:
            return check_database(extracted, level)
        except VerificationError as error:
            raise VerificationError(str(error).replace(str(extracted), f"{source}!{member}")) from None
