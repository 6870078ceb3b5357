"""Stored backups (store.py's layout): make one from a checked database and a source
of blobs, verify one or all, collect garbage, export one as a self-contained zip,
import an old per-backup zip. The application layer (jobs/) calls these under the
archive's lock; stash-restore reads with the same parts. Standard library only."""

from __future__ import annotations

import contextlib
import collections
import heapq
import itertools
import os
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Generator, Iterable, Iterator, Optional, Protocol

from . import backup_zip as fullbackup
from . import page_store
from . import record as records
from . import settings as settings_files
from .atomic import atomic_output, discard, fsync_dir, make_folders, private_mode, scratch_folder, storage_error
from .errors import UsageError, VerificationError
from .naming import TEMP_MARKER as _TEMP, blob_member_name, blob_relative_path, parse_backup_name
from .reporting import Reporter
from .sqlite_check import (
    NONE,
    QUICK,
    check_database,
    count_filesystem_blob_references,
    library_counts,
    filesystem_blob_references,
)
from .pages import CODEC as PAGES, INDEX_SUFFIX, PACK_SUFFIX
from .snapshot import LEVEL
from .faults import crash_point
from .hashing import Discard, copy_and_hash
from .store import BLOBS, SNAPSHOT_SUFFIX, SNAPSHOTS, Store
from .store_plan import GcPlan, plan_gc, plan_packs, plan_snapshots, spare_referenced

MISSING_EXAMPLES = 5
# Blobs looked up ahead of the copying: batches of AHEAD_BATCH, at most AHEAD_BATCHES
# waiting (256 covers: about 18 MiB of a library's bytes asked into the page cache).
AHEAD_BATCH, AHEAD_BATCHES = 64, 4


# --- where blobs come from ------------------------------------------------------------


class BlobSource(Protocol):
    def size(self, checksum: str) -> Optional[int]:
        """The blob's size, or None when this source does not have it."""

    def open(self, checksum: str) -> IO[bytes]:
        """The blob's bytes (only called after size() found it)."""

    def read_ahead(self, checksum: str) -> None:
        """A hint, from another thread, that the blob is copied soon (may do nothing)."""


