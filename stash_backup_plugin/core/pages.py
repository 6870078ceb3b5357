"""Page-level database snapshots (issue 21), the format: pure encoding and parsing, no
file system. page_store.py writes and reads these files in the archive:

    <archive>/packs/<aa>/<pack id>.pack    zlib frames (level 1) of new pages, each frame
                                           up to FRAME_BYTES of pages; the pack id is the
                                           SHA-256 of the pack's bytes
    <archive>/packs/<aa>/<pack id>.idx     the pack's index (encode_index)
    <archive>/snapshots/<name>.pages       a snapshot's page list (encode_list)

Pages are SQLite's, at the page size of the database's header (bytes 16-17), named by
their SHA-256 truncated to 128 bits: a snapshot stores only the pages no pack holds
yet. Its page list names where its pages are, as runs (pack, first page, count) of
pages stored one after another, and the packs it uses: it needs no other list to be
read, and garbage collection keeps exactly the packs the kept lists name. The whole
database's size and SHA-256 are in the list and checked on every reassembly, so a
damaged frame or a hash collision can never pass for the recorded database.

Every file here may come from a damaged disk or a remote we do not control: parsing
checks sizes before reading, keeps every offset inside its file and raises one
VerificationError saying what is wrong. Standard library only (stash-restore)."""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
import sys
from array import array
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

from .errors import VerificationError

CODEC = "pages"
LIST_SUFFIX = ".pages"
PACK_SUFFIX, INDEX_SUFFIX = ".pack", ".idx"
HASH_BYTES = 16  # SHA-256 truncated: n^2 / 2^129 chance of any collision among n pages
FRAME_BYTES = 1024 * 1024  # pages per zlib frame: one decompression per MiB on restore
PACK_BYTES = 16 * 1024 * 1024  # a pack is sealed once its frames reach this much, compressed
PACK_RAW_BYTES = 64 * 1024 * 1024  # ... or this much of pages (bounds the pages of a pack)
MIN_PAGE, MAX_PAGE = 512, 65536
MAX_PACK_PAGES = PACK_RAW_BYTES // MIN_PAGE
MAX_FRAME_STORED = FRAME_BYTES + FRAME_BYTES // 1000 + 1024  # zlib's worst case, with room
MAX_PAGES = 2**32 - 1  # page numbers are 32-bit (a 16 TiB database at 4 KiB pages)
MAX_LIST_BYTES = 64 * 1024 * 1024  # a page list, expanded: ~6 MiB for a 2 GiB database in single pages
LIST_LEVEL = 6

_INDEX_MAGIC, _LIST_MAGIC = b"SBPIDX01", b"SBPLST01"
_INDEX_HEAD = struct.Struct("<8sIII")  # magic, page size, frames, pages
_FRAME = struct.Struct("<QII")  # offset in the pack, stored length, pages
_LIST_HEAD = struct.Struct("<8sIQQ32sII")  # magic, page size, pages, database size, SHA-256, packs, runs
_RUN = struct.Struct("<III")  # pack number (in the list), first page (in the pack), count
_TRAILER = 32  # SHA-256 of everything before it: a damaged file is told from a wrong one
MAX_INDEX_BYTES = _INDEX_HEAD.size + MAX_PACK_PAGES * (_FRAME.size + HASH_BYTES) + _TRAILER
MAX_LIST_FILE = MAX_LIST_BYTES  # compressed, it is never larger than expanded (by much)


def page_size(header: bytes) -> int:
    """SQLite's page size: bytes 16-17 of the header, big-endian; 1 means 65536."""
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise VerificationError("the database has no SQLite header: it cannot be stored as pages")
    value = int.from_bytes(header[16:18], "big")
    size = 65536 if value == 1 else value
    if not MIN_PAGE <= size <= MAX_PAGE or size & (size - 1):
        raise VerificationError(f"the database's header gives page size {value}: not a power of two from 512 to 65536")
    return size


def page_hash(page) -> bytes:
    """bytes or a memoryview of them."""
    return hashlib.sha256(page).digest()[:HASH_BYTES]


def pages_per_frame(size: int) -> int:
    return FRAME_BYTES // size


# --- a pack's index -------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    offset: int
    length: int
    pages: int


@dataclass(frozen=True)
class PackIndex:
    """What a pack holds: its frames (in order, back to back from the pack's start) and
    the hash of every page, in order. Page n of the pack is in frame n // per_frame."""

    page_size: int
    frames: tuple[Frame, ...]
    hashes: bytes  # HASH_BYTES per page (empty where only the frames are kept: reading)

    @functools.cached_property
    def page_count(self) -> int:
        return sum(frame.pages for frame in self.frames)

    @property
    def pack_bytes(self) -> int:
        return self.frames[-1].offset + self.frames[-1].length

    def hash_of(self, page: int) -> bytes:
        return self.hashes[page * HASH_BYTES : (page + 1) * HASH_BYTES]


