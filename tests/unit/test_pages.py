"""Page-level snapshots (issue 21): the format's pure parts with every bound, and the
page store on real SQLite databases: only new pages stored, reassembly checked."""

import errno
import hashlib
import io
import os
import shutil
import sqlite3
import struct
import zlib
from pathlib import Path

import pytest

from stash_backup_plugin.core import page_store
from stash_backup_plugin.core import pages as fmt
from stash_backup_plugin.core.errors import VerificationError


def make_database(path, rows=3000, seed=0, page_size=4096):
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA page_size={page_size}")
    connection.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
    connection.executemany(
        "INSERT OR REPLACE INTO t VALUES (?, ?)",
        ((n, hashlib.sha256(f"{seed}-{n}".encode()).hexdigest() * 4) for n in range(rows)),
    )
    connection.commit()
    connection.close()
    return path


def change_rows(path, ids, seed):
    connection = sqlite3.connect(path)
    connection.executemany("UPDATE t SET body = ? WHERE id = ?", ((f"changed {seed} {n}" * 8, n) for n in ids))
    connection.commit()
    connection.close()


def sample_list(**changes):
    values = dict(page_size=4096, size=4096 * 5, sha256="ab" * 32, packs=("11" * 32, "22" * 32))
    values["runs"] = (fmt.Run(0, 0, 3), fmt.Run(1, 7, 2))
    values.update(changes)
    values["runs"] = fmt.pack_runs(values["runs"])
    return fmt.PageList(**values)


def sample_index():
    frames = (fmt.Frame(0, 100, 256), fmt.Frame(100, 50, 10))
    return fmt.PackIndex(4096, frames, bytes(range(16)) * 266)


# --- pure: the format ---------------------------------------------------------------------------


def test_page_size_comes_from_the_header():
    header = bytearray(b"SQLite format 3\x00" + bytes(84))
    header[16:18] = (4096).to_bytes(2, "big")
    assert fmt.page_size(bytes(header)) == 4096
    header[16:18] = (1).to_bytes(2, "big")
    assert fmt.page_size(bytes(header)) == 65536
    header[16:18] = (3000).to_bytes(2, "big")
    with pytest.raises(VerificationError, match="page size 3000"):
        fmt.page_size(bytes(header))
    with pytest.raises(VerificationError, match="no SQLite header"):
        fmt.page_size(b"PK\x03\x04" + bytes(96))


def test_runs_join_consecutive_pages_of_one_pack():
    places = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("a", 3), ("a", 9), ("b", 1)]
    packs, runs = fmt.runs_of(iter(places))
    assert packs == ("a", "b")
    expected = [fmt.Run(0, 0, 3), fmt.Run(1, 0, 1), fmt.Run(0, 3, 1), fmt.Run(0, 9, 1), fmt.Run(1, 1, 1)]
    assert runs == fmt.pack_runs(expected)
    assert list(fmt.PageList(4096, 7 * 4096, "00" * 32, packs, runs).each_run()) == expected


def test_page_list_roundtrips():
    listing = sample_list()
    assert fmt.parse_list(fmt.encode_list(listing), "x") == listing


def _relisted(body: bytes) -> bytes:
    """A list whose body is `body`, with a checksum that matches: only the bounds can refuse it."""
    return zlib.compress(body + hashlib.sha256(body).digest())