class FolderSource:
    """Stash's blobs folder, then its extra (read-only) blob folders, in that order."""

    def __init__(self, folders: Iterable[Path]):
        self.folders = [Path(f) for f in folders]
        self._last: tuple[str, Optional[tuple[Path, int]]] = ("", None)  # size() then open() look once

    def _path(self, checksum: str) -> Optional[tuple[Path, int]]:
        if self._last[0] == checksum:
            return self._last[1]
        found = None
        for folder in self.folders:
            path = folder / blob_relative_path(checksum)
            try:
                found = path, path.stat().st_size
                break
            except OSError:
                continue
        self._last = (checksum, found)
        return found

    def size(self, checksum: str) -> Optional[int]:
        found = self._path(checksum)
        return found[1] if found else None

    def open(self, checksum: str) -> IO[bytes]:
        found = self._path(checksum)
        if not found:
            raise FileNotFoundError(checksum)
        return open(found[0], "rb")

    def read_ahead(self, checksum: str) -> None:
        """Ask the kernel to read the blob now (its metadata, and its bytes where it can
        be told to), so that the copy finds them in memory rather than waiting on the
        disk for each in turn. Nothing is read into Python; a FIFO does not block."""
        for folder in self.folders:
            try:
                fd = os.open(folder / blob_relative_path(checksum), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            except OSError:
                continue
            try:
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # not a file the kernel reads ahead: the copy decides what it is
            finally:
                os.close(fd)
            return


class ZipSource:
    """The blobs inside a full-backup zip (Stash v0.31's layout)."""

    def __init__(self, archive: zipfile.ZipFile, layout: fullbackup.ZipLayout):
        self.archive, self.members = archive, layout.blob_members

    def size(self, checksum: str) -> Optional[int]:
        info = self.members.get(checksum)
        return info.file_size if info else None

    def open(self, checksum: str) -> IO[bytes]:
        return self.archive.open(self.members[checksum])

    def read_ahead(self, checksum: str) -> None:
        pass  # one zip, read in order


class NoBlobs:
    def size(self, checksum: str) -> Optional[int]:
        return None

    def open(self, checksum: str) -> IO[bytes]:
        raise FileNotFoundError(checksum)

    def read_ahead(self, checksum: str) -> None:
        pass


# --- making a stored backup -------------------------------------------------------------


@dataclass
class NewBackup:
    """What the caller knows about the database it fetched and checked."""

    name: str
    database: Path  # the checked database file (temp); not modified
    sha256: str  # "": not known yet; the page pass's digest is the database's (a private copy nothing else writes)
    schema_version: int
    referenced: Iterable[str]  # checksums of blobs the database keeps on the filesystem: sorted, unique
    includes_blobs: bool
    source: str
    server_version: str = ""
    verified_level: str = QUICK
    database_member: str = ""
    migrated_from: str = ""
    added_at: str = ""
    referenced_count: int = 0  # for progress only
    counts: dict = field(default_factory=dict)  # sqlite_check.library_counts
    compression_level: int = LEVEL  # zlib level of the stored pages (STORED: no compression)
    salvaged: bool = False  # recovered from a damaged database: never a good backup (record.Header.salvaged)
    prechecked: bool = False  # the caller checked the database at verified_level already: not read twice
    # The database's check, run beside the pages and blobs instead of check_database at
    # verified_level (the live check read from a live copy); raises VerificationError.
    check: Optional[Callable[[Path], None]] = None
    pre_upgrade: str = ""  # Stash's own pre-migration backup, adopted: "<from>→<to>" (record.Header.pre_upgrade)
    settings: Optional[settings_files.Gathered] = None  # Stash's settings files, hashed (settings.gather)


def checked_backup(name: str, database: Path, sha256: str, level: str, includes_blobs: bool, **details) -> NewBackup:
    """Describe a database for `store_backup`: a Stash database (header, schema) now; its
    SQLite check at `level` runs beside the blob copying and must pass before the record
    is written. Its blob references stream from SQLite, sorted, when they are read."""
    checked = check_database(database, NONE, blob_references=False)
    referenced = filesystem_blob_references(database) if includes_blobs else iter(())
    count = count_filesystem_blob_references(database) if includes_blobs else 0
    return NewBackup(
        name,
        database,
        sha256,
        checked.schema_version,
        referenced,
        includes_blobs,
        verified_level=level,
        referenced_count=count,
        counts=library_counts(database),
        **details,
    )


class _InThread(threading.Thread):
    """Work beside the main thread; its result (or its exception) when joined."""

    def __init__(self, work: Callable):
        super().__init__(daemon=True)
        self.work, self.value = work, None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.value = self.work()
        except BaseException as error:  # handed to the caller's thread
            self.error = error

    def result(self):
        self.join()
        if self.error:
            raise self.error
        return self.value


class _PageWriter(threading.Thread):
    """Stores the database's new pages beside the blob copying (different resources:
    CPU here, disk there). What was stored is proven by the SHA-256 of the bytes read
    (checked against the download's), each page's hash as it is packed, and zlib's
    checksum of each frame; `verify` reassembles it from the disk later (a read right
    after writing would come from memory and prove little)."""

    def __init__(self, store: Store, database: Path, level: int = LEVEL):
        super().__init__(name="snapshot", daemon=True)
        self.store, self.database, self.level = store, database, level
        self.written: Optional[page_store.Written] = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.written = page_store.write_pages(
                self.store.folder, self.store.incoming, self.database, self.level, like=self.store.newest_page_list()
            )
        except BaseException as error:  # handed to the caller's thread
            self.error = error

    def result(self) -> page_store.Written:
        self.join()
        if self.error:
            raise self.error
        assert self.written is not None
        return self.written


def store_backup(store: Store, new: NewBackup, source: BlobSource, report: Reporter) -> records.Header:
    """Store a checked database (the pages no pack holds yet, and its page list) and
    the blobs it refers to, then (last) its record. Blobs and pages the store already
    holds are not copied again."""
    with store.pending(new.name):
        make_folders(store.incoming)
        size = new.database.stat().st_size
        pages = _PageWriter(store, new.database, new.compression_level)
        pages.start()
        # quick_check (or integrity_check) reads the database while the blobs are copied
        level = NONE if new.prechecked else new.verified_level
        own_check = new.check
        check = _InThread(
            (lambda: own_check(new.database))
            if own_check
            else (lambda: check_database(new.database, level, blob_references=False))
        )
        check.start()
        blob_list = store.incoming / f"{new.name}.blobs{_TEMP}{os.getpid()}"
        try:
            with open(blob_list, "w", encoding="ascii") as listing:
                counts = _store_blobs(store, new.referenced, new.referenced_count, source, listing, report)
            kept_settings, settings_summary = _store_settings(store, new.settings, report)
            check.result()
            written = pages.result()
            if written.digest.sha256 != (new.sha256 or written.digest.sha256) or written.digest.size != size:
                raise VerificationError(f"{new.database} changed while it was stored: try again")
            list_path = store.page_list_path(new.name)
            page_store.commit_page_list(list_path, written.listing)
            crash_point("snapshot-stored")
            header = _header(new, list_path, store, written, counts)
            header.settings = settings_summary
            with open(blob_list, encoding="ascii") as listing:
                store.write_record(header, _read_list(listing), kept_settings)
            crash_point("record-written")
        finally:
            check.join()
            pages.join()
            discard(blob_list)
    return header


@dataclass
class _Counts:
    count: int = 0
    bytes: int = 0
    new: int = 0
    new_bytes: int = 0
    missing: list = field(default_factory=list)
    missing_count: int = 0


def _store_blobs(
    store: Store, checksums: Iterable[str], total: int, source: BlobSource, listing, report: Reporter
) -> _Counts:
    counts, previous = _Counts(), ""
    looked_up = _looked_up_ahead(store, checksums, source)
    with store.blob_writer() as writer, contextlib.closing(looked_up):
        for index, (checksum, have) in enumerate(looked_up):
            if checksum <= previous:
                raise VerificationError(  # the query orders them: SQLite broke its word, or the file changed
                    f"the database's blob references came out of order at {checksum}: nothing was recorded, try again"
                )
            previous = checksum
            size = have if have is not None else _store_one(writer, checksum, source, counts)
            if size is None:
                counts.missing_count += 1
                if len(counts.missing) < MISSING_EXAMPLES:
                    counts.missing.append(checksum)
            else:
                counts.count += 1
                counts.bytes += size
                listing.write(f"{checksum} {size}\n")
            if index % 500 == 0 and total:
                report.progress(min(index / total, 1.0), "storing blobs")
    report.progress(1.0, "storing blobs")
    return counts


def _looked_up_ahead(
    store: Store, checksums: Iterable[str], source: BlobSource
) -> Generator[tuple[str, Optional[int]], None, None]:
    """(checksum, its size in the store or None) for each checksum, in order. A thread
    runs up to AHEAD_BATCHES batches ahead of the copying: it stats the store's copy
    (stored once, named by its content; verify checks it is still whole) and gives the
    source a read-ahead hint for each blob the store lacks, so that neither the walk nor
    the copy waits on the disk for one file at a time. The checksums (an SQLite query's
    rows) are read on the caller's thread."""
    remaining = iter(checksums)
    chunks = iter(lambda: list(itertools.islice(remaining, AHEAD_BATCH)), [])
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="look-ahead") as pool:
        pending = collections.deque(
            pool.submit(_look_up, store, source, chunk) for chunk in itertools.islice(chunks, AHEAD_BATCHES)
        )
        try:
            while pending:
                batch = pending.popleft().result()
                chunk = next(chunks, None)
                if chunk:
                    pending.append(pool.submit(_look_up, store, source, chunk))
                yield from batch
        finally:
            for future in pending:
                future.cancel()


