"""Page-level snapshots in the archive (the format: pages.py): a database stored as the
pages no pack holds yet, and reassembled in order with its SHA-256 checked.

Memory stays flat in the archive's history: writing keeps a table of the new
database's pages alone (25 bytes a page, 37 for each page an earlier snapshot's list
did not place: 19 MiB for a first night of a 2 GiB database), and streams every pack
index past the pages left; reading keeps the frame tables of the packs a list names and
a few decompressed frames.

Crash safety, as the blobs': a pack is written into incoming/, fsynced and renamed
under its id, then its index beside it (garbage collection removes an index before
its pack, so an index always has its pack); the page list is committed just before
the record. Every file is new since the run's pending marker, which protects it
until the record names the list. Standard library only (stash-restore reads these)."""

from __future__ import annotations

import bisect
import dataclasses
import collections
import hashlib
import io
import itertools
import os
import stat
import zlib
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Optional

from . import pages as fmt
from .atomic import (
    commit,
    discard,
    fsync_dir,
    make_folders,
    own_like_folder,
    remove_stale_temps,
    storage_error,
    write_bytes_atomic,
)
from .errors import VerificationError
from .hashing import Discard, copy_and_hash
from .faults import crash_point
from .naming import TEMP_MARKER
from .snapshot import Digest, Sink

PACKS = "packs"
READ_CHUNK = 256 * 1024  # bytes of database read (and hashed) at a time
CACHED_FRAMES = 16  # decompressed frames kept while reassembling: 16 MiB
# Frames compressed (writing) or decompressed (reassembling into a file) at once, zlib
# running without Python's lock: as many as the CPUs, at most 4 (gzip snapshots used 4
# too); each in flight holds a 1 MiB frame twice.
FRAME_THREADS = max(1, min(4, os.cpu_count() or 1))
# A search key's bytes: 4 keep a first night's sort 2 MiB smaller at 2 GiB than 8; of
# 524,288 pages about 32 pairs share one by chance, each confirmed by its whole hash.
KEY_BYTES = 4
FEW_LEFT = 65536  # pages left to find after an earlier snapshot's places: searched as a set
# A frame a snapshot takes fewer pages of than this share is not worth decompressing on
# restore: those pages are stored again, beside the night's new ones (_loosen_sparse_frames).
SPARSE_FRAME_SHARE = 0.25
Progress = Optional[Callable[[int], None]]


def pack_path(folder: Path, pack: str, suffix: str = fmt.PACK_SUFFIX) -> Path:
    return Path(folder) / PACKS / pack[:2] / (pack + suffix)


@dataclass(frozen=True)
class StoredPack:
    pack: str
    size: int  # of the pack and its index
    mtime: float  # the newer of the two
    indexed: bool


def stored_packs(folder: Path) -> Iterator[StoredPack]:
    """Every pack (or lone index) under packs/, sorted by id; temp names skipped."""
    root = Path(folder) / PACKS
    if not root.is_dir():
        return
    for level in sorted(os.scandir(root), key=lambda e: e.name):
        if len(level.name) != 2 or not level.is_dir(follow_symlinks=False):
            continue
        found: dict[str, list[os.stat_result]] = {}
        indexed: set[str] = set()
        for entry in os.scandir(level.path):
            stem, dot, suffix = entry.name.partition(".")
            if TEMP_MARKER in entry.name or not _is_id(stem) or "." + suffix not in (fmt.PACK_SUFFIX, fmt.INDEX_SUFFIX):
                continue
            found.setdefault(stem, []).append(entry.stat(follow_symlinks=False))
            if "." + suffix == fmt.INDEX_SUFFIX:
                indexed.add(stem)
        for pack in sorted(found):
            infos = found[pack]
            yield StoredPack(pack, sum(i.st_size for i in infos), max(i.st_mtime for i in infos), pack in indexed)


def remove_stale_pack_temps(folder: Path) -> list[Path]:
    """Temp files in packs/ that a killed run of an older version left (it wrote an
    index's temp beside its pack; now both are written in incoming/), once their
    maker is gone. Returns what was removed."""
    root = Path(folder) / PACKS
    if not root.is_dir():
        return []
    removed: list[Path] = []
    for level in sorted(os.scandir(root), key=lambda e: e.name):
        if len(level.name) == 2 and level.is_dir(follow_symlinks=False):
            removed += remove_stale_temps(Path(level.path))
    return removed


