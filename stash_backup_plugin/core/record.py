"""A backup's record: what one stored backup consists of. It is the backup's commit
point: written (atomically) only once its database snapshot and every blob it
refers to are durable in the archive, and removed first when the backup is
forgotten. Garbage collection keeps exactly what the records refer to.

The file is gzip-compressed text, streamed line by line (memory stays flat in the
number of blobs):

    {"format": 1, "name": ..., "snapshot": {...}, "blobs": {...}, ...}   one JSON line
    <md5> <size>                                                        one per blob, sorted, unique
    end <count> <bytes>                                                 proves the list is complete

A backup that holds Stash's settings (settings.py) is format 2: its settings files
come between the header and the blob list, sorted by MD5, and are blobs of the store
like the images:

    f <md5> <size> <mode> <root> "<path>"                               one per settings file
    settings-end <count> <bytes>

`BlobList` yields every blob a record refers to, images and settings files alike
(what collection, verification and off-site copies must keep); `images_only=True`
yields the images (what goes into Stash's blobs folder). Older versions of this tool
refuse a format-2 record by its number rather than misreading it.

Standard library only."""

from __future__ import annotations

import gzip
import heapq
import io
import json
import os
import re
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator, Optional

from .atomic import atomic_output, private_mode
from .errors import VerificationError
from .settings import SettingsError, SettingsFile, parse_line

FORMAT = 1
FORMAT_WITH_SETTINGS = 2
FORMATS = (FORMAT, FORMAT_WITH_SETTINGS)
SUFFIX = ".record"
_LINE = re.compile(r"^([0-9a-f]{32}) (\d+)$")
_END = re.compile(r"^end (\d+) (\d+)$")
_SETTINGS_END = re.compile(r"^settings-end (\d+) (\d+)$")


@dataclass
class Snapshot:
    file: str  # relative to the archive folder
    size: int  # bytes of the database
    sha256: str  # of the database (uncompressed): the same as Stash's own backup file
    stored_size: int  # bytes of the compressed file (codec "pages": of the page list)
    codec: str = "gzip"  # or "pages" (core/pages.py): the file is a page list into packs/
    added: int = 0  # codec "pages": bytes of the packs this snapshot added to the archive