def _look_up(store: Store, source: BlobSource, chunk: list[str]) -> list[tuple[str, Optional[int]]]:
    batch = [(checksum, store.blob_size(checksum)) for checksum in chunk]
    for checksum, have in batch:
        if have is None:
            source.read_ahead(checksum)
    return batch


def _store_one(writer, checksum: str, source: BlobSource, counts: _Counts) -> Optional[int]:
    """The size of a blob the store lacked once it is copied, or None when the source
    has no sound copy."""
    offered = source.size(checksum)
    if offered is None:
        return None
    try:
        handle = source.open(checksum)
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    with handle:
        added = writer.add(checksum, handle)
    if added is None:  # unreadable or damaged at the source
        return None
    counts.new += 1
    counts.new_bytes += added
    return added


def _store_settings(
    store: Store, gathered: Optional[settings_files.Gathered], report: Reporter
) -> tuple[list[settings_files.SettingsFile], dict]:
    """Stash's settings files into the blob store (those it lacks), checked against the
    MD5 they were listed with: (the files kept, the header's summary)."""
    if not gathered or not gathered.files:
        return [], {}
    kept, new, new_bytes = [], 0, 0
    with store.blob_writer() as writer:
        for settings_file, path in gathered.files:
            if store.blob_size(settings_file.md5) == settings_file.size:
                kept.append(settings_file)
                continue
            try:
                with open(path, "rb") as handle:
                    added = writer.add(settings_file.md5, handle)
            except OSError:
                added = None
            if added is None:
                where = f"{settings_file.root}/{settings_file.path}"
                report.warning(f"settings: left out {where} (it changed or could not be read while it was backed up)")
                continue
            kept.append(settings_file)
            new, new_bytes = new + 1, new_bytes + added
    keep = set(kept)
    gathered.files = [(f, p) for f, p in gathered.files if f in keep]
    gathered.total_bytes = sum(f.size for f in kept)
    return kept, settings_files.summary(gathered, new, new_bytes)