def _is_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def read_index(folder: Path, pack: str) -> fmt.PackIndex:
    """A pack's index, checked against its pack's size."""
    path = pack_path(folder, pack, fmt.INDEX_SUFFIX)
    data = _read_bounded(path, fmt.MAX_INDEX_BYTES, f"pack {pack[:12]}…")
    index = fmt.parse_index(data, str(path))
    try:
        stored = pack_path(folder, pack).stat().st_size
    except FileNotFoundError:
        raise VerificationError(f"pack {pack_path(folder, pack)} is missing") from None
    if stored != index.pack_bytes:
        raise VerificationError(
            f"pack {pack_path(folder, pack)} is {stored} bytes, its index says {index.pack_bytes}: it is damaged"
        )
    return index


def read_page_list(path: Path) -> fmt.PageList:
    return fmt.parse_list(_read_bounded(path, fmt.MAX_LIST_FILE, "the page list"), str(path))


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise VerificationError(f"{path} is missing ({what})") from None
    except OSError as error:
        raise VerificationError(f"{path} cannot be read ({error.strerror or error})") from None
    if len(data) > limit:
        raise VerificationError(f"{path} is larger than any {what} can be: it is damaged")
    return data


# --- reading ---------------------------------------------------------------------------------


def read_pages(folder: Path, list_path: Path, target, progress: Progress = None, durable: bool = False) -> Digest:
    """Reassemble the database a page list describes into `target` (anything with
    write()); VerificationError when a file is missing or damaged, or the result is not
    the size and SHA-256 the list records. `durable`: a file is also on the disk when
    this returns (fsynced while it is hashed)."""
    pages = read_page_list(list_path)
    indexes = [_frames_only(read_index(folder, pack)) for pack in pages.packs]
    for run in pages.each_run():
        fmt.check_run_in(run, indexes[run.pack], pages.packs[run.pack], str(list_path))
    frames = _FrameCache(folder, pages.packs, indexes, pages.page_size)
    fd = _file_at_its_start(target)
    if fd is None:
        written, sha256 = _in_page_order(pages, frames, target, progress)
    else:
        written, sha256 = _in_pack_order(pages, frames, target, fd, progress, durable)
    if (written, sha256) != (pages.size, pages.sha256):
        raise VerificationError(
            f"{list_path}: the pages make {written} bytes with SHA-256 {sha256[:12]}…, the list records "
            f"{pages.size} bytes, {pages.sha256[:12]}…: a pack is damaged"
        )
    return Digest(written, sha256, list_path.stat().st_size)


def _in_page_order(pages: fmt.PageList, frames: "_FrameCache", target, progress: Progress) -> tuple[int, str]:
    """Into a stream (a gzip writer, a pipe): the pages in the database's order."""
    written = 0
    with Sink(target, progress) as sink:
        for run in pages.each_run():
            for chunk in frames.run(run.pack, run.first, run.length):
                sink.put(chunk)
                written += len(chunk)
    return written, sink.sha256