def encode_index(index: PackIndex) -> bytes:
    body = _INDEX_HEAD.pack(_INDEX_MAGIC, index.page_size, len(index.frames), len(index.hashes) // HASH_BYTES)
    body += b"".join(_FRAME.pack(f.offset, f.length, f.pages) for f in index.frames) + index.hashes
    return body + hashlib.sha256(body).digest()


def parse_index(data: bytes, where: str) -> PackIndex:
    """A pack's index, every bound checked; VerificationError naming `where` otherwise."""
    body = _trusted_body(data, MAX_INDEX_BYTES, _INDEX_HEAD.size, where, "pack index")
    magic, size, frame_count, count = _INDEX_HEAD.unpack_from(body)
    if magic != _INDEX_MAGIC:
        raise VerificationError(f"{where} is not a pack index")
    _check_page_size(size, where)
    if not 1 <= frame_count <= count <= MAX_PACK_PAGES:
        raise VerificationError(f"{where}: {frame_count} frame(s) of {count} page(s): the pack index is damaged")
    if len(body) != _INDEX_HEAD.size + frame_count * _FRAME.size + count * HASH_BYTES:
        raise VerificationError(f"{where} is not the length its header gives: the pack index is damaged")
    frames = tuple(Frame(*_FRAME.unpack_from(body, _INDEX_HEAD.size + n * _FRAME.size)) for n in range(frame_count))
    _check_frames(frames, size, count, where)
    return PackIndex(size, frames, bytes(body[_INDEX_HEAD.size + frame_count * _FRAME.size :]))


def _check_frames(frames: tuple[Frame, ...], size: int, count: int, where: str) -> None:
    """Back to back from offset 0; every frame full but the last; lengths zlib can give."""
    full, offset, pages = pages_per_frame(size), 0, 0
    for number, frame in enumerate(frames):
        last = number == len(frames) - 1
        if frame.offset != offset or not 0 < frame.length <= MAX_FRAME_STORED:
            raise VerificationError(f"{where}: frame {number} lies outside the pack: the pack index is damaged")
        if not (0 < frame.pages <= full if last else frame.pages == full):
            raise VerificationError(f"{where}: frame {number} holds {frame.pages} pages: the pack index is damaged")
        offset, pages = offset + frame.length, pages + frame.pages
    if pages != count:
        raise VerificationError(f"{where}: its frames hold {pages} pages, it lists {count}: the pack index is damaged")


def decode_frame(data: bytes, frame: Frame, size: int, where: str) -> bytes:
    """A frame's pages; zlib checks its Adler-32, and it never expands past its pages."""
    expected = frame.pages * size
    worker = zlib.decompressobj()
    try:
        pages = worker.decompress(data, expected)
    except zlib.error as error:
        raise VerificationError(f"{where}: a frame at offset {frame.offset} is damaged ({error})") from None
    if len(pages) != expected or not worker.eof or worker.unused_data or worker.unconsumed_tail:
        raise VerificationError(
            f"{where}: the frame at offset {frame.offset} does not hold {frame.pages} pages: the pack is damaged"
        )
    return pages


# --- a snapshot's page list -------------------------------------------------------------------


class Run(NamedTuple):
    pack: int  # index into PageList.packs
    first: int  # page number in that pack
    length: int


@dataclass(frozen=True)
class PageList:
    """A snapshot's page list. Its runs stay packed (12 bytes each, as in the file): a
    database whose changed pages are scattered has hundreds of thousands of them."""

    page_size: int
    size: int  # bytes of the database
    sha256: str  # of the database
    packs: tuple[str, ...]  # pack ids (hex)
    runs: bytes  # (pack, first, count) as _RUN, one after another: pack_runs, each_run

    @property
    def page_count(self) -> int:
        return self.size // self.page_size

    def each_run(self) -> Iterator[Run]:
        return map(Run._make, _RUN.iter_unpack(self.runs))


def pack_runs(runs: Iterable[Run]) -> bytes:
    return b"".join(_RUN.pack(*run) for run in runs)


def runs_of(places: Iterable[tuple[str, int]]) -> tuple[tuple[str, ...], bytes]:
    """(packs in order of first use, packed runs) for the places (pack id, page in pack)
    of a database's pages in order: consecutive pages of one pack make one run."""
    packs: list[str] = []
    numbers: dict[str, int] = {}
    runs = array("I")  # 4 bytes an item on every platform Python runs on here
    last_pack, next_page = -1, -1
    for pack, page in places:
        number = numbers.get(pack)
        if number is None:
            number = numbers[pack] = len(packs)
            packs.append(pack)
        if number == last_pack and page == next_page:
            runs[-1] += 1
        else:
            runs.extend((number, page, 1))
            last_pack = number
        next_page = page + 1
    if sys.byteorder == "big":
        runs.byteswap()
    return tuple(packs), runs.tobytes()


def encode_list(pages: PageList) -> bytes:
    head = _LIST_HEAD.pack(
        _LIST_MAGIC,
        pages.page_size,
        pages.page_count,
        pages.size,
        bytes.fromhex(pages.sha256),
        len(pages.packs),
        len(pages.runs) // _RUN.size,
    )
    body = head + b"".join(bytes.fromhex(p) for p in pages.packs)
    body += pages.runs
    return zlib.compress(body + hashlib.sha256(body).digest(), LIST_LEVEL)


def parse_list(data: bytes, where: str) -> PageList:
    """A snapshot's page list, every bound checked; VerificationError naming `where`."""
    expanded = _inflate(data, MAX_LIST_BYTES, where, "page list")
    body = _trusted_body(expanded, MAX_LIST_BYTES, _LIST_HEAD.size, where, "page list")
    magic, size, count, total, digest, pack_count, run_count = _LIST_HEAD.unpack_from(body)
    if magic != _LIST_MAGIC:
        raise VerificationError(f"{where} is not a page list")
    _check_page_size(size, where)
    if count * size != total or count > MAX_PAGES or not pack_count <= run_count <= count:
        raise VerificationError(f"{where}: {count} pages, {pack_count} packs, {run_count} runs: the list is damaged")
    if len(body) != _LIST_HEAD.size + pack_count * 32 + run_count * _RUN.size:
        raise VerificationError(f"{where} is not the length its header gives: the page list is damaged")
    at = _LIST_HEAD.size
    packs = tuple(body[at + n * 32 : at + (n + 1) * 32].hex() for n in range(pack_count))
    at += pack_count * 32
    runs = bytes(body[at:])
    _check_runs(runs, pack_count, count, where)
    return PageList(size, total, digest.hex(), packs, runs)


def _check_runs(runs: bytes, pack_count: int, count: int, where: str) -> None:
    pages = 0
    for pack, first, length in _RUN.iter_unpack(runs):
        if pack >= pack_count or length < 1 or first + length > MAX_PACK_PAGES:
            raise VerificationError(f"{where}: a run {Run(pack, first, length)} lies outside its packs: damaged")
        pages += length
    if pages != count:
        raise VerificationError(f"{where}: its runs hold {pages} pages, it lists {count}: the page list is damaged")


def check_run_in(run: Run, index: PackIndex, pack: str, where: str) -> None:
    """A run of a page list inside the pack it names (the index now known)."""
    if run.first + run.length > index.page_count:
        raise VerificationError(
            f"{where}: pages {run.first}-{run.first + run.length - 1} of pack {pack[:12]}… are beyond its "
            f"{index.page_count} pages: the page list or the pack index is damaged"
        )


# --- shared --------------------------------------------------------------------------------------


def _check_page_size(size: int, where: str) -> None:
    if not MIN_PAGE <= size <= MAX_PAGE or size & (size - 1):
        raise VerificationError(f"{where}: page size {size} is not a power of two from 512 to 65536: it is damaged")


def _trusted_body(data: bytes, limit: int, head: int, where: str, what: str) -> memoryview:
    """The file's body once its length is in bounds and its trailing SHA-256 matches."""
    if not head + _TRAILER <= len(data) <= limit:
        raise VerificationError(f"{where} is {len(data)} bytes: no {what} is that size, it is damaged")
    view = memoryview(data)
    body, trailer = view[:-_TRAILER], view[-_TRAILER:]
    if hashlib.sha256(body).digest() != trailer:
        raise VerificationError(f"{where}: its checksum does not match its content: the {what} is damaged")
    return body


def _inflate(data: bytes, limit: int, where: str, what: str) -> bytes:
    if len(data) > MAX_LIST_FILE:
        raise VerificationError(f"{where} is {len(data)} bytes: no {what} is that size, it is damaged")
    worker = zlib.decompressobj()
    try:
        out = worker.decompress(data, limit + 1)
    except zlib.error as error:
        raise VerificationError(f"{where}: the {what} is damaged ({error})") from None
    if len(out) > limit or worker.unconsumed_tail:
        raise VerificationError(f"{where}: the {what} expands past {limit} bytes: refused as damaged")
    if not worker.eof or worker.unused_data:
        raise VerificationError(f"{where}: the {what} is truncated or has data after its end: it is damaged")
    return out