def _read_list(listing) -> Iterator[tuple[str, int]]:
    for line in listing:
        checksum, size = line.split()
        yield checksum, int(size)


def _header(
    new: NewBackup, list_path: Path, store: Store, written: page_store.Written, counts: _Counts
) -> records.Header:
    from .archive import utc_now

    parsed = parse_backup_name(new.name)
    return records.Header(
        name=new.name,
        created=parsed.created.isoformat() if parsed else "",
        schema_version=new.schema_version,
        database_member=new.database_member or (parsed.database_name if parsed else "stash-go.sqlite"),
        snapshot=records.Snapshot(
            str(list_path.relative_to(store.folder).as_posix()),
            written.digest.size,
            written.digest.sha256,
            len(written.listing),
            PAGES,
            written.new_pack_bytes,
        ),
        includes_blobs=new.includes_blobs,
        blob_count=counts.count,
        blob_bytes=counts.bytes,
        new_blobs=counts.new,
        new_blob_bytes=counts.new_bytes,
        missing_blobs=counts.missing_count,
        missing_examples=counts.missing,
        source=new.source,
        server_version=new.server_version,
        added_at=new.added_at or utc_now(),
        verified_level=new.verified_level,
        migrated_from=new.migrated_from,
        counts=new.counts,
        salvaged=new.salvaged,
        pre_upgrade=new.pre_upgrade,
    )


# --- verification ---------------------------------------------------------------------------