@dataclass
class Header:
    name: str  # Stash's backup name, without .zip: <db>.<schema>.<YYYYMMDD_HHMMSS>[-N]
    created: str
    schema_version: int
    database_member: str  # the database's file name in Stash (and in an exported zip)
    snapshot: Snapshot
    includes_blobs: bool = True
    blob_count: int = 0
    blob_bytes: int = 0
    new_blobs: int = 0  # blobs this backup added to the archive
    new_blob_bytes: int = 0
    missing_blobs: int = 0  # referenced by the database, not found anywhere when it was made
    missing_examples: list = field(default_factory=list)
    source: str = ""  # "filesystem", "server-zip", "migrated", ...
    server_version: str = ""
    added_at: str = ""
    verified_level: str = ""
    migrated_from: str = ""  # the old zip this backup was made from, if any
    # The library's size when it was backed up (sqlite_check.library_counts): what a
    # restore drill expects Stash to report. Empty in records made before it existed.
    counts: dict = field(default_factory=dict)
    # Recovered from a damaged database (snapshot --offline --salvage): what SQLite could
    # read, never counted as a good backup; stash-restore restores it only when asked.
    salvaged: bool = False
    # Stash's own pre-migration backup adopted into the archive: "<from>→<to>" schemas.
    # Retention keeps it until a verified backup of schema <to> has passed a restore drill.
    pre_upgrade: str = ""
    # Stash's settings in this backup (settings.summary): files, bytes, new_files,
    # new_bytes, roots, left_out. Empty when the backup holds none.
    settings: dict = field(default_factory=dict)
    format: int = FORMAT

    @property
    def new_bytes(self) -> int:
        """What this backup added to the archive: its snapshot, its new blobs and its new
        settings files."""
        return self.snapshot.stored_size + self.snapshot.added + self.new_blob_bytes + self.settings.get("new_bytes", 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Header":
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") not in FORMATS:
            raise ValueError(f"unknown record format {data.get('format') if isinstance(data, dict) else data!r}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        snapshot = {f.name for f in fields(Snapshot)}
        values["snapshot"] = Snapshot(**{k: v for k, v in data["snapshot"].items() if k in snapshot})
        return cls(**values)


def record_name(backup_name: str) -> str:
    return backup_name + SUFFIX


# --- pure: lines <-> entries -------------------------------------------------------


def encode(header: Header, blobs: Iterable[tuple[str, int]], settings: Iterable[SettingsFile] = ()) -> Iterator[str]:
    """The record's lines. `blobs` must be sorted by checksum, `settings` sorted; counts
    and bytes in the header are checked against the lists (a record never lies about
    itself)."""
    settings = sorted(settings)
    header.format = FORMAT_WITH_SETTINGS if settings else FORMAT
    if bool(settings) != bool(header.settings):
        raise ValueError("the header's settings summary and the settings list disagree")
    yield header.to_json() + "\n"
    if settings:
        yield from _settings_lines(header, settings)
    count, total, previous = 0, 0, ""
    for checksum, size in blobs:
        if checksum <= previous:
            raise ValueError(f"blob list not sorted or not unique at {checksum}")
        previous = checksum
        count += 1
        total += size
        yield f"{checksum} {size}\n"
    if (count, total) != (header.blob_count, header.blob_bytes):
        raise ValueError(
            f"header says {header.blob_count} blobs / {header.blob_bytes} bytes, list has {count} / {total}"
        )
    yield f"end {count} {total}\n"


def _settings_lines(header: Header, settings: list[SettingsFile]) -> Iterator[str]:
    for settings_file in settings:
        yield settings_file.line()
    count, total = len(settings), sum(f.size for f in settings)
    if (count, total) != (header.settings.get("files"), header.settings.get("bytes")):
        raise ValueError(f"header says {header.settings} of settings, the list has {count} / {total}")
    yield f"settings-end {count} {total}\n"


def decode_settings(lines: Iterator[str], where: str) -> list[SettingsFile]:
    """The settings section (right after the header of a format-2 record), checked:
    each line (settings.parse_line), the order, and the closing count."""
    found: list[SettingsFile] = []
    for line in lines:
        end = _SETTINGS_END.match(line.rstrip("\n"))
        if end:
            if (int(end.group(1)), int(end.group(2))) != (len(found), sum(f.size for f in found)):
                break
            return found
        try:
            settings_file = parse_line(line, where)
        except SettingsError as error:
            raise VerificationError(f"{error}: the record is damaged") from None
        if found and settings_file <= found[-1]:
            raise VerificationError(f"{where}: the settings list is out of order: the record is damaged")
        found.append(settings_file)
    raise VerificationError(f"{where}: the settings list is cut short or miscounted: the record is damaged")


def decode_blobs(lines: Iterable[str], where: str) -> Iterator[tuple[str, int]]:
    """(checksum, size) from the lines after the header; raises VerificationError when
    the list is damaged, unsorted or cut short, so no caller ever takes a partial
    list for a whole one."""
    count, total, previous = 0, 0, ""
    lines = iter(lines)
    for line in lines:
        match = _LINE.match(line.rstrip("\n"))
        if match:
            checksum, size = match.group(1), int(match.group(2))
            if checksum <= previous:
                raise VerificationError(f"{where}: the blob list is out of order at {checksum}: the record is damaged")
            previous = checksum
            count += 1
            total += size
            yield checksum, size
            continue
        end = _END.match(line.rstrip("\n"))
        if end and (int(end.group(1)), int(end.group(2))) == (count, total):
            for extra in lines:  # read to the very end: gzip checks its CRC only there
                raise VerificationError(
                    f"{where}: unexpected line {extra[:60]!r} after the end line: the record is damaged"
                )
            return
        raise VerificationError(f"{where}: unexpected line {line[:60]!r} after {count} blob(s): the record is damaged")
    raise VerificationError(
        f"{where}: the blob list ends after {count} blob(s) without its end line: the record is truncated"
    )


# --- files --------------------------------------------------------------------------


def write(path: Path, header: Header, blobs: Iterable[tuple[str, int]], settings: Iterable[SettingsFile] = ()) -> None:
    """Atomically: a temp file beside `path`, fsynced, renamed, folder fsynced."""
    with atomic_output(path) as (handle, temp):
        with gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=6, mtime=0) as packed:
            text = io.TextIOWrapper(packed, encoding="ascii", newline="\n")
            for line in encode(header, blobs, settings):
                text.write(line)
            text.flush()
            text.detach()
        os.chmod(temp, private_mode(path.parent))


def read_header(path: Path) -> Header:
    try:
        with gzip.open(path, "rt", encoding="ascii", newline="\n") as text:
            first = text.readline()
        return Header.from_json(first)
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as error:
        raise VerificationError(f"{path} cannot be read as a backup record ({error}): the record is damaged") from error


class BlobList:
    """The blobs a record refers to, streamed in checksum order without repeats:
    `with BlobList(path) as blobs: for checksum, size in blobs`. Its images and its
    settings files; only the images with `images_only`."""

    def __init__(self, path: Path, images_only: bool = False):
        self.path = path
        self.images_only = images_only
        self._text: Optional[io.TextIOBase] = None

    def __enter__(self) -> Iterator[tuple[str, int]]:
        settings = self._open()
        assert self._text is not None
        images = self._checked(decode_blobs(self._text, str(self.path)))
        if self.images_only or not settings:
            return images
        return _unique(heapq.merge(images, sorted({(f.md5, f.size) for f in settings})))

    def _open(self) -> list[SettingsFile]:
        try:
            self._text = gzip.open(self.path, "rt", encoding="ascii", newline="\n")
            header = Header.from_json(self._text.readline())
            if header.format != FORMAT_WITH_SETTINGS:
                return []
            return decode_settings(self._text, str(self.path))
        except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as error:
            if self._text:
                self._text.close()
            raise VerificationError(f"{self.path} cannot be read ({error}): the record is damaged") from error

    def _checked(self, blobs: Iterator[tuple[str, int]]) -> Iterator[tuple[str, int]]:
        try:
            yield from blobs
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
            raise VerificationError(f"{self.path} is damaged ({error})") from error

    def __exit__(self, *exc) -> None:
        if self._text:
            self._text.close()


def read_settings(path: Path) -> list[SettingsFile]:
    """A record's settings files (none in a format-1 record); the blob list after
    them is not read."""
    listing = BlobList(path)
    try:
        return listing._open()
    finally:
        listing.__exit__()


def rewrite_header(path: Path, header: Header) -> None:
    """The record again with a changed header: the same images and settings files."""
    settings = read_settings(path)
    with BlobList(path, images_only=True) as images:  # streamed: the new file is a temp until it is whole
        write(path, header, images, settings)


def write_without_settings(source: Path, target: Path) -> None:
    """A copy of a record without its settings (format 1): the same backup's database
    and images, for a remote that must not hold the settings' secrets."""
    header = read_header(source)
    header.settings = {}
    with BlobList(source, images_only=True) as images:
        write(target, header, images)


def _unique(pairs: Iterator[tuple[str, int]]) -> Iterator[tuple[str, int]]:
    previous = None
    for pair in pairs:
        if pair[0] != previous:
            previous = pair[0]
            yield pair