def _body(listing) -> bytes:
    return zlib.decompress(fmt.encode_list(listing))[:-32]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[:-5], "truncated"),
        (lambda data: data + b"more", "after its end"),
        (lambda data: b"not zlib" + data, "damaged"),
        (lambda data: zlib.compress(zlib.decompress(data)[:-1] + b"\x00"), "checksum does not match"),
        (lambda data: _relisted(_body(sample_list(runs=(fmt.Run(0, 0, 3), fmt.Run(2, 7, 2))))), "outside its packs"),
        (lambda data: _relisted(_body(sample_list(runs=(fmt.Run(0, 0, 3), fmt.Run(1, 7, 1))))), "runs hold 4 pages"),
        (lambda data: _relisted(_body(sample_list(size=4096 * 5 + 1))), "5 pages"),
        (lambda data: _relisted(_body(sample_list(page_size=1000, size=5000))), "page size 1000"),
        (lambda data: _relisted(_body(sample_list())[:-4]), "not the length"),
        (lambda data: _relisted(b"SBPIDX01" + _body(sample_list())[8:]), "is not a page list"),
        (lambda data: zlib.compress(bytes(fmt.MAX_LIST_BYTES + 10)), "expands past"),
    ],
)
def test_a_damaged_page_list_is_one_clear_error(damage, message):
    with pytest.raises(VerificationError, match=message):
        fmt.parse_list(damage(fmt.encode_list(sample_list())), "the list")


def test_pack_index_roundtrips():
    index = sample_index()
    parsed = fmt.parse_index(fmt.encode_index(index), "x")
    assert parsed == index and parsed.page_count == 266 and parsed.pack_bytes == 150


