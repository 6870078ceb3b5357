"""The archive's content-addressed store: images once, database snapshots, records.

    <archive>/blobs/<aa>/<bb>/<md5>          each image once, in Stash's own layout
    <archive>/packs/<aa>/<id>.pack, .idx     each database page once (pages.py, page_store.py)
    <archive>/snapshots/<backup name>.pages  a backup's page list: its database, page by page
    <archive>/snapshots/<backup name>.gz     a whole compressed database (backups made before
                                             page snapshots; `migrate` folds them into pages)
    <archive>/backups/<backup name>.record   what a backup consists of (record.py)
    <archive>/pending/<run>.json             a run that is adding data right now
    <archive>/incoming/                      temp files of the run holding the lock

Crash safety, as restic's prune: a backup's record is written only after its snapshot
and every blob it lists are durable, and it is the first thing removed when the backup
is forgotten. Garbage collection (under the archive lock) deletes only blobs,
snapshots and packs that no record (or its page list) refers to and that no in-progress run may be adding: a run
writes its pending marker before its first blob and removes it after its record, and
collection spares everything written since the oldest marker. kill -9 at any point
leaves at worst unreferenced files, which the next collection removes.

Standard library only (stash-restore reads the store)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import threading
import time
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from heapq import merge
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Optional

from . import record as records
from . import page_store, pages
from . import snapshot as snapshots
from .atomic import (
    FilesLikeFolder,
    discard,
    fsync_dir,
    make_folders,
    own_like_folder,
    remove_stale_temps,
    storage_error,
)
from .hashing import copy_and_hash
from .errors import VerificationError
from .faults import crash_point
from .naming import TEMP_MARKER, blob_checksum, blob_relative_path
from .processes import dead_here, identity

BLOBS, SNAPSHOTS, RECORDS, PENDING, INCOMING = "blobs", "snapshots", "backups", "pending", "incoming"
SNAPSHOT_SUFFIX = ".gz"
# Spares blobs written shortly before a pending run's recorded start (clock steps,
# file systems whose times come from another machine).
PENDING_SLACK_SECONDS = 300
READ_AHEAD_THREADS = 4  # stats of the newest backup's blobs at once while the database is copied
READ_AHEAD_BATCH = 256
# A marker older than this belongs to a run that died on another machine.
PENDING_STALE_SECONDS = 48 * 3600


@dataclass(frozen=True)
class StoredBlob:
    checksum: str
    size: int
    mtime: float


class Store:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._blobs = os.path.join(self.folder, BLOBS)  # a string: blob_size runs once per blob

    # --- layout ------------------------------------------------------------------
    @property
    def blobs_folder(self) -> Path:
        return self.folder / BLOBS

    @property
    def records_folder(self) -> Path:
        return self.folder / RECORDS

    @property
    def incoming(self) -> Path:
        return self.folder / INCOMING

    def blob_path(self, checksum: str) -> Path:
        return self.blobs_folder / blob_relative_path(checksum)

    def snapshot_path(self, name: str) -> Path:
        """A gzip snapshot (backups made before page snapshots, issue 21)."""
        return self.folder / SNAPSHOTS / (name + SNAPSHOT_SUFFIX)

    def page_list_path(self, name: str) -> Path:
        return self.folder / SNAPSHOTS / (name + pages.LIST_SUFFIX)

    def newest_page_list(self) -> Optional[Path]:
        """The page list written last (by its time, then name), a hint for the next
        snapshot's pages: any list, or none, is correct; the newest is the quickest."""
        return _newest(self.folder / SNAPSHOTS, pages.LIST_SUFFIX)

    @contextlib.contextmanager
    def blobs_read_ahead(self) -> Iterator[None]:
        """While the caller copies the database, look up the newest backup's blobs on
        threads of their own, so that the new backup's walk (a stat of each blob, after
        the copy) finds them in the kernel's caches rather than waiting on the disk for
        each. A cold stat waits on the disk, not a CPU: several at once keep more of the
        disk's queue busy. Nothing found is used: a damaged or missing record only stops it."""
        newest = _newest(self.records_folder, records.SUFFIX)
        stop = threading.Event()

        def look_up(batch: list[str]) -> None:
            for checksum in batch:
                if stop.is_set():
                    return
                self.blob_size(checksum)

        def look() -> None:
            assert newest is not None
            with ThreadPoolExecutor(READ_AHEAD_THREADS, thread_name_prefix="read-ahead") as pool:
                in_flight: collections.deque = collections.deque()
                try:
                    with self.blob_list(newest.name[: -len(records.SUFFIX)]) as listed:
                        checksums = (checksum for checksum, _ in listed)
                        while not stop.is_set() and (batch := list(itertools.islice(checksums, READ_AHEAD_BATCH))):
                            in_flight.append(pool.submit(look_up, batch))
                            while len(in_flight) > 2 * READ_AHEAD_THREADS:
                                in_flight.popleft().result()
                except VerificationError:
                    return

        thread = threading.Thread(target=look, name="read-ahead", daemon=True) if newest else None
        if thread:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread:
                thread.join()

    def record_path(self, name: str) -> Path:
        return self.records_folder / records.record_name(name)

    def exists(self) -> bool:
        return self.records_folder.is_dir()

    # --- blobs ---------------------------------------------------------------------
    def blob_size(self, checksum: str) -> Optional[int]:
        try:  # a plain string path: this runs once per blob of every backup
            return os.stat(f"{self._blobs}/{checksum[0:2]}/{checksum[2:4]}/{checksum}").st_size
        except OSError:
            return None

    def stored_blobs(self, strays: Optional[list[str]] = None) -> Iterator[StoredBlob]:
        """Every blob file, sorted by checksum (folder by folder: the layout sorts).
        Anything else in the blobs folder (`Thumbs.db`, `.DS_Store`, an upper-case copy
        of a name) is no blob: it is skipped, and its path (relative to the blobs
        folder) added to `strays` when given. Our own temp names are skipped silently."""
        if not self.blobs_folder.is_dir():
            return
        for first in _entries(self.blobs_folder, strays, ""):
            if not first.is_dir(follow_symlinks=False):
                _stray(strays, first.name)
                continue
            for second in _entries(first.path, strays, first.name + "/"):
                if not second.is_dir(follow_symlinks=False):
                    _stray(strays, f"{first.name}/{second.name}")
                    continue
                yield from _blobs_in(second.path, f"{first.name}/{second.name}/", strays)

    # --- records -------------------------------------------------------------------
    def record_names(self) -> list[str]:
        if not self.records_folder.is_dir():
            return []
        suffix = records.SUFFIX
        return sorted(
            p.name[: -len(suffix)]
            for p in self.records_folder.iterdir()
            if p.name.endswith(suffix) and TEMP_MARKER not in p.name
        )

    def header(self, name: str) -> records.Header:
        return records.read_header(self.record_path(name))

    def headers(self) -> list[records.Header]:
        return [self.header(name) for name in self.record_names()]

    def blob_list(self, name: str, images_only: bool = False) -> records.BlobList:
        """Every blob the backup refers to (images and settings files), or its images."""
        return records.BlobList(self.record_path(name), images_only)

    def settings(self, name: str) -> list:
        """The backup's settings files (record.read_settings)."""
        return records.read_settings(self.record_path(name))

    def referenced(self, names: Iterable[str]) -> Iterator[str]:
        """Checksums the given records refer to, merged in order (with repeats); raises
        VerificationError on any damaged record, so a partial list is never used."""
        with contextlib.ExitStack() as stack:
            streams = [_checksums(stack.enter_context(self.blob_list(name))) for name in names]
            yield from merge(*streams)

    def write_record(self, header: records.Header, blobs: Iterable[tuple[str, int]], settings=()) -> None:
        make_folders(self.records_folder)
        records.write(self.record_path(header.name), header, blobs, settings)

    def forget(self, name: str) -> None:
        """Remove a backup's record: from here on nothing keeps its data."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path(name))
        fsync_dir(self.records_folder)

    # --- snapshots -------------------------------------------------------------------
    def snapshot_names(self) -> list[str]:
        """Names of the backups with a snapshot file of either kind (gzip, page list)."""
        folder = self.folder / SNAPSHOTS
        if not folder.is_dir():
            return []
        names = set()
        for path in folder.iterdir():
            for suffix in (SNAPSHOT_SUFFIX, pages.LIST_SUFFIX):
                if path.name.endswith(suffix) and TEMP_MARKER not in path.name:
                    names.add(path.name[: -len(suffix)])
        return sorted(names)

    def read_snapshot(self, header: records.Header, target, progress=None, durable: bool = False) -> snapshots.Digest:
        """Reassemble a backup's database into `target` (anything with write()), from
        its gzip snapshot or its page list, checking size and SHA-256: the one place
        every reader of a stored database goes through. `durable`: the caller wants the
        file on the disk (a restore, an export): a page list's reassembly fsyncs it
        while it hashes it (page_store.read_pages)."""
        path = self.folder / header.snapshot.file
        if header.snapshot.codec not in (snapshots.CODEC, pages.CODEC):
            raise VerificationError(
                f"{header.name}: its database is stored as {header.snapshot.codec!r}, which this version "
                "cannot read: upgrade stash-backup"
            )
        try:
            if header.snapshot.codec == pages.CODEC:
                digest = page_store.read_pages(self.folder, path, target, progress, durable)
            else:
                with open(path, "rb") as source:
                    digest = snapshots.decompress(source, target, progress)
        except FileNotFoundError:
            raise VerificationError(f"{header.name}: its database snapshot {path} is missing") from None
        except VerificationError as error:
            raise VerificationError(f"{path}: {error}" if str(path) not in str(error) else str(error)) from None
        if (digest.size, digest.sha256) != (header.snapshot.size, header.snapshot.sha256):
            raise VerificationError(
                f"{path} decompresses to {digest.size} bytes with SHA-256 {digest.sha256[:12]}…, "
                f"the record says {header.snapshot.size} bytes, {header.snapshot.sha256[:12]}…: "
                "the snapshot is damaged"
            )
        return digest

    # --- pending markers -------------------------------------------------------------
    @contextlib.contextmanager
    def pending(self, name: str) -> Iterator[Path]:
        """Mark this run as adding data until the block ends (its record written)."""
        folder = self.folder / PENDING
        make_folders(folder)
        me = identity()
        marker = folder / f"{name}.{me['machine']}.{me['pid']}.json"
        payload = {"name": name, **me, "started": time.time()}
        from .atomic import write_bytes_atomic

        write_bytes_atomic(marker, json.dumps(payload).encode())
        try:
            yield marker
        finally:
            discard(marker)
            fsync_dir(folder)

    def pending_markers(self) -> list[dict]:
        folder = self.folder / PENDING
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                found.append({**data, "path": str(path)})
            except (OSError, ValueError):
                # unreadable: a run was killed while writing it; it still counts, from its file time
                with contextlib.suppress(OSError):
                    found.append({"name": "", "started": path.stat().st_mtime, "path": str(path)})
        return found

    def protect_since(self) -> Optional[float]:
        """Blobs and snapshots newer than this may belong to a run in progress."""
        starts = [float(m.get("started", 0)) for m in self.pending_markers()]
        return min(starts) - PENDING_SLACK_SECONDS if starts else None

    def clean_after_killed_runs(self) -> list[Path]:
        """With the archive's lock held: temp files in incoming/ are a killed run's, and
        so are markers of this machine's processes that no longer exist (processes.
        dead_here: a marker of another machine, or of an older version that named the
        host alone, may be a live run's), and any marker older than two days.
        Temp files a killed run left where it writes in place (a record, a page list,
        a marker) go when their maker is gone (atomic.remove_stale_temps). Returns what
        was removed."""
        removed = []
        for folder in (self.records_folder, self.folder / SNAPSHOTS, self.folder / PENDING):
            removed += remove_stale_temps(folder)
        if self.incoming.is_dir():
            for path in self.incoming.iterdir():
                discard(path)
                removed.append(path)
        now = time.time()
        for marker in self.pending_markers():
            stale = now - float(marker.get("started", now)) > PENDING_STALE_SECONDS
            if stale or dead_here(marker.get("machine"), marker.get("pid")):
                discard(Path(marker["path"]))
                removed.append(Path(marker["path"]))
        return removed

    # --- adding ------------------------------------------------------------------------
    def blob_writer(self, batch: int = 500) -> "BlobWriter":
        return BlobWriter(self, batch)


class BlobWriter:
    """Adds blobs: each is copied into incoming/ while its MD5 is checked; every
    `batch` blobs the copies are synced, renamed into place and their folders synced,
    on a thread of its own while the next batch is copied. A blob is in the store
    under its name only once it is complete and durable."""

    def __init__(self, store: Store, batch: int):
        self.store, self.batch = store, batch
        self._staged: list[tuple[str, Path]] = []
        # Blob folders (aa/bb) known to exist, a byte each: a set of 65,536 paths would take 30 MiB.
        self._folders = bytearray(1 << 16)  # (the committing thread's)
        self._committer: Optional[ThreadPoolExecutor] = None
        self._committing: Optional[Future] = None
        self.added = 0
        self.added_bytes = 0

    def __enter__(self) -> "BlobWriter":
        make_folders(self.store.incoming)
        self._files = FilesLikeFolder(self.store.incoming)
        return self

    def __exit__(self, kind, *exc) -> None:
        try:
            if kind is None:
                self.flush()
        finally:
            self._settle()

    def _settle(self) -> None:
        """On leaving, whatever happened: the batch being committed finishes (its blobs
        whole and durable, or its copies removed), the copies not handed over (only
        after a failure) are removed."""
        if self._committing is not None:
            self._committing.exception()  # waits; the error was (or will be) raised elsewhere
            self._committing = None
        if self._committer is not None:
            self._committer.shutdown(wait=True)
            self._committer = None
        for _, temp in self._staged:
            discard(temp)
        self._staged.clear()

    def add(self, checksum: str, source: IO[bytes]) -> Optional[int]:
        """Copy one blob from an open file; returns its size, or None (nothing kept)
        when its content does not match its name."""
        temp = self.store.incoming / f"{checksum}{TEMP_MARKER}{os.getpid()}"
        try:
            with self._files.create(temp.name) as out:
                digest, size = copy_and_hash(_Guarded(source), out, "md5")
        except _Unreadable:  # at the source (an I/O error on Stash's disk, a bad zip CRC)
            discard(temp)
            return None
        except OSError as error:
            discard(temp)
            raise storage_error("write blobs into", self.store.incoming, error) from error
        if digest != checksum:
            discard(temp)
            return None
        self._staged.append((checksum, temp))
        self.added += 1
        self.added_bytes += size
        if len(self._staged) >= self.batch:
            self._hand_over()
        return size

    def _hand_over(self) -> None:
        """The batch is committed on a thread of its own while the next is copied (a
        sync waits on the disk); one batch at a time, in order."""
        self._wait_for_commit()
        batch, self._staged = self._staged, []
        if self._committer is None:
            self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._committing = self._committer.submit(self._commit, batch)

    def _wait_for_commit(self) -> None:
        if self._committing is not None:
            committing, self._committing = self._committing, None
            committing.result()  # the batch's error, raised here

    def flush(self) -> None:
        """Every blob added so far is in the store, durably."""
        self._wait_for_commit()
        batch, self._staged = self._staged, []
        self._commit(batch)

    def _commit(self, batch: list[tuple[str, Path]]) -> None:
        """Sync the copies, rename them into place, sync their folders; on a failure the
        copies not yet renamed are removed."""
        if not batch:
            return
        done = 0
        try:
            _sync_files([temp for _, temp in batch])
            folders: set[Path] = set()
            for checksum, temp in batch:
                final, known = self.store.blob_path(checksum), int(checksum[:4], 16)  # checked: its MD5
                if not self._folders[known] and not final.parent.is_dir():
                    make_folders(final.parent)
                    folders.update((final.parent.parent, final.parent.parent.parent))
                self._folders[known] = 1
                os.replace(temp, final)  # a damaged copy under this name is replaced by a checked one
                done += 1
                folders.add(final.parent)
            sync_folders(folders)
        except OSError as error:
            for _, temp in batch[done:]:
                discard(temp)
            raise storage_error("store blobs in", self.store.blobs_folder, error) from error
        crash_point("blobs-batch")


def write_snapshot(
    store: Store, name: str, database: Path, level: int = snapshots.LEVEL, progress=None
) -> tuple[Path, snapshots.Digest]:
    """Compress a database into a temp file in incoming/ (fsynced). The caller
    checks the digest, then commits it with `commit_snapshot`."""
    make_folders(store.incoming)
    temp = store.incoming / f"{name}{SNAPSHOT_SUFFIX}{TEMP_MARKER}{os.getpid()}"
    try:
        with open(database, "rb") as source, open(temp, "wb") as out:
            digest = snapshots.compress(source, out, level=level, progress=progress)
            out.flush()
            os.fsync(out.fileno())
        own_like_folder(temp)
    except OSError as error:
        discard(temp)
        raise storage_error("write the database snapshot into", store.incoming, error) from error
    except BaseException:
        discard(temp)
        raise
    return temp, digest


def commit_snapshot(store: Store, name: str, temp: Path) -> Path:
    final = store.snapshot_path(name)
    make_folders(final.parent)
    try:
        os.replace(temp, final)
        fsync_dir(final.parent)
    except OSError as error:
        raise storage_error("store the database snapshot in", final.parent, error) from error
    return final


# --- helpers ---------------------------------------------------------------------------


def _checksums(blobs: Iterator[tuple[str, int]]) -> Iterator[str]:
    for checksum, _ in blobs:
        yield checksum


def _entries(folder, strays: Optional[list[str]], prefix: str) -> list[os.DirEntry]:
    """The entries of a blobs folder level, sorted by name; names that cannot be a
    level of the layout (`@eaDir`, `desktop.ini`) go to `strays`."""
    levels = []
    for entry in _entries_sorted(folder):
        if TEMP_MARKER in entry.name:
            continue
        if len(entry.name) == 2:
            levels.append(entry)
        else:
            _stray(strays, prefix + entry.name)
    return levels


def _blobs_in(folder: str, prefix: str, strays: Optional[list[str]]) -> Iterator[StoredBlob]:
    for entry in _entries_sorted(folder):
        if TEMP_MARKER in entry.name:
            continue
        if not entry.is_file(follow_symlinks=False) or blob_checksum(prefix + entry.name) is None:
            _stray(strays, prefix + entry.name)
            continue
        info = entry.stat(follow_symlinks=False)
        yield StoredBlob(entry.name, info.st_size, info.st_mtime)


def _entries_sorted(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda e: e.name)


def _newest(folder: Path, suffix: str) -> Optional[Path]:
    """The file named *suffix in `folder` changed last (then the greatest name); temp
    files skipped. A hint's choice: None where the folder cannot be read."""
    try:
        found = [e for e in os.scandir(folder) if e.name.endswith(suffix) and TEMP_MARKER not in e.name]
        newest = max(found, key=lambda entry: (entry.stat(follow_symlinks=False).st_mtime_ns, entry.name), default=None)
    except OSError:
        return None
    return Path(newest.path) if newest else None


