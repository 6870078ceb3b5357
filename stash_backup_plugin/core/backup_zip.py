"""The full-backup zip: the sqlite file at the root and blobs at
`blobs/<aa>/<bb>/<checksum>` (Stash v0.31's layout, which the plugin also writes for
older servers). Reading is defensive: a zip from elsewhere may try to escape its
target (absolute names, `..`, links) or carry damaged entries. Standard library only."""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Optional

from .errors import VerificationError
from .hashing import Discard, copy_and_hash
from .naming import blob_member_name

_BLOB_MEMBER = re.compile(r"^blobs/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{32})$")
Progress = Optional[Callable[[int], None]]


@dataclass
class ZipLayout:
    database_member: str
    blob_members: dict[str, zipfile.ZipInfo] = field(default_factory=dict)  # checksum -> entry


def member_problem(info: zipfile.ZipInfo) -> Optional[str]:
    """Why an entry is unsafe to extract, or None."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return f"entry {name!r} is a symbolic link"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return f"entry {name!r} has an absolute path"
    if "\\" in name:
        return f"entry {name!r} uses backslashes"
    if any(part == ".." for part in PurePosixPath(name).parts):
        return f"entry {name!r} climbs out of the target folder ('..')"
    return None


def read_layout(archive: zipfile.ZipFile, source: Path) -> ZipLayout:
    """Check every entry name and find the database and blobs; raise if unsafe or foreign."""
    database_members, blobs = [], {}
    for info in archive.infolist():
        problem = member_problem(info)
        if problem:
            raise VerificationError(f"{source}: {problem}: refusing this zip")
        if info.is_dir():
            continue
        match = _BLOB_MEMBER.match(info.filename)
        if match:
            first, second, checksum = match.groups()
            if checksum[0:2] != first or checksum[2:4] != second:
                raise VerificationError(f"{source}: blob {info.filename!r} is in the wrong folder for its name")
            blobs[checksum] = info
        elif "/" not in info.filename:
            database_members.append(info.filename)
        else:
            raise VerificationError(f"{source}: unexpected entry {info.filename!r}: not a Stash backup zip")
    if len(database_members) != 1:
        raise VerificationError(
            f"{source}: expected one database file at the zip's root, found {len(database_members)}: not a Stash backup zip"
        )
    return ZipLayout(database_members[0], blobs)


def copy_member(archive: zipfile.ZipFile, name: str, target, progress: Progress = None) -> str:
    """Stream an entry into an open file; returns its MD5. zipfile checks the CRC at the end."""
    try:
        with archive.open(name) as source:
            return copy_and_hash(source, target, "md5", progress)[0]
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise VerificationError(f"zip entry {name!r} is damaged: {error}") from error


def check_blob_members(archive: zipfile.ZipFile, layout: ZipLayout, progress: Progress = None) -> None:
    """Read every blob (checks its CRC) and compare its MD5 with its name."""
    for checksum, info in layout.blob_members.items():
        actual = copy_member(archive, info.filename, Discard(), progress)
        if actual != checksum:
            raise VerificationError(f"blob {info.filename} has MD5 {actual}: its content does not match its name")


def write_full_backup(
    target, database: Path, database_member: str, blob_files: Iterable[tuple[str, Path]], progress: Progress = None
) -> int:
    """Write the full-backup zip into an open binary file. Entries are stored, not
    deflated: images are already compressed and storing costs only the copy.
    Returns the number of blobs written."""
    count = 0
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        _write_file(archive, database, database_member, progress)
        for checksum, path in blob_files:
            _write_file(archive, path, blob_member_name(checksum), progress)
            count += 1
    return count


def _write_file(archive: zipfile.ZipFile, path: Path, member: str, progress: Progress) -> None:
    info = zipfile.ZipInfo.from_file(path, member)
    info.compress_type = zipfile.ZIP_STORED
    size = info.file_size
    with open(path, "rb") as source, archive.open(info, "w", force_zip64=size > 0x7FFFFFFF) as sink:
        copy_and_hash(source, sink, progress=progress)