def _reindexed(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def _index_body(frames, hashes=bytes(16) * 266, size=4096, count=None):
    head = struct.pack("<8sIII", b"SBPIDX01", size, len(frames), len(hashes) // 16 if count is None else count)
    return head + b"".join(struct.pack("<QII", *frame) for frame in frames) + hashes


@pytest.mark.parametrize(
    "data, message",
    [
        (b"short", "is 5 bytes"),
        (bytes(fmt.MAX_INDEX_BYTES + 1), "bytes: no pack index"),
        (_reindexed(_index_body([(0, 100, 256), (100, 50, 10)]))[:-1] + b"\x00", "checksum"),
        (_reindexed(_index_body([(0, 100, 256), (90, 50, 10)])), "frame 1 lies outside"),
        (_reindexed(_index_body([(0, 100, 255), (100, 50, 11)])), "frame 0 holds 255 pages"),
        (_reindexed(_index_body([(0, 100, 256), (100, 2**31, 10)])), "frame 1 lies outside"),
        (_reindexed(_index_body([(0, 100, 256), (100, 50, 10)], count=2**30)), "frame"),
        (_reindexed(_index_body([(0, 100, 256), (100, 50, 10)])[:-16]), "not the length"),
        (_reindexed(_index_body([(0, 100, 256), (100, 50, 10)], size=4095)), "page size 4095"),
    ],
)
def test_a_damaged_pack_index_is_one_clear_error(data, message):
    with pytest.raises(VerificationError, match=message):
        fmt.parse_index(data, "the index")


def test_a_frame_never_expands_past_its_pages():
    frame = fmt.Frame(0, 0, 2)
    good = zlib.compress(bytes(8192), 1)
    assert fmt.decode_frame(good, frame, 4096, "p") == bytes(8192)
    for bad in (zlib.compress(bytes(8192 * 100)), zlib.compress(bytes(4096)), good[:-3], good + b"x"):
        with pytest.raises(VerificationError, match="p: "):
            fmt.decode_frame(bad, frame, 4096, "p")


# --- the page store on real databases --------------------------------------------------------------


def store_pages(archive, database):
    written = page_store.write_pages(archive, archive / "incoming", database)
    listing = archive / "snapshots" / "n.pages"
    page_store.commit_page_list(listing, written.listing)
    return written, listing


def reassembled(archive, listing) -> bytes:
    out = io.BytesIO()
    page_store.read_pages(archive, listing, out)
    return out.getvalue()


def test_a_database_stored_as_pages_comes_back_whole(tmp_path):
    database = make_database(tmp_path / "db.sqlite", rows=20000)
    archive = tmp_path / "archive"
    written, listing = store_pages(archive, database)
    data = database.read_bytes()
    assert written.digest.size == len(data) and written.digest.sha256 == hashlib.sha256(data).hexdigest()
    assert written.new_pages == len(set(data[n : n + 4096] for n in range(0, len(data), 4096)))
    assert reassembled(archive, listing) == data
    packs = list(page_store.stored_packs(archive))
    assert packs and all(p.indexed for p in packs)
    for pack in packs:  # named by the SHA-256 of its bytes; private
        path = page_store.pack_path(archive, pack.pack)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == pack.pack
        assert path.stat().st_mode & 0o077 == 0


def test_only_pages_no_pack_holds_are_stored_again(tmp_path):
    database = make_database(tmp_path / "db.sqlite", rows=20000)
    archive = tmp_path / "archive"
    first, _ = store_pages(archive, database)
    again = page_store.write_pages(archive, archive / "incoming", database)
    assert again.new_pages == 0 and again.new_pack_bytes == 0
    change_rows(database, range(100, 130), seed=1)  # a few rows: a few pages
    later = page_store.write_pages(archive, archive / "incoming", database)
    total = database.stat().st_size // 4096
    assert 0 < later.new_pages < total // 10
    listing = archive / "snapshots" / "later.pages"
    page_store.commit_page_list(listing, later.listing)
    assert reassembled(archive, listing) == database.read_bytes()


@pytest.mark.parametrize("read_pages", [256, 3])
def test_pages_twice_in_a_database_are_stored_once_wherever_the_reads_split_them(tmp_path, monkeypatch, read_pages):
    """A page with a twin (free pages of zeros, one row's page copied) is placed with
    all its twins at once; any other without a search. Reads of 3 pages put twins in
    the same read and in later ones."""
    monkeypatch.setattr(page_store, "READ_CHUNK", read_pages * 4096)
    head = make_database(tmp_path / "db.sqlite", rows=50).read_bytes()[:4096]
    zero, a, b = bytes(4096), bytes(range(256)) * 16, b"\x01" * 4096
    rng = __import__("random").Random(7)
    unique = [rng.randbytes(4096) for _ in range(5)]
    pages = [head, zero, zero, a, zero, b, a, b, b, *unique[:2], zero, zero, *unique[2:], a]
    database = tmp_path / "twins.sqlite"
    database.write_bytes(b"".join(pages))
    archive = tmp_path / "archive"
    searched = []
    keep = page_store._PageTable.keep_keys_of_twins
    monkeypatch.setattr(
        page_store._PageTable, "keep_keys_of_twins", lambda table: [keep(table), searched.append(list(table.order))]
    )
    written, listing = store_pages(archive, database)
    assert written.new_pages == len(set(pages)) == 9
    twins = [number for number, page in enumerate(pages) if pages.count(page) > 1]
    assert sorted(searched[0]) == twins and len(twins) == 11  # the search kept while pages are stored
    assert reassembled(archive, listing) == database.read_bytes()
    with open(tmp_path / "restored.sqlite", "w+b") as out:  # into a file: a stored page written at each place
        page_store.read_pages(archive, listing, out)
    assert (tmp_path / "restored.sqlite").read_bytes() == database.read_bytes()
    database.write_bytes(b"".join([head, rng.randbytes(4096), zero, a, rng.randbytes(4096), b]))
    later = page_store.write_pages(archive, archive / "incoming", database)
    assert later.new_pages == 2


def test_pages_whose_search_keys_collide_are_told_apart_by_their_whole_hash(tmp_path, monkeypatch):
    """A search key is the first KEY_BYTES of a page's hash: with one byte, hundreds of
    different pages share keys (false twins), and each is still stored once, placed by
    its own hash, on a first night and on the next."""
    monkeypatch.setattr(page_store, "KEY_BYTES", 1)
    database = make_database(tmp_path / "db.sqlite", rows=6000)
    pages = database.stat().st_size // 4096
    archive = tmp_path / "archive"
    written, listing = store_pages(archive, database)
    assert pages > 256 and written.new_pages == len({page_of(database, n) for n in range(pages)})
    assert reassembled(archive, listing) == database.read_bytes()
    change_rows(database, range(2000, 2030), seed=3)
    later = page_store.write_pages(archive, archive / "incoming", database)
    assert 0 < later.new_pages < 20
    page_store.commit_page_list(listing, later.listing)
    assert reassembled(archive, listing) == database.read_bytes()


def page_of(database, number: int) -> bytes:
    with open(database, "rb") as handle:
        handle.seek(number * 4096)
        return handle.read(4096)


def left_to_search(monkeypatch) -> list:
    """How many pages each write_pages left for the search of every pack index."""
    counts = []
    real = page_store._find_known

    def counting(folder, table, packs):
        counts.append(len(table.order))
        real(folder, table, packs)

    monkeypatch.setattr(page_store, "_find_known", counting)
    return counts


def stored_with_and_without_hint(tmp_path, archive, database, like):
    """The same database stored into the archive with `like` and into a copy without."""
    plain_archive = tmp_path / "plain"
    shutil.copytree(archive, plain_archive)
    hinted = page_store.write_pages(archive, archive / "incoming", database, like=like)
    plain = page_store.write_pages(plain_archive, plain_archive / "incoming", database)
    assert hinted.new_pages == plain.new_pages
    listing = archive / "snapshots" / "later.pages"
    page_store.commit_page_list(listing, hinted.listing)
    assert reassembled(archive, listing) == database.read_bytes()
    return hinted


def test_an_earlier_list_places_a_nights_unchanged_pages_without_a_search(tmp_path, monkeypatch):
    database = make_database(tmp_path / "db.sqlite", rows=20000)
    archive = tmp_path / "archive"
    _, earlier = store_pages(archive, database)
    change_rows(database, [*range(100, 130), *range(15000, 15010)], seed=1)
    left = left_to_search(monkeypatch)
    hinted = stored_with_and_without_hint(tmp_path, archive, database, earlier)
    total = database.stat().st_size // 4096
    assert hinted.new_pages > 0 and left[0] < total // 10 and left[1] == total


def test_pages_that_moved_or_repeat_are_found_by_the_search_after_the_earlier_places(tmp_path):
    head = make_database(tmp_path / "db.sqlite", rows=50).read_bytes()[:4096]
    rng = __import__("random").Random(3)
    a, b, c, d, e = (rng.randbytes(4096) for _ in range(5))
    database = tmp_path / "raw.sqlite"
    database.write_bytes(b"".join([head, a, b, c, d]))
    archive = tmp_path / "archive"
    _, earlier = store_pages(archive, database)
    database.write_bytes(b"".join([head, c, a, b, d, e, e, bytes(4096), a]))
    hinted = stored_with_and_without_hint(tmp_path, archive, database, earlier)
    assert hinted.new_pages == 2  # e once, the zeros


@pytest.mark.parametrize("hint", ["another database", "garbage", "missing", "damaged index", "other page size"])
def test_a_wrong_or_damaged_hint_costs_time_not_correctness(tmp_path, hint):
    database = make_database(tmp_path / "db.sqlite", rows=20000)
    archive = tmp_path / "archive"
    _, earlier = store_pages(archive, database)
    other = archive / "snapshots" / "other.pages"
    if hint == "another database":
        other_db = make_database(tmp_path / "other.sqlite", rows=30000, seed=9)
        page_store.commit_page_list(other, page_store.write_pages(archive, archive / "incoming", other_db).listing)
    elif hint == "other page size":
        other_db = make_database(tmp_path / "other.sqlite", rows=3000, page_size=1024)
        page_store.commit_page_list(other, page_store.write_pages(archive, archive / "incoming", other_db).listing)
    elif hint == "garbage":
        other.write_bytes(earlier.read_bytes()[:-40] + bytes(40))
    elif hint == "damaged index":
        other = earlier
        index = page_store.pack_path(archive, next(page_store.stored_packs(archive)).pack, fmt.INDEX_SUFFIX)
        data = bytearray(index.read_bytes())
        data[40] ^= 0xFF
        index.write_bytes(bytes(data))
    else:
        other = archive / "snapshots" / "gone.pages"
    change_rows(database, range(300, 340), seed=4)
    stored_with_and_without_hint(tmp_path, archive, database, other)


def test_a_durable_reassembly_is_fsynced_before_it_returns(tmp_path, monkeypatch):
    database = make_database(tmp_path / "db.sqlite", rows=20000)
    archive = tmp_path / "archive"
    _, listing = store_pages(archive, database)
    calls = []
    monkeypatch.setattr(page_store.os, "fsync", lambda fd: calls.append(os.fstat(fd).st_size))
    for durable in (False, True):
        calls.clear()
        with open(tmp_path / f"{durable}.sqlite", "w+b") as out:
            page_store.read_pages(archive, listing, out, durable=durable)
        assert (tmp_path / f"{durable}.sqlite").read_bytes() == database.read_bytes()
        assert calls == ([database.stat().st_size] if durable else [])


def test_a_durable_reassembly_that_cannot_reach_the_disk_fails(tmp_path, monkeypatch):
    database = make_database(tmp_path / "db.sqlite", rows=5000)
    archive = tmp_path / "archive"
    _, listing = store_pages(archive, database)

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(page_store.os, "fsync", broken)
    with open(tmp_path / "out.sqlite", "w+b") as out, pytest.raises(OSError, match="Input/output"):
        page_store.read_pages(archive, listing, out, durable=True)


@pytest.mark.parametrize("told", [0.5, 2.0])
def test_the_page_table_holds_each_pages_hash_whatever_size_the_file_had_when_opened(tmp_path, monkeypatch, told):
    """The table is sized from the file's size when opened; a file that grew or shrank
    since still gets one hash per page it has when read."""
    database = make_database(tmp_path / "db.sqlite", rows=3000)
    data = database.read_bytes()
    size = fmt.page_size(data[:100])
    real_fstat = os.fstat

    class Told:
        def __init__(self, found):
            self.found = found

        def __getattr__(self, name):
            return int(self.found.st_size * told) if name == "st_size" else getattr(self.found, name)

    monkeypatch.setattr(page_store.os, "fstat", lambda fd: Told(real_fstat(fd)))
    table = page_store._PageTable.of(database, None)
    expected = b"".join(fmt.page_hash(data[at : at + size]) for at in range(0, len(data), size))
    assert bytes(table.hashes) == expected and len(table.pack) == len(data) // size


def test_many_packs_and_a_partial_last_frame(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "PACK_BYTES", 64 * 1024)  # several packs from a small database
    database = make_database(tmp_path / "db.sqlite", rows=20000, page_size=1024)
    archive = tmp_path / "archive"
    _, listing = store_pages(archive, database)
    assert len(list(page_store.stored_packs(archive))) > 3
    assert reassembled(archive, listing) == database.read_bytes()


def _sparse_frames(archive, listing) -> list:
    """(pack, frame, pages taken, pages in it) of every frame of a stored pack that the
    list takes less than SPARSE_FRAME_SHARE of."""
    pages = page_store.read_page_list(listing)
    per_frame = fmt.pages_per_frame(pages.page_size)
    found = []
    for pack, number, pieces in page_store._frame_pieces(pages):
        held = page_store.read_index(archive, pages.packs[pack]).frames[number].pages
        taken = sum(pieces[at + 1] for at in range(0, len(pieces), 3))
        if taken < held * page_store.SPARSE_FRAME_SHARE:
            found.append((pages.packs[pack], number, taken, held, per_frame))
    return found


@pytest.mark.parametrize("share", [0.0, page_store.SPARSE_FRAME_SHARE])
def test_pages_left_in_frames_a_snapshot_barely_uses_are_stored_again(tmp_path, monkeypatch, share):
    """Night after night most rows of a region change: the frames that held them keep a
    few pages the new snapshot still takes. Stored again beside the night's new pages,
    no frame is decompressed on restore for less than its share; unset, some would be."""
    monkeypatch.setattr(fmt, "FRAME_BYTES", 16 * 4096)  # frames of 16 pages: a small database has many
    database = make_database(tmp_path / "db.sqlite", rows=20000)
    archive, earlier = tmp_path / "archive", None
    for night in range(1, 6):
        if night > 1:
            change_rows(database, [n for n in range(20000) if n % 50 and (n // 1000) % 5 == night % 5], seed=night)
        monkeypatch.setattr(page_store, "SPARSE_FRAME_SHARE", share)
        written = page_store.write_pages(archive, archive / "incoming", database, like=earlier)
        earlier = archive / "snapshots" / f"n{night}.pages"
        page_store.commit_page_list(earlier, written.listing)
        monkeypatch.setattr(page_store, "SPARSE_FRAME_SHARE", 0.25)
        assert reassembled(archive, earlier) == database.read_bytes()
    if share:
        assert _sparse_frames(archive, earlier) == []
    else:
        assert len(_sparse_frames(archive, earlier)) >= 3


def test_a_database_stored_again_unchanged_stores_nothing_though_a_packs_last_frame_is_short(tmp_path):
    """The last frame of a pack holds what was left: measured against its own pages,
    it is whole, not sparse."""
    database = make_database(tmp_path / "db.sqlite", rows=20000)
    archive = tmp_path / "archive"
    store_pages(archive, database)
    [pack] = list(page_store.stored_packs(archive))
    assert page_store.read_index(archive, pack.pack).frames[-1].pages < fmt.pages_per_frame(4096) // 4
    assert page_store.write_pages(archive, archive / "incoming", database).new_pages == 0


def test_a_pack_and_its_index_are_written_in_incoming_and_only_moved_into_packs(tmp_path, monkeypatch):
    """A run killed while writing leaves its temps where the next run removes them all
    (incoming/): a temp beside a pack would stay in packs/ for good."""
    monkeypatch.setattr(fmt, "PACK_BYTES", 64 * 1024)
    database = make_database(tmp_path / "db.sqlite", rows=20000, page_size=1024)
    archive = tmp_path / "archive"
    moved = []
    real_replace = os.replace

    def watched(source, target):
        moved.append((Path(source).parent, Path(target).parent.parent))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", watched)
    page_store.write_pages(archive, archive / "incoming", database)
    monkeypatch.undo()
    packs = list(page_store.stored_packs(archive))
    assert len(packs) > 3 and all(p.indexed for p in packs)
    assert set(moved) == {(archive / "incoming", archive / "packs")} and len(moved) == 2 * len(packs)
    for pack in packs:
        for suffix in (fmt.PACK_SUFFIX, fmt.INDEX_SUFFIX):
            assert page_store.pack_path(archive, pack.pack, suffix).stat().st_mode & 0o077 == 0


def test_temps_an_older_run_left_in_packs_go_once_their_maker_is_gone(tmp_path):
    from stash_backup_plugin.core.naming import TEMP_MARKER
    from stash_backup_plugin.core.processes import machine_id
    from tests.support.processes import gone_pid

    database = make_database(tmp_path / "db.sqlite", rows=2000)
    archive = tmp_path / "archive"
    store_pages(archive, database)
    [pack] = list(page_store.stored_packs(archive))
    level = page_store.pack_path(archive, pack.pack).parent
    index = f".{pack.pack}{fmt.INDEX_SUFFIX}"
    dead = level / f"{index}{TEMP_MARKER}{gone_pid()}.{machine_id()}-abc"
    live = level / f"{index}{TEMP_MARKER}{os.getpid()}.{machine_id()}-def"
    other = level / "Thumbs.db"  # not ours: never touched
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    assert page_store.remove_stale_pack_temps(archive) == [dead]
    assert live.exists() and other.exists() and not dead.exists()
    assert [p.pack for p in page_store.stored_packs(archive)] == [pack.pack]


@pytest.mark.parametrize("where", ["pack", "index", "missing pack", "list"])
def test_a_damaged_or_missing_file_fails_reassembly_clearly(tmp_path, where):
    database = make_database(tmp_path / "db.sqlite", rows=5000)
    archive = tmp_path / "archive"
    _, listing = store_pages(archive, database)
    pack = next(page_store.stored_packs(archive)).pack
    path = {
        "pack": page_store.pack_path(archive, pack),
        "index": page_store.pack_path(archive, pack, fmt.INDEX_SUFFIX),
        "missing pack": page_store.pack_path(archive, pack),
        "list": listing,
    }[where]
    if where == "missing pack":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(VerificationError):
        reassembled(archive, listing)


def test_a_database_that_changes_while_stored_is_refused(tmp_path, monkeypatch):
    database = make_database(tmp_path / "db.sqlite", rows=5000)
    archive = tmp_path / "archive"
    real = page_store._find_known

    def meanwhile(folder, table, packs):
        real(folder, table, packs)
        change_rows(database, range(10), seed=2)

    monkeypatch.setattr(page_store, "_find_known", meanwhile)
    with pytest.raises(VerificationError, match="changed while"):
        page_store.write_pages(archive, archive / "incoming", database)
    assert not [p for p in (archive / "incoming").iterdir()]  # the half-written pack is gone


# --- the store reads either kind of snapshot ----------------------------------------------------------


def stored_header(name, listing_file, database, codec=fmt.CODEC):
    from stash_backup_plugin.core import record

    data = database.read_bytes()
    snapshot = record.Snapshot(listing_file, len(data), hashlib.sha256(data).hexdigest(), 100, codec)
    return record.Header(name, "2026-11-26T03:00:00", 85, "stash-go.sqlite", snapshot)


def test_the_store_reassembles_a_page_snapshot_and_checks_the_record(tmp_path):
    from stash_backup_plugin.core.store import Store

    database = make_database(tmp_path / "db.sqlite", rows=5000)
    archive = tmp_path / "archive"
    store_pages(archive, database)
    store, out = Store(archive), io.BytesIO()
    digest = store.read_snapshot(stored_header("n", "snapshots/n.pages", database), out)
    assert out.getvalue() == database.read_bytes() and digest.size == len(out.getvalue())
    with pytest.raises(VerificationError, match="cannot read: upgrade"):
        store.read_snapshot(stored_header("n", "snapshots/n.pages", database, codec="zstd-pages"), io.BytesIO())
    change_rows(database, [1], seed=3)  # the record now names another database than the list holds
    with pytest.raises(VerificationError, match="the record says"):
        store.read_snapshot(stored_header("n", "snapshots/n.pages", database), io.BytesIO())
    with pytest.raises(VerificationError, match="missing"):
        store.read_snapshot(stored_header("m", "snapshots/m.pages", database), io.BytesIO())


def test_check_pack_reads_every_page_against_its_index(tmp_path):
    database = make_database(tmp_path / "db.sqlite", rows=5000)
    archive = tmp_path / "archive"
    store_pages(archive, database)
    pack = next(page_store.stored_packs(archive)).pack
    page_store.check_pack(archive, pack)
    index_path = page_store.pack_path(archive, pack, fmt.INDEX_SUFFIX)
    index = fmt.parse_index(index_path.read_bytes(), "i")
    lying = fmt.PackIndex(index.page_size, index.frames, bytes(16) + index.hashes[16:])  # sound, but wrong
    index_path.write_bytes(fmt.encode_index(lying))
    with pytest.raises(VerificationError, match="page 0 is not the page its index names"):
        page_store.check_pack(archive, pack)
    index_path.write_bytes(fmt.encode_index(index))
    path = page_store.pack_path(archive, pack)
    renamed = page_store.pack_path(archive, "0" * 64)
    renamed.parent.mkdir(exist_ok=True)
    path.rename(renamed)
    index_path.rename(page_store.pack_path(archive, "0" * 64, fmt.INDEX_SUFFIX))
    with pytest.raises(VerificationError, match="does not match its name"):
        page_store.check_pack(archive, "0" * 64)


def test_frames_compressed_on_several_threads_make_the_very_packs_one_thread_makes(tmp_path, monkeypatch):
    """The threads only compress: frames land in order and packs are sealed at the same
    frame, so the packs (named by their bytes) and the page list are identical."""
    monkeypatch.setattr(fmt, "PACK_BYTES", 64 * 1024)  # many packs: every seal point is exercised
    database = make_database(tmp_path / "db.sqlite", rows=20000, page_size=1024)
    made = {}
    for threads in (1, 4):
        monkeypatch.setattr(page_store, "FRAME_THREADS", threads)
        archive = tmp_path / f"archive-{threads}"
        written, listing = store_pages(archive, database)
        packs = {p.name: p.read_bytes() for p in (archive / page_store.PACKS).rglob("*") if p.is_file()}
        made[threads] = (written.listing, packs)
        assert reassembled(archive, listing) == database.read_bytes()
    assert len(made[1][1]) > 6 and made[4] == made[1]


def test_scattered_pages_of_many_nights_reassemble_into_a_file_decompressing_each_frame_once(tmp_path, monkeypatch):
    """Nights of changes spread over the file (as live copies store them) leave the
    newest database's pages across many packs in thousands of runs: into a file each
    frame is decompressed once (pages written at their offsets), into a stream the
    same bytes come out in order."""
    import random

    monkeypatch.setattr(fmt, "PACK_BYTES", 256 * 1024)  # a pack a night or more
    monkeypatch.setattr(page_store, "CACHED_FRAMES", 2)  # a database far bigger than the frames kept
    database = make_database(tmp_path / "db.sqlite", rows=20000)
    archive = tmp_path / "archive"
    store_pages(archive, database)
    rng = random.Random(5)
    for night in range(1, 9):
        change_rows(database, rng.sample(range(20000), 300), seed=night)
        written = page_store.write_pages(archive, archive / "incoming", database)
    listing = archive / "snapshots" / "newest.pages"
    page_store.commit_page_list(listing, written.listing)
    pages = page_store.read_page_list(listing)
    assert len(pages.packs) > 8 and len(pages.runs) // 12 > 500  # scattered: many runs over many packs

    loads = []
    real_load = page_store._FrameCache.load
    monkeypatch.setattr(page_store._FrameCache, "load", lambda self, *key: loads.append(key) or real_load(self, *key))
    target = tmp_path / "restored.sqlite"
    with open(target, "w+b") as out:
        digest = page_store.read_pages(archive, listing, out)
        assert out.tell() == digest.size
    assert target.read_bytes() == database.read_bytes()
    assert digest.sha256 == hashlib.sha256(database.read_bytes()).hexdigest()
    assert len(loads) == len(set(loads))  # each frame decompressed once
    in_file = len(loads)

    loads.clear()
    assert reassembled(archive, listing) == database.read_bytes()  # a stream: in the database's order
    assert len(loads) > in_file  # what the file's order spares


def test_a_file_that_is_not_empty_or_not_readable_is_written_in_order(tmp_path):
    database = make_database(tmp_path / "db.sqlite", rows=5000)
    archive = tmp_path / "archive"
    _, listing = store_pages(archive, database)
    for mode in ("wb", "ab"):
        target = tmp_path / f"out-{mode}"
        with open(target, mode) as out:
            page_store.read_pages(archive, listing, out)
        assert target.read_bytes() == database.read_bytes()
    damaged = archive / "snapshots" / "n.pages"
    with open(tmp_path / "wrong", "w+b") as out:
        out.write(b"x")  # not at its start: appended after, as a stream
        page_store.read_pages(archive, damaged, out)
    assert (tmp_path / "wrong").read_bytes() == b"x" + database.read_bytes()


def test_a_reassembled_file_is_hashed_up_to_its_size_with_its_offset_left_alone(tmp_path):
    path = tmp_path / "f"
    data = os.urandom(3 * 1024 * 1024 + 123)
    path.write_bytes(data + b"beyond")
    with open(path, "r+b") as handle:
        handle.seek(17)
        assert page_store._file_sha256(handle.fileno(), len(data)) == hashlib.sha256(data).hexdigest()
        assert handle.tell() == 17