def _stray(strays: Optional[list[str]], relative: str) -> None:
    if strays is not None:
        strays.append(relative)


# Up to this many files (or folders) are synced one by one, several at a time; more
# take one sync of everything. A night adds a few hundred images: syncing each costs
# less than flushing the whole machine's dirty pages (the downloaded database among them).
SYNC_ONE_BY_ONE = 256
SYNC_THREADS = 8


def _sync_files(paths: list[Path]) -> None:
    if hasattr(os, "sync") and len(paths) > SYNC_ONE_BY_ONE:
        os.sync()
        return
    _in_parallel(_fsync_file, paths)


def sync_folders(folders) -> None:
    """Make renames in these folders durable (deepest first when one by one)."""
    folders = sorted(folders, key=lambda p: len(Path(p).parts), reverse=True)
    if hasattr(os, "sync") and len(folders) > SYNC_ONE_BY_ONE:
        os.sync()
        return
    _in_parallel(lambda folder: fsync_dir(Path(folder)), folders)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _in_parallel(work, items) -> None:
    """fsync waits on the disk, not the CPU: several at once share the journal's commits."""
    if len(items) <= 1:
        for item in items:
            work(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(SYNC_THREADS, len(items))) as pool:
        for _ in pool.map(work, items):
            pass


class _Unreadable(Exception):
    """The source of a blob cannot be read: the blob is unavailable, not the run failed."""


class _Guarded:
    """A blob's source whose read errors (an I/O error on Stash's disk, a zip entry
    whose CRC is wrong) are told apart from errors writing into the archive."""

    def __init__(self, source: IO[bytes]):
        self.source = source

    def read(self, size: int) -> bytes:
        try:
            return self.source.read(size)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise _Unreadable() from error

    def readinto(self, buffer) -> int:
        try:  # every source is one of io's readers (an open file, a zip entry)
            return self.source.readinto(buffer)  # type: ignore[attr-defined]
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise _Unreadable() from error


ProgressBytes = Optional[Callable[[int], None]]