def _file_at_its_start(target) -> Optional[int]:
    """The descriptor of an empty regular file open for reading and writing, which pages
    can be written into at their own offsets and hashed from; None for anything else."""
    if not hasattr(os, "pwrite"):
        return None
    try:
        if not target.seekable() or not target.readable() or target.tell() != 0:
            return None  # (read back to hash it)
        fd = target.fileno()
        found = os.fstat(fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if stat.S_ISREG(found.st_mode) and found.st_size == 0 else None


def _in_pack_order(
    pages: fmt.PageList, frames: "_FrameCache", target, fd: int, progress: Progress, durable: bool
) -> tuple[int, str]:
    """Into a file: each frame the list needs is decompressed once, on several threads
    (zlib runs without Python's lock), and its pages written at their places in the
    file; the file is hashed afterwards, beside its fsync when `durable`. In the
    database's order, a month of nights of scattered changes (thousands of runs across
    dozens of packs) decompressed the same frames again and again: 3.9x restic's
    restore at 1 GiB."""
    written = 0
    with ThreadPoolExecutor(max_workers=FRAME_THREADS, thread_name_prefix="restore") as pool:
        in_flight: collections.deque = collections.deque()
        try:
            for pack, number, pieces in _frame_pieces(pages):
                in_flight.append(pool.submit(_write_frame, frames, fd, pack, number, pieces))
                while len(in_flight) > 2 * FRAME_THREADS:
                    written += _done(in_flight.popleft(), progress)
            while in_flight:
                written += _done(in_flight.popleft(), progress)
        finally:
            for future in in_flight:
                future.cancel()
        target.seek(written)
        synced = pool.submit(os.fsync, fd) if durable else None  # the disk busy while a CPU hashes
        sha256 = _file_sha256(fd, written)
        if synced:
            synced.result()
    return written, sha256


def _frame_pieces(pages: fmt.PageList) -> Iterator[tuple[int, int, array]]:
    """Each frame the list needs, once, pack by pack: (pack, frame number, pieces), a
    piece being (first page in the frame, pages, page in the file)."""
    per_frame = fmt.pages_per_frame(pages.page_size)
    by_pack = [array("I") for _ in pages.packs]  # (first, length, page in the file): 12 bytes a run
    place = 0
    for run in pages.each_run():
        by_pack[run.pack].extend((run.first, run.length, place))
        place += run.length
    for pack, runs in enumerate(by_pack):
        by_frame: dict[int, array] = {}
        for at in range(0, len(runs), 3):
            page, end, place = runs[at], runs[at] + runs[at + 1], runs[at + 2]
            while page < end:
                number, offset = divmod(page, per_frame)
                take = min(end - page, per_frame - offset)
                by_frame.setdefault(number, array("I")).extend((offset, take, place))
                page, place = page + take, place + take
        by_pack[pack] = array("I")
        for number in sorted(by_frame):
            yield pack, number, by_frame.pop(number)


def _write_frame(frames: "_FrameCache", fd: int, pack: int, number: int, pieces: array) -> int:
    """One frame decompressed (on a worker thread) and its pieces written in place."""
    data, size, written = frames.load(pack, number), frames.size, 0
    for at in range(0, len(pieces), 3):
        offset, take, place = pieces[at], pieces[at + 1], pieces[at + 2]
        _write_at(fd, memoryview(data)[offset * size : (offset + take) * size], place * size)
        written += take * size
    return written


def _done(future, progress: Progress) -> int:
    written = future.result()
    if progress:
        progress(written)
    return written


def _write_at(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _file_sha256(fd: int, size: int) -> str:
    """Through hashing's reused buffer: with large buffers mapped on their own
    (core/memory.py), a new 1 MiB bytes object a read was a new mapping and its page
    faults (the hash of a 1 GiB restore: 0.92-0.98 s against 0.72-0.76 s)."""
    return copy_and_hash(_Positional(fd, size), Discard(), "sha256")[0]


class _Positional:
    """The first `size` bytes of an open file, read at their offsets (pread): the
    file's own offset is left where its writer put it."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size, self.offset = fd, size, 0

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self.size - self.offset)
        got = os.preadv(self.fd, [memoryview(buffer)[:want]], self.offset) if want > 0 else 0
        self.offset += got
        return got

    def read(self, count: int) -> bytes:
        data = os.pread(self.fd, max(0, min(count, self.size - self.offset)), self.offset)
        self.offset += len(data)
        return data


def _frames_only(index: fmt.PackIndex) -> fmt.PackIndex:
    """Reading needs a pack's frames, not its page hashes (16 bytes a page)."""
    return dataclasses.replace(index, hashes=b"")


class _FrameCache:
    """Decompressed frames, the most recently used kept: a database's pages come from a
    few packs in their own order, so each frame is mostly decompressed once."""

    def __init__(self, folder: Path, packs: tuple[str, ...], indexes: list[fmt.PackIndex], size: int):
        self.folder, self.packs, self.indexes, self.size = folder, packs, indexes, size
        self._frames: collections.OrderedDict = collections.OrderedDict()

    def run(self, pack: int, first: int, length: int) -> Iterator[bytes]:
        """The bytes of `length` pages of a pack from page `first`, a frame's share at a time."""
        per_frame, page, end = fmt.pages_per_frame(self.size), first, first + length
        while page < end:
            number, offset = divmod(page, per_frame)
            take = min(end - page, per_frame - offset)
            yield self.get(pack, number)[offset * self.size : (offset + take) * self.size]
            page += take

    def get(self, pack: int, number: int) -> bytes:
        key = (pack, number)
        if key in self._frames:
            self._frames.move_to_end(key)
            return self._frames[key]
        data = self.load(pack, number)
        self._frames[key] = data
        if len(self._frames) > CACHED_FRAMES:
            self._frames.popitem(last=False)
        return data

    def load(self, pack: int, number: int) -> bytes:
        """A frame read and decompressed, not kept (safe on several threads)."""
        frame = self.indexes[pack].frames[number]
        path = pack_path(self.folder, self.packs[pack])
        try:
            with open(path, "rb") as handle:
                handle.seek(frame.offset)
                stored = handle.read(frame.length)
        except OSError as error:
            raise VerificationError(f"pack {path} cannot be read ({error.strerror or error})") from None
        if len(stored) != frame.length:
            raise VerificationError(f"pack {path} is truncated")
        return fmt.decode_frame(stored, frame, self.size, str(path))


def check_pack(folder: Path, pack: str) -> None:
    """Read a pack whole: its bytes hash to its name, its index is sound, and every
    page hashes to what the index says (a later snapshot may take any page of it).
    VerificationError otherwise."""
    index = read_index(folder, pack)
    path = pack_path(folder, pack)
    whole = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for number, frame in enumerate(index.frames):
                stored = handle.read(frame.length)
                whole.update(stored)
                _check_frame_pages(fmt.decode_frame(stored, frame, index.page_size, str(path)), index, number, path)
    except OSError as error:
        raise VerificationError(f"pack {path} cannot be read ({error.strerror or error})") from None
    if whole.hexdigest() != pack:
        raise VerificationError(f"pack {path} does not match its name (SHA-256): it is damaged")


def _check_frame_pages(data: bytes, index: fmt.PackIndex, number: int, path: Path) -> None:
    size, first = index.page_size, number * fmt.pages_per_frame(index.page_size)
    view = memoryview(data)
    for page in range(len(data) // size):
        if fmt.page_hash(view[page * size : (page + 1) * size]) != index.hash_of(first + page):
            raise VerificationError(f"pack {path}: page {first + page} is not the page its index names: damaged")


# --- writing --------------------------------------------------------------------------------


@dataclass
class Written:
    """A page list (to be committed with commit_page_list) and what the run added."""

    listing: bytes
    digest: Digest  # of the database; `written` is the list's size
    new_pages: int
    new_pack_bytes: int  # packs and their indexes


def write_pages(
    folder: Path, incoming: Path, database: Path, level: int = 1, progress: Progress = None, like: Optional[Path] = None
) -> Written:
    """Store the pages of `database` that no pack holds yet (new packs, durable), and
    return its page list for the caller to check and commit. `like`: the page list of
    an earlier snapshot of the same database (a hint: any list, or a damaged one, only
    costs time), whose pages are compared place by place before any search."""
    make_folders(incoming)
    table = _PageTable.of(database, progress)
    indexed = [stored for stored in stored_packs(folder) if stored.indexed]
    if like is not None:
        _place_as_in(folder, table, like, {stored.pack for stored in indexed})
    table.index_unplaced()
    _find_known(folder, table, indexed)
    table.keep_keys_of_twins()
    _loosen_sparse_frames(table)
    writer = _PackWriter(folder, incoming, level)
    try:
        new_pages = _store_new(database, table, writer)
        packs_written = writer.close()
    except OSError as error:
        writer.abandon()
        raise storage_error("write database pages into", Path(folder) / PACKS, error) from error
    except BaseException:
        writer.abandon()
        raise
    packs, runs = fmt.runs_of(table.places(writer.sealed))
    listing = fmt.encode_list(fmt.PageList(table.page_size, table.size, table.sha256, packs, runs))
    return Written(listing, Digest(table.size, table.sha256, len(listing)), new_pages, packs_written)


def commit_page_list(path: Path, listing: bytes) -> None:
    """The snapshot's page list under its name, durably (the record comes after)."""
    make_folders(path.parent)
    write_bytes_atomic(path, listing)


class _PageTable:
    """The pages of one database: the 16-byte hashes in page order, and where each page
    is stored once known (pack ordinal, page in pack; -1: not yet), 25 bytes a page.
    The pages not placed by an earlier snapshot's list are searched by a sorted key
    (the first KEY_BYTES of the hash, with the page it came from; 8 bytes a page), and
    each key found is confirmed by the whole hash. Twins (pages sharing a key) are
    flagged so that placing any other needs no search."""

    def __init__(self, page_size: int, size: int, sha256: str, hashes: bytearray):
        self.page_size, self.size, self.sha256, self.hashes = page_size, size, sha256, hashes
        count = len(hashes) // fmt.HASH_BYTES
        self.keys, self.order = array("I"), array("I")
        self.twins = bytearray(count)
        self.pack = array("i", [-1]) * count
        self.page = array("I", [0]) * count
        self.pack_ids: list[str] = []  # ordinal -> id; a pack still being written gets its id when sealed
        self.pack_pages: list[int] = []  # ordinal -> pages in the pack (0: one still being written)
        self._ordinals: dict[str, int] = {}

    def ordinal(self, pack: str, pages: int = 0) -> int:
        """The ordinal of a pack (stored, of `pages` pages; or being written), given on first use."""
        if pack not in self._ordinals:
            self._ordinals[pack] = len(self.pack_ids)
            self.pack_ids.append(pack)
            self.pack_pages.append(pages)
        return self._ordinals[pack]

    def new_pack(self) -> int:
        """The ordinal of a pack being written: named when sealed."""
        self.pack_ids.append("")
        self.pack_pages.append(0)
        return len(self.pack_ids) - 1

    def index_unplaced(self) -> None:
        """Sort the keys of the pages not yet placed (all of them on a first night)."""
        self.keys, self.order = _sorted_keys(self.hashes, self.pack)
        self.twins = bytearray()  # freed before the new flags are made: a first night's peak
        self.twins = _twins(self.keys, self.order, len(self.pack))

    def keep_keys_of_twins(self) -> None:
        """Once the packs are searched, a page stored needs a search only to place its
        twins: the other keys go (a first night at 2 GiB: 6 MiB while its pages are
        packed). Every page sharing a key is a twin, so a twin's search finds them all."""
        twins = self.twins
        self.keys = array("I", (key for key, page in zip(self.keys, self.order) if twins[page]))
        self.order = array("I", (page for page in self.order if twins[page]))

    @classmethod
    def of(cls, database: Path, progress: Progress) -> "_PageTable":
        whole, size = hashlib.sha256(), 0
        with open(database, "rb") as source:
            page_size = fmt.page_size(source.read(100))
            source.seek(0)
            # sized once (grown by appending, it kept up to an eighth more, and copied to grow)
            hashes = bytearray(os.fstat(source.fileno()).st_size // page_size * fmt.HASH_BYTES)
            filled = 0
            buffer = memoryview(bytearray(READ_CHUNK - READ_CHUNK % page_size))  # one, reused
            while got := source.readinto(buffer):
                chunk = buffer[:got]
                whole.update(chunk)
                size += got
                block = b"".join([fmt.page_hash(chunk[at : at + page_size]) for at in range(0, got, page_size)])
                hashes[filled : filled + len(block)] = block  # past the end (a file that grew): appended
                filled += len(block)
                if progress:
                    progress(got)
            del hashes[filled:]  # a file that shrank meanwhile
        if size % page_size or size // page_size > fmt.MAX_PAGES:
            raise VerificationError(f"{database} is {size} bytes: not whole pages of {page_size} bytes")
        return cls(page_size, size, whole.hexdigest(), hashes)

    def same_pages(self, digest: bytes) -> Iterator[int]:
        """The database's pages whose hash is `digest`."""
        key = int.from_bytes(digest[:KEY_BYTES], "big")
        at = bisect.bisect_left(self.keys, key)
        while at < len(self.keys) and self.keys[at] == key:
            page = self.order[at]
            if self.hash_of(page) == digest:
                yield page
            at += 1

    def place(self, digest: bytes, ordinal: int, page_in_pack: int) -> None:
        for page in self.same_pages(digest):
            if self.pack[page] < 0:
                self.pack[page], self.page[page] = ordinal, page_in_pack

    def hash_of(self, number: int) -> bytes:
        return bytes(self.hashes[number * fmt.HASH_BYTES : (number + 1) * fmt.HASH_BYTES])

    def unplaced_hashes(self) -> Optional[set[bytes]]:
        """The hashes of the pages left to place, when few enough to hold as a set (about
        90 bytes each: at most 6 MiB)."""
        if len(self.order) > FEW_LEFT:
            return None
        return {self.hash_of(page) for page in self.order}

    def place_same(self, start: int, hashes: bytes, first: int, count: int, ordinal: int) -> None:
        """Place pages start.. at pages first.. of a pack wherever their hashes (from the
        pack's index) are equal: a block at a time, halved where it differs."""
        size = fmt.HASH_BYTES
        blocks = [(start, first, count)]
        while blocks:
            start, first, count = blocks.pop()
            if self.hashes[start * size : (start + count) * size] != hashes[first * size : (first + count) * size]:
                if count > 1:
                    half = count // 2
                    blocks += [(start, first, half), (start + half, first + half, count - half)]
                continue
            self.pack[start : start + count] = array("i", [ordinal]) * count
            self.page[start : start + count] = array("I", range(first, first + count))

    def place_page(self, number: int, ordinal: int, page_in_pack: int) -> None:
        """Page `number` just stored: it, and any page with the same hash."""
        if self.twins[number]:
            self.place(self.hash_of(number), ordinal, page_in_pack)
        else:
            self.pack[number], self.page[number] = ordinal, page_in_pack

    def places(self, sealed: dict[int, str]) -> Iterator[tuple[str, int]]:
        ids = [sealed.get(n, pack) for n, pack in enumerate(self.pack_ids)]
        for ordinal, page in zip(self.pack, self.page):
            yield ids[ordinal], page


def _sorted_keys(hashes: bytearray, pack: array) -> tuple[array, array]:
    """The first KEY_BYTES of the unplaced pages' hashes as numbers, sorted, and the page
    each came from. The pages are counted into place by their hash's first byte, then
    each first byte's share is sorted: both arrays are made once at their size (grown
    and bucketed, a first night's sort held 2 MiB more at 2 GiB), and the Python numbers
    a sort needs exist for one first byte at a time (~50 bytes each)."""
    size = fmt.HASH_BYTES
    counts = [0] * 257
    for number, ordinal in enumerate(pack):
        if ordinal < 0:
            counts[hashes[number * size] + 1] += 1
    starts = list(itertools.accumulate(counts))  # the first byte b's share: starts[b] to starts[b + 1]
    order, keys, at = array("I", [0]) * starts[-1], array("I", [0]) * starts[-1], starts[:256]
    for number, ordinal in enumerate(pack):
        if ordinal < 0:
            first = hashes[number * size]
            order[at[first]] = number
            at[first] += 1
    for first in range(256):
        begin, end = starts[first], starts[first + 1]
        combined = sorted(
            int.from_bytes(hashes[p * size : p * size + KEY_BYTES], "big") << 32 | p for p in order[begin:end]
        )
        keys[begin:end] = array("I", (c >> 32 for c in combined))
        order[begin:end] = array("I", (c & 0xFFFFFFFF for c in combined))
    return keys, order


def _twins(keys: array, order: array, count: int) -> bytearray:
    """1 for each page whose key another page shares (maybe the same page twice: free
    pages full of zeros), so that placing any other needs no search."""
    twins = bytearray(count)
    for at in range(1, len(keys)):
        if keys[at] == keys[at - 1]:
            twins[order[at]] = twins[order[at - 1]] = 1
    return twins


def _place_as_in(folder: Path, table: _PageTable, like: Path, usable: set[str]) -> None:
    """Place each page whose hash is that of the page at the same place in an earlier
    snapshot's list, where that list has it: a live copy keeps the pages the night did
    not write where they were, so a night's unchanged pages cost a comparison, not a
    search. Packs not in `usable`, damaged ones and runs outside them are passed over."""
    try:
        earlier = read_page_list(like)
    except VerificationError:
        return
    if earlier.page_size != table.page_size:
        return
    by_pack: dict[int, array] = collections.defaultdict(lambda: array("I"))  # (start, first, length): 12 bytes a run
    start, count = 0, len(table.pack)
    for run in earlier.each_run():
        if start >= count:
            break
        by_pack[run.pack].extend((start, run.first, min(run.length, count - start)))
        start += run.length
    for number, runs in by_pack.items():
        pack = earlier.packs[number]
        index = _usable_index(folder, pack, table.page_size) if pack in usable else None
        if index is None:
            continue
        ordinal = table.ordinal(pack, index.page_count)
        for at in range(0, len(runs), 3):
            start, first, length = runs[at], runs[at + 1], runs[at + 2]
            if first + length <= index.page_count:
                table.place_same(start, index.hashes, first, length, ordinal)


def _find_known(folder: Path, table: _PageTable, packs: list[StoredPack]) -> None:
    """Place every page left that some pack already holds (a damaged index is passed
    over: its pages are stored again)."""
    if not table.keys:
        return
    wanted = table.unplaced_hashes()
    for stored in packs:
        index = _usable_index(folder, stored.pack, table.page_size)
        if index is None:
            continue
        ordinal = table.ordinal(stored.pack, index.page_count)
        pages: Iterable[int] = range(index.page_count)
        if wanted is not None:  # a night's few pages: most of the archive's are passed at a set's speed
            pages = [page for page in pages if index.hash_of(page) in wanted]
        for page in pages:
            table.place(index.hash_of(page), ordinal, page)


def _loosen_sparse_frames(table: _PageTable) -> int:
    """Unplace the pages that lie in frames this snapshot takes less than
    SPARSE_FRAME_SHARE of, so that they are stored again, packed with the night's new
    pages. A restore decompresses every frame a snapshot touches, whole: after a month
    of nights, the newest database's pages lay in frames two thirds of whose bytes it
    did not need (1 GiB, 30 nights: 1,634 MiB decompressed for 992 MiB), and 428 of
    its 1,634 frames gave it less than a tenth. A page stored again costs the archive
    its compressed bytes once; older snapshots keep their places. Returns how many."""
    per_frame = fmt.pages_per_frame(table.page_size)
    frames = collections.Counter(
        ordinal << 32 | page // per_frame for ordinal, page in zip(table.pack, table.page) if ordinal >= 0
    )

    def held(frame: int) -> int:  # a pack's last frame may hold fewer
        return min(per_frame, table.pack_pages[frame >> 32] - (frame & 0xFFFFFFFF) * per_frame)

    sparse = {frame for frame, taken in frames.items() if taken < held(frame) * SPARSE_FRAME_SHARE}
    if not sparse:
        return 0
    loosened = 0
    for number, (ordinal, page) in enumerate(zip(table.pack, table.page)):
        if ordinal >= 0 and ordinal << 32 | page // per_frame in sparse:
            table.pack[number] = -1
            loosened += 1
    return loosened


def _usable_index(folder: Path, pack: str, page_size: int) -> Optional[fmt.PackIndex]:
    try:
        index = read_index(folder, pack)
    except VerificationError:
        return None
    return index if index.page_size == page_size else None


def _store_new(database: Path, table: _PageTable, writer: "_PackWriter") -> int:
    """Write every page not yet placed (a page twice in the database is stored once),
    read in runs of consecutive pages: the first night reads the file in large reads,
    a night's scattered pages with a read each."""
    new, size = 0, table.page_size
    buffer = memoryview(bytearray(max(READ_CHUNK // size, 1) * size))  # one, reused: no heap churn per read
    with open(database, "rb") as source:
        for first, count in _unplaced_runs(table, len(buffer) // size):
            source.seek(first * size)
            view = buffer[: count * size]
            if source.readinto(view) != count * size:
                raise VerificationError(f"{database} changed while it was stored: try again")
            for number in range(first, first + count):
                if table.pack[number] >= 0:  # a twin of a page stored earlier in this run
                    continue
                page = view[(number - first) * size : (number - first + 1) * size]
                digest = table.hash_of(number)
                if fmt.page_hash(page) != digest:
                    raise VerificationError(f"{database} changed while it was stored: try again")
                ordinal, page_in_pack = writer.add(page, digest, table)
                table.place_page(number, ordinal, page_in_pack)
                new += 1
    return new


def _unplaced_runs(table: "_PageTable", longest: int) -> Iterator[tuple[int, int]]:
    """(first page, count) of each run of pages not placed when the run is reached."""
    number, count = 0, len(table.pack)
    while number < count:
        if table.pack[number] >= 0:
            number += 1
            continue
        end = number + 1
        while end < count and end - number < longest and table.pack[end] < 0:
            end += 1
        yield number, end - number
        number = end


class _PackWriter:
    """New pages into packs in incoming/: a frame is compressed once it holds
    FRAME_BYTES of pages; a pack is sealed (fsynced, renamed under the SHA-256 of its
    bytes, its index written beside it) once it reaches PACK_BYTES stored or
    PACK_RAW_BYTES of pages. A page's place is (pack ordinal, page in pack)."""

    def __init__(self, folder: Path, incoming: Path, level: int):
        self.folder, self.incoming, self.level = Path(folder), incoming, level
        self.sealed: dict[int, str] = {}
        self.written = 0
        self._handle: Optional[BinaryIO] = None
        self._temp: Optional[Path] = None
        # Frames being compressed, written to the pack in order: (future, raw length, buffer).
        self._pending: collections.deque = collections.deque()
        # Frame buffers back from compression, filled again: a new 1 MiB buffer a frame was a
        # new mapping and its page faults (656,000 for a first night at 1 GiB).
        self._spare: list[bytearray] = []
        self._pool: Optional[ThreadPoolExecutor] = None
        self._reset()

    def _reset(self) -> None:
        self._frames: list[fmt.Frame] = []
        self._hashes = bytearray()
        self._frame: Optional[bytearray] = None  # FRAME_BYTES, filled up to _filled
        self._filled = 0
        self._pages = 0
        self._digest = hashlib.sha256()
        self._ordinal = -1

    def add(self, page, digest: bytes, table: _PageTable) -> tuple[int, int]:
        if self._ordinal < 0:
            self._ordinal = table.new_pack()
            self._size = len(page)
        place = (self._ordinal, self._pages)
        if self._frame is None:
            self._frame = self._spare.pop() if self._spare else bytearray(fmt.FRAME_BYTES)
        end = self._filled + len(page)
        self._frame[self._filled : end] = page  # whole pages fill a frame exactly: never resized
        self._filled = end
        self._hashes += digest
        self._pages += 1
        if end >= fmt.FRAME_BYTES:
            self._flush_frame()
        return place

    def _flush_frame(self) -> None:
        """Hand the frame to a compressing thread; write those done, oldest first. The
        pack is sealed between two frames, once what is written (or the pages in it)
        reaches its size, exactly as one thread would: near that size the frames in
        flight are written first. Every page placed so far is in a frame of this pack."""
        if self._handle is None:
            self._temp = self.incoming / f"pack{TEMP_MARKER}{os.getpid()}"
            self._handle = open(self._temp, "wb")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=FRAME_THREADS)
        assert self._frame is not None
        frame, raw_length = self._frame, self._filled
        self._frame, self._filled = None, 0
        compressed = self._pool.submit(zlib.compress, memoryview(frame)[:raw_length], self.level)
        self._pending.append((compressed, raw_length, frame))
        while len(self._pending) > FRAME_THREADS:
            self._write_oldest()
        if self._handle.tell() + len(self._pending) * fmt.MAX_FRAME_STORED >= fmt.PACK_BYTES:
            while self._pending:  # near the pack's size: the frames in flight decide, so wait for them
                self._write_oldest()
        if self._pages * self._size >= fmt.PACK_RAW_BYTES or self._handle.tell() >= fmt.PACK_BYTES:
            self._seal()

    def _write_oldest(self) -> None:
        assert self._handle is not None
        future, raw_length, frame = self._pending.popleft()
        stored = future.result()
        self._spare.append(frame)
        self._frames.append(fmt.Frame(self._handle.tell(), len(stored), raw_length // self._size))
        self._handle.write(stored)
        self._digest.update(stored)

    def _seal(self) -> None:
        while self._pending:
            self._write_oldest()
        assert self._handle is not None and self._temp is not None
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        own_like_folder(self._temp)
        pack = self._digest.hexdigest()
        final = pack_path(self.folder, pack)
        fresh = not final.parent.is_dir()
        make_folders(final.parent)
        os.replace(self._temp, final)
        crash_point("pack-sealed")
        index = fmt.encode_index(fmt.PackIndex(self._size, tuple(self._frames), bytes(self._hashes)))
        self._place_index(index, final.with_suffix(fmt.INDEX_SUFFIX))
        if fresh:
            fsync_dir(final.parent.parent)
            fsync_dir(final.parent.parent.parent)
        self.written += final.stat().st_size + len(index)
        self.sealed[self._ordinal] = pack
        self._reset()

    def _place_index(self, index: bytes, final: Path) -> None:
        """Written in incoming/ as the pack is, where the next run removes whatever a
        killed one left: a temp beside the pack would stay in packs/ for good. The
        folder synced: the pack's rename too."""
        temp = self.incoming / f"index{TEMP_MARKER}{os.getpid()}"
        with open(temp, "wb") as handle:
            handle.write(index)
            handle.flush()
            os.fsync(handle.fileno())
        own_like_folder(temp)
        commit(temp, final)

    def close(self) -> int:
        if self._filled:
            self._flush_frame()
        if self._handle is not None:
            self._seal()
        self._stop_pool()
        return self.written

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def abandon(self) -> None:
        self._stop_pool()
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._temp is not None:
            discard(self._temp)