@dataclass
class ReadData:
    """Which blobs to re-hash: all (1/1), or the N-th of M parts (restic's
    --read-data-subset n/m): a blob is in part N when its checksum's first 32 bits
    modulo M is N-1, so M nights with N = 1..M read every blob once."""

    part: int = 1
    parts: int = 1

    def includes(self, checksum: str) -> bool:
        return int(checksum[:8], 16) % self.parts == self.part - 1

    @classmethod
    def parse(cls, text: str) -> "ReadData":
        try:
            part, parts = (int(x) for x in text.split("/"))
        except ValueError:
            raise UsageError(f"--read-data-subset {text!r}: use N/M, e.g. 1/7 (part N of M)") from None
        if not 1 <= part <= parts:
            raise UsageError(f"--read-data-subset {text!r}: N must be between 1 and M")
        return cls(part, parts)

    def __str__(self) -> str:
        return "all" if self.parts == 1 else f"{self.part}/{self.parts}"


@dataclass
class StoredCheck:
    name: str
    schema_version: Optional[int] = None
    problems: list = field(default_factory=list)


def check_snapshot(store: Store, header: records.Header, level: str, report: Reporter) -> list[str]:
    """The database: decompresses to the recorded size and SHA-256, passes the SQLite
    check, has the recorded schema, and refers to no blob the record does not list
    (other than those already missing when it was made)."""
    try:
        with scratch_folder(store.folder) as work:
            database = work / header.database_member
            with open(database, "w+b") as out:
                store.read_snapshot(header, out, progress=_bytes(report, header.snapshot.size, "checking database"))
            checked = check_database(database, level, blob_references=False)
            unlisted = _unlisted(store, header, database) if header.includes_blobs else []
    except VerificationError as error:
        return [str(error)]
    except OSError as error:
        return [f"{header.name}: cannot check its database ({error.strerror or error})"]
    problems = []
    if checked.schema_version != header.schema_version:
        problems.append(
            f"{header.name}: the database has schema {checked.schema_version}, the record says {header.schema_version}"
        )
    if len(unlisted) > header.missing_blobs:
        problems.append(
            f"{header.name}: the database refers to {len(unlisted)} blob(s) the record does not list "
            f"(recorded as missing when it was made: {header.missing_blobs})"
        )
    return problems


def unlisted_references(referenced: Iterable[str], listed: Iterable[tuple[str, int]]) -> list[str]:
    """Checksums in `referenced` that `listed` lacks; both sorted: one merged pass."""
    missing, listed = [], iter(listed)
    current = next(listed, None)
    for checksum in referenced:
        while current is not None and current[0] < checksum:
            current = next(listed, None)
        if current is None or current[0] != checksum:
            missing.append(checksum)
    for _ in listed:  # read to the end: a damaged list raises only there
        pass
    return missing


def _unlisted(store: Store, header: records.Header, database: Path) -> list[str]:
    with store.blob_list(header.name, images_only=True) as blobs:
        return unlisted_references(filesystem_blob_references(database), blobs)


