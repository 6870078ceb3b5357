"""Stash's backup file names: `<db file>.<schema>.<YYYYMMDD_HHMMSS>[.zip]`. Pure logic."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
# `-N` after the stamp tells apart two backups made in the same second (ours only).
_NAME = re.compile(r"^(?P<db>.+)\.(?P<schema>\d+)\.(?P<stamp>\d{8}_\d{6})(?:-(?P<n>\d+))?(?P<zip>\.zip)?$")
# Our own partial files; never a final name (see atomic.py).
TEMP_MARKER = ".stash-backup-tmp-"
# Stash's "Anonymise database" writes `<db>.anonymous.<schema>.<stamp>` beside its
# backups: the same shape, but restoring it would replace real data with scrambled data.
ANONYMISED_MARK = ".anonymous"


@dataclass(frozen=True)
class BackupName:
    database_name: str
    schema_version: int
    created: datetime  # as written by Stash: the server's local time, naive
    is_zip: bool

    def __str__(self) -> str:
        suffix = ".zip" if self.is_zip else ""
        return f"{self.database_name}.{self.schema_version}.{self.created.strftime(TIMESTAMP_FORMAT)}{suffix}"


def in_order_of_making(created: datetime, name: str) -> datetime:
    """A backup's time for ordering: its time to the second, and of two made in the same
    second the `-N` one (ours: N counts up) as the later, by N microseconds. Pure."""
    match = _NAME.match(name)
    return created.replace(microsecond=int(match["n"])) if match and match["n"] and int(match["n"]) < 10**6 else created


def parse_backup_name(name: str) -> Optional[BackupName]:
    """The parts of a Stash backup file name, or None when it is not one (an
    anonymised database is not a backup)."""
    match = _NAME.match(name)
    if not match or match["db"].endswith(ANONYMISED_MARK):
        return None
    try:
        created = datetime.strptime(match["stamp"], TIMESTAMP_FORMAT)
    except ValueError:
        return None
    return BackupName(match["db"], int(match["schema"]), created, bool(match["zip"]))


def is_anonymised_name(name: str) -> bool:
    """Stash's anonymised copy of a database, by its name."""
    match = _NAME.match(name)
    return match is not None and match["db"].endswith(ANONYMISED_MARK)


def with_counter(name: str, counter: int) -> str:
    """`name` made unique within its second: stash-go.sqlite.85.20261126_180102-2.zip."""
    parsed = _NAME.match(name)
    if not parsed:
        raise ValueError(f"{name!r} is not a Stash backup name")
    suffix = ".zip" if parsed["zip"] else ""
    return f"{parsed['db']}.{parsed['schema']}.{parsed['stamp']}-{counter}{suffix}"


def zip_name_for(database_backup_name: str) -> str:
    """The name of a full (database + blobs) backup: Stash v0.31's convention."""
    return database_backup_name if database_backup_name.endswith(".zip") else database_backup_name + ".zip"


def is_temp_name(name: str) -> bool:
    return TEMP_MARKER in name


# After the marker, a temp name says who made it: `<pid>.<machine>-`, the machine
# being this boot of this host in this PID namespace (see atomic.temp_owner_tag).
_OWNER = re.compile(re.escape(TEMP_MARKER) + r"(?P<pid>\d+)\.(?P<machine>[0-9a-f]{8})-")


def temp_owner(name: str) -> Optional[tuple[int, str]]:
    """(pid, machine) of the run that made a temp file, or None for older names."""
    match = _OWNER.search(name)
    return (int(match["pid"]), match["machine"]) if match else None


def blob_member_name(checksum: str) -> str:
    """Where a blob lives inside a full backup zip, as Stash lays out its blobs folder."""
    return f"blobs/{checksum[0:2]}/{checksum[2:4]}/{checksum}"


def blob_relative_path(checksum: str) -> str:
    return f"{checksum[0:2]}/{checksum[2:4]}/{checksum}"


_CHECKSUM = re.compile(r"^[0-9a-f]{32}$")


def blob_checksum(relative: str) -> Optional[str]:
    """The checksum of `aa/bb/<md5>` (a path inside the blobs folder), or None for
    anything else there: an interrupted upload's `.partial`, `Thumbs.db`, an upper-case
    copy of a blob's name. Only such a checksum is ever treated as a blob."""
    parts = relative.split("/")
    if len(parts) != 3 or not _CHECKSUM.match(parts[2]) or parts[0] != parts[2][:2] or parts[1] != parts[2][2:4]:
        return None
    return parts[2]