def check_blobs(
    store: Store, names: list[str], read_data: Optional[ReadData], report: Reporter, total_hint: int = 0
) -> dict[str, list[str]]:
    """Every blob the records list: present with the listed size; with `read_data`,
    its MD5 equals its name. Each blob is looked at once however many backups refer
    to it (the lists are merged as streams). Returns problems per backup name."""
    problems: dict[str, list[str]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        streams = []
        for name in names:
            try:
                streams.append(_tagged(stack.enter_context(store.blob_list(name)), name, problems))
            except VerificationError as error:
                problems[name].append(str(error))
        group: list = []
        for seen, item in enumerate(heapq.merge(*streams)):
            if group and item[0] != group[0][0]:
                _check_group(store, group, read_data, problems)
                group = []
            group.append(item)
            if seen % 2000 == 0 and total_hint:
                report.progress(min(seen / total_hint, 1.0), "checking blobs")
        if group:
            _check_group(store, group, read_data, problems)
    return problems


def _tagged(blobs: Iterator[tuple[str, int]], name: str, problems: dict) -> Iterator[tuple[str, int, str]]:
    """A record's list tagged with its name; a damaged list is that backup's problem,
    the other backups' blobs are still checked."""
    try:
        for checksum, size in blobs:
            yield checksum, size, name
    except VerificationError as error:
        problems[name].append(str(error))


def check_packs(store: Store, names: list[str], read_data: ReadData) -> dict[str, list[str]]:
    """verify --read-data: each pack the backups' page lists name (part N/M of them, by
    id) read whole (check_pack); a damaged one is the problem of every backup naming it."""
    users: dict[str, list[str]] = {}
    for name in names:
        header = store.header(name)
        if header.snapshot.codec != PAGES:
            continue
        with contextlib.suppress(VerificationError):  # a damaged list is check_snapshot's finding
            for pack in page_store.read_page_list(store.folder / header.snapshot.file).packs:
                users.setdefault(pack, []).append(name)
    problems: dict[str, list[str]] = {name: [] for name in names}
    for pack in sorted(users):
        if not read_data.includes(pack):
            continue
        try:
            page_store.check_pack(store.folder, pack)
        except VerificationError as error:
            for name in users[pack]:
                problems[name].append(str(error))
    return problems


def _check_group(store: Store, group: list, read_data: Optional[ReadData], problems: dict) -> None:
    checksum = group[0][0]
    actual = store.blob_size(checksum)
    trouble = None
    if actual is None:
        trouble = f"blob {blob_relative_path(checksum)} is missing from the archive"
    elif any(size != actual for _, size, _ in group):
        trouble = f"blob {blob_relative_path(checksum)} is {actual} bytes, the record says {group[0][1]}"
    elif read_data and read_data.includes(checksum) and _md5(store.blob_path(checksum)) != checksum:
        trouble = f"blob {blob_relative_path(checksum)} does not match its name (MD5): it is damaged"
    if trouble:
        for _, _, name in group:
            problems[name].append(trouble)


def _md5(path: Path) -> str:
    from .hashing import file_digest

    try:
        return file_digest(path, "md5")
    except OSError:
        return ""


def _bytes(report: Reporter, total: int, label: str) -> Callable[[int], None]:
    done = [0]

    def advance(count: int) -> None:
        done[0] += count
        report.progress(done[0] / total if total else 1.0, label)

    return advance


# --- garbage collection ----------------------------------------------------------------------


def plan_collection(store: Store, keep: Optional[list[str]] = None) -> GcPlan:
    """What collecting garbage would delete if only the records `keep` (default: all)
    remained. Raises VerificationError if any kept record cannot be read whole."""
    names = store.record_names() if keep is None else keep
    protect = store.protect_since()
    strays: list[str] = []
    plan = plan_gc(store.stored_blobs(strays), store.referenced(names), protect)
    plan.strays = [f"{BLOBS}/{relative}" for relative in strays]
    if plan.delete_blobs:
        spare_referenced(plan, store.referenced(names))
    pending = [m.get("name", "") for m in store.pending_markers()]
    plan_snapshots(_snapshot_files(store), names, pending, protect, plan)
    return plan_packs(page_store.stored_packs(store.folder), _referenced_packs(store, names, pending), protect, plan)


def _snapshot_files(store: Store) -> Iterator[tuple[str, float, int]]:
    for name in store.snapshot_names():
        for path in (store.snapshot_path(name), store.page_list_path(name)):
            with contextlib.suppress(OSError):
                info = path.stat()
                yield name, info.st_mtime, info.st_size


def _referenced_packs(store: Store, names: list[str], pending: list[str]) -> set[str]:
    """Every pack a kept backup's page list names (VerificationError when one cannot
    be read whole: its packs must not be taken for garbage), and those of page lists
    that runs in progress have written before their records."""
    packs: set[str] = set()
    for name in names:
        header = store.header(name)
        if header.snapshot.codec == PAGES:
            packs.update(page_store.read_page_list(store.folder / header.snapshot.file).packs)
    for name in pending:
        with contextlib.suppress(VerificationError):
            packs.update(page_store.read_page_list(store.page_list_path(name)).packs)
    return packs


def collect(store: Store, plan: GcPlan, report: Reporter, batch: int = 1000) -> None:
    """Delete what the plan says: snapshots first, then blobs in batches, syncing each
    folder touched before the next batch."""
    for name in plan.delete_snapshots:
        discard(store.snapshot_path(name))
        discard(store.page_list_path(name))
    if plan.delete_snapshots:
        fsync_dir(store.folder / SNAPSHOTS)
    crash_point("gc-snapshots")
    _collect_packs(store, plan.delete_packs, batch)
    page_store.remove_stale_pack_temps(store.folder)
    for start in range(0, len(plan.delete_blobs), batch):
        folders = set()
        for checksum, _ in plan.delete_blobs[start : start + batch]:
            path = store.blob_path(checksum)
            try:
                discard(path)
            except OSError as error:
                raise storage_error("remove", path, error) from error
            folders.add(path.parent)
        _sync_folders(folders)
        crash_point("gc-batch")
        report.progress(min(start + batch, len(plan.delete_blobs)) / len(plan.delete_blobs), "collecting garbage")


def _collect_packs(store: Store, packs: list[tuple[str, int]], batch: int) -> None:
    """Each pack's index first, then the pack: an index never outlives its pack, so a
    run that finds an index may use its pages."""
    for start in range(0, len(packs), batch):
        folders = set()
        for pack, _ in packs[start : start + batch]:
            for suffix in (INDEX_SUFFIX, PACK_SUFFIX):
                path = page_store.pack_path(store.folder, pack, suffix)
                try:
                    discard(path)
                except OSError as error:
                    raise storage_error("remove", path, error) from error
                if suffix == INDEX_SUFFIX:
                    fsync_dir(path.parent)
            folders.add(path.parent)
        _sync_folders(folders)
        crash_point("gc-packs")


def _sync_folders(folders: set) -> None:
    for folder in folders:
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(folder)
    folders.clear()


# --- export as one zip --------------------------------------------------------------------------

ZIP_MEMBER_MODE = 0o600  # what unzip gives the extracted library: private, as the archive holds it


def export_zip(store: Store, name: str, output: Path, report: Reporter) -> Path:
    """A self-contained zip in Stash v0.31's layout: the database (deflated, as Stash
    writes it) at the root and every blob at blobs/aa/bb/<md5>, verified before it
    takes its final name."""
    header = store.header(name)
    from .verify import require_blobs, verify_backup

    make_folders(output.parent)
    with atomic_output(output) as (handle, temp):
        with zipfile.ZipFile(handle, "w", allowZip64=True) as packed:
            info = zipfile.ZipInfo(header.database_member, _zip_time(header.created))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, ZIP_MEMBER_MODE << 16
            info.file_size = header.snapshot.size
            with packed.open(info, "w", force_zip64=header.snapshot.size > 0x7FFFFFFF) as member:
                store.read_snapshot(
                    header, member, progress=_bytes(report.phase(0, 0.4), header.snapshot.size, "writing database")
                )
            done = _bytes(report.phase(0.4, 0.8), header.blob_bytes, "writing blobs")
            with store.blob_list(name, images_only=True) as blobs:  # Stash's zip: the database and its images
                for checksum, size in blobs:
                    _copy_blob_into(packed, store.blob_path(checksum), blob_member_name(checksum), size)
                    done(size)
        handle.flush()
        verified = verify_backup(
            temp, QUICK, want_sha256=False, progress=report.phase(0.8, 1.0).bytes_progress("verifying the zip")
        )
        require_blobs(
            verified, tolerated=header.missing_blobs if header.includes_blobs else len(verified.blobs_not_included)
        )
        os.chmod(temp, private_mode(output.parent))  # the whole library: private as the archive
    return output


def export_database(store: Store, name: str, output: Path, report: Reporter) -> Path:
    """The backup's database alone, for Stash's manual restore: a plain SQLite file, or
    gzip (`.gz`: `gunzip` gives the file) when `output` ends in .gz. Reassembled with
    its SHA-256 checked; a plain file also passes SQLite's quick check (the .gz is
    read back whole) before it takes its final name."""
    from .snapshot import StreamCompressor, decompress

    header = store.header(name)
    progress = _bytes(report, header.snapshot.size, "writing database")
    make_folders(output.parent)
    with atomic_output(output) as (handle, temp):
        if output.name.endswith(SNAPSHOT_SUFFIX):
            compressor = StreamCompressor(handle)
            try:
                store.read_snapshot(header, compressor, progress=progress)
                compressor.finish()
            finally:
                compressor.close()
            handle.flush()
            with open(temp, "rb") as written:
                digest = decompress(written, Discard())
            if (digest.size, digest.sha256) != (header.snapshot.size, header.snapshot.sha256):
                raise VerificationError(f"{temp} does not decompress to the backup's database: not written")
        else:
            store.read_snapshot(header, handle, progress=progress, durable=True)
            handle.flush()
            check_database(temp, QUICK, blob_references=False)
        os.chmod(temp, private_mode(output.parent))
    return output


def _copy_blob_into(packed: zipfile.ZipFile, path: Path, member: str, size: int) -> None:
    info = zipfile.ZipInfo(member, (2020, 1, 1, 0, 0, 0))
    info.compress_type, info.external_attr, info.file_size = zipfile.ZIP_STORED, ZIP_MEMBER_MODE << 16, size
    try:
        with open(path, "rb") as source, packed.open(info, "w") as sink:
            copy_and_hash(source, sink)
    except FileNotFoundError:
        raise VerificationError(f"blob {path} is missing from the archive: run verify") from None


def _zip_time(created: str) -> tuple:
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(created)
        return (max(moment.year, 1980), moment.month, moment.day, moment.hour, moment.minute, moment.second)
    except ValueError:
        return (1980, 1, 1, 0, 0, 0)


# --- importing a backup file (a server's zip, an old archive's zip or sqlite file) ---------


def import_backup_file(
    store: Store,
    path: Path,
    name: str,
    level: str,
    report: Reporter,
    source: str,
    server_version: str = "",
    migrated_from: str = "",
    known_sha256: str = "",
    added_at: str = "",
) -> records.Header:
    """Store a full-backup zip or a plain database file as a stored backup: its
    database checked, the blobs it refers to copied (MD5-checked) unless the store
    has them. For a plain file, `known_sha256` spares a second read when the caller
    hashed it while it arrived."""
    from .verify import file_digest, is_zip

    details = dict(source=source, server_version=server_version, migrated_from=migrated_from, added_at=added_at)
    if not is_zip(path):
        new = checked_backup(name, path, known_sha256 or file_digest(path), level, includes_blobs=False, **details)
        return store_backup(store, new, NoBlobs(), report)
    make_folders(store.incoming)
    database = store.incoming / f"{name}.database{_TEMP}{os.getpid()}"
    try:
        with zipfile.ZipFile(path) as packed:
            layout = fullbackup.read_layout(packed, path)
            with open(database, "wb") as out:
                fullbackup.copy_member(packed, layout.database_member, out)
            new = checked_backup(
                name,
                database,
                file_digest(database),
                level,
                includes_blobs=True,
                database_member=layout.database_member,
                **details,
            )
            return store_backup(store, new, ZipSource(packed, layout), report)
    except zipfile.BadZipFile as error:
        raise VerificationError(f"{path} is not a readable zip ({error}): the file is damaged") from error
    except VerificationError as error:
        raise VerificationError(str(error).replace(str(database), f"{path}!database")) from None
    finally:
        discard(database)
