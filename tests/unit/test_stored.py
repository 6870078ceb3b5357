"""Stored backups end to end on disk (no server): store, verify, collect, export, import."""

import hashlib
import os
import sqlite3
import threading
import time
import zipfile
from pathlib import Path

import pytest

from stash_backup_plugin.core import page_store, stored
from stash_backup_plugin.core import store as store_module
from stash_backup_plugin.core.errors import VerificationError
from stash_backup_plugin.core.naming import TEMP_MARKER
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.core.store import Store
from stash_backup_plugin.core.verify import file_digest, verify_backup
from tests.support.stashlike import make_database, make_full_backup, vacuum_copy, write_blobs


class Library:
    """A Stash-like install: a database referring to blob files in a folder."""

    def __init__(self, root: Path):
        self.root, self.database, self.blobs = root, root / "stash-go.sqlite", root / "blobs"
        root.mkdir(parents=True)
        self.images = make_database(self.database, schema=85, performers=4)
        write_blobs(self.blobs, self.images)
        self.nights = 0

    def add_images(self, count: int, make=None) -> dict:
        """`count` new performers with new images; `make(index)` gives an image's bytes
        (default: small ones named by the night)."""
        new = {}
        connection = sqlite3.connect(self.database)
        for index in range(count):
            data = make(index) if make else f"night-{self.nights}-image-{index}".encode() * 40
            checksum = hashlib.md5(data).hexdigest()
            new[checksum] = data
            connection.execute("INSERT INTO blobs VALUES (?, NULL)", (checksum,))
            connection.execute(
                "INSERT INTO performers (name, image_blob) VALUES (?, ?)", (f"p{self.nights}-{index}", checksum)
            )
        connection.commit()
        connection.close()
        write_blobs(self.blobs, new)
        self.images.update(new)
        return new

    def drop_image(self, checksum: str) -> None:
        connection = sqlite3.connect(self.database)
        connection.execute("UPDATE performers SET image_blob = NULL WHERE image_blob = ?", (checksum,))
        connection.execute("DELETE FROM blobs WHERE checksum = ?", (checksum,))
        connection.commit()
        connection.close()
        (self.blobs / checksum[:2] / checksum[2:4] / checksum).unlink()
        del self.images[checksum]

    def backup(self, store: Store, tmp: Path, name: str):
        self.nights += 1
        copy = vacuum_copy(self.database, tmp / f"{name}.sqlite")
        new = stored.checked_backup(name, copy, file_digest(copy), "quick", includes_blobs=True, source="filesystem")
        return stored.store_backup(store, new, stored.FolderSource([self.blobs]), Reporter())


def names(n):
    return f"stash-go.sqlite.85.2026110{n}_030000"


def blobs_on_disk(store: Store) -> dict:
    return {b.checksum: store.blob_path(b.checksum).read_bytes() for b in store.stored_blobs()}


@pytest.fixture
def lib(tmp_path):
    return Library(tmp_path / "stash")


def test_each_backup_stores_only_new_blobs_and_records_what_it_refers_to(lib, tmp_path):
    store = Store(tmp_path / "archive")
    first = lib.backup(store, tmp_path, names(1))
    assert (first.blob_count, first.new_blobs) == (4, 4)
    assert blobs_on_disk(store) == lib.images
    lib.add_images(2)
    second = lib.backup(store, tmp_path, names(2))
    assert (second.blob_count, second.new_blobs) == (6, 2)
    assert second.new_blob_bytes == sum(len(d) for d in list(lib.images.values())[-2:])
    assert len(blobs_on_disk(store)) == 6
    with store.blob_list(names(1)) as listed:
        assert [c for c, _ in listed] == sorted(list(lib.images)[:4])
    assert not list(store.incoming.iterdir()) and not list((store.folder / "pending").iterdir())
    # the snapshot decompresses to exactly the database that was backed up
    out = tmp_path / "back.sqlite"
    with open(out, "wb") as handle:
        store.read_snapshot(second, handle)
    assert file_digest(out) == second.snapshot.sha256
    assert second.snapshot.codec == "pages" and second.snapshot.stored_size < second.snapshot.size
    assert 0 < second.snapshot.added < first.snapshot.added  # the second stored only the pages that changed


def test_each_backup_compares_its_pages_with_the_newest_snapshots_first(lib, tmp_path, monkeypatch):
    store = Store(tmp_path / "archive")
    assert store.newest_page_list() is None
    lib.backup(store, tmp_path, names(1))
    first = store.page_list_path(names(1))
    assert store.newest_page_list() == first
    temp = first.parent / f"n{TEMP_MARKER}1.pages"  # a run's temp file is never the hint
    temp.write_bytes(b"")
    os.utime(temp, (first.stat().st_mtime + 60,) * 2)
    hints, real = [], page_store.write_pages
    monkeypatch.setattr(
        page_store, "write_pages", lambda *a, like=None, **k: hints.append(like) or real(*a, like=like, **k)
    )
    lib.add_images(1)
    lib.backup(store, tmp_path, names(2))
    assert hints == [first]


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_newest_backups_blobs_are_read_ahead_while_the_database_is_copied(lib, tmp_path, monkeypatch):
    store = Store(tmp_path / "archive")
    with store.blobs_read_ahead():  # nothing to read ahead yet
        pass
    lib.backup(store, tmp_path, names(1))
    lib.add_images(3)
    lib.backup(store, tmp_path, names(2))
    looked, real = [], store.blob_size
    monkeypatch.setattr(store, "blob_size", lambda checksum: looked.append(checksum) or real(checksum))
    with store.blobs_read_ahead():
        deadline = time.monotonic() + 10
        while len(looked) < len(lib.images) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sorted(looked) == sorted(lib.images) and len(looked) == len(set(looked))
    monkeypatch.setattr(store_module, "READ_AHEAD_BATCH", 1)  # a batch a blob, on several threads

    started, release = [], threading.Event()

    def slow(checksum):
        started.append(checksum)
        release.wait(10)
        looked.append(checksum)

    looked.clear()
    monkeypatch.setattr(store, "blob_size", slow)
    before = threading.active_count()
    with store.blobs_read_ahead():
        deadline = time.monotonic() + 10
        while len(started) < store_module.READ_AHEAD_THREADS and time.monotonic() < deadline:
            time.sleep(0.01)
        releaser = threading.Timer(0.2, release.set)  # the stats at once end after the caller's copy
        releaser.start()
    releaser.join()
    assert len(looked) == store_module.READ_AHEAD_THREADS < len(lib.images)  # the rest not looked up
    assert threading.active_count() == before
    monkeypatch.setattr(store, "blob_size", real)
    record = store.record_path(names(2))
    record.write_bytes(record.read_bytes()[:-30])  # damaged: the read-ahead stops, silently
    with store.blobs_read_ahead():
        time.sleep(0.1)


def test_blobs_are_looked_up_ahead_in_order_and_only_missing_ones_read_ahead(lib, tmp_path, monkeypatch):
    store = Store(tmp_path / "archive")
    lib.backup(store, tmp_path, names(1))
    new = lib.add_images(300)  # several batches of stats ahead of the copying
    monkeypatch.setattr(stored, "AHEAD_BATCH", 7)
    hinted = []
    source = stored.FolderSource([lib.blobs])
    real = source.read_ahead
    monkeypatch.setattr(source, "read_ahead", lambda checksum: hinted.append(checksum) or real(checksum))
    wanted = sorted([*lib.images, "f" * 32])  # and one neither has
    looked = list(stored._looked_up_ahead(store, wanted, source))
    assert [c for c, _ in looked] == wanted
    assert {c: size for c, size in looked} == {c: store.blob_size(c) for c in wanted}
    assert sorted(hinted) == sorted([*new, "f" * 32])


def test_a_failing_reference_query_fails_the_copy_and_leaves_no_thread(lib, tmp_path, monkeypatch):
    store = Store(tmp_path / "archive")
    monkeypatch.setattr(stored, "AHEAD_BATCH", 2)

    def references():
        yield from sorted(lib.images)[:3]
        raise VerificationError("the copy cannot be read as a database")

    source = stored.FolderSource([lib.blobs])
    with open(tmp_path / "list", "w") as listing, pytest.raises(VerificationError, match="cannot be read"):
        stored._store_blobs(store, references(), 4, source, listing, Reporter())
    with open(tmp_path / "list", "w") as listing, pytest.raises(VerificationError, match="out of order"):
        stored._store_blobs(store, sorted(lib.images, reverse=True), 4, source, listing, Reporter())
    assert not [t for t in threading.enumerate() if t.name.startswith("look-ahead") and t.is_alive()]


def test_reading_ahead_passes_over_what_is_no_blob(tmp_path):
    folder = tmp_path / "blobs"
    fifo = folder / "ab" / "cd" / ("abcd" + "0" * 28)
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)  # opened for reading it would wait for a writer
    source = stored.FolderSource([folder])
    source.read_ahead(fifo.name)
    source.read_ahead("ef" * 16)  # not there


def test_a_blob_missing_at_the_source_is_recorded_not_fatal(lib, tmp_path):
    store = Store(tmp_path / "archive")
    gone = sorted(lib.images)[0]
    (lib.blobs / gone[:2] / gone[2:4] / gone).unlink()
    header = lib.backup(store, tmp_path, names(1))
    assert header.missing_blobs == 1 and header.missing_examples == [gone] and header.blob_count == 3
    assert stored.check_snapshot(store, header, "quick", Reporter()) == []


def test_a_damaged_source_blob_is_not_stored(lib, tmp_path):
    store = Store(tmp_path / "archive")
    bad = sorted(lib.images)[1]
    (lib.blobs / bad[:2] / bad[2:4] / bad).write_bytes(b"not the image")
    header = lib.backup(store, tmp_path, names(1))
    assert header.missing_blobs == 1 and store.blob_size(bad) is None


def test_verify_finds_missing_and_rotten_blobs(lib, tmp_path):
    store = Store(tmp_path / "archive")
    lib.backup(store, tmp_path, names(1))
    lib.add_images(1)
    lib.backup(store, tmp_path, names(2))
    everything = [names(1), names(2)]
    assert stored.check_blobs(store, everything, stored.ReadData(), Reporter()) == {n: [] for n in everything}
    shared = sorted(lib.images)[0]  # in both backups
    path = store.blob_path(shared)
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))  # same size: only reading the data finds it
    assert stored.check_blobs(store, everything, None, Reporter()) == {n: [] for n in everything}
    found = stored.check_blobs(store, everything, stored.ReadData(), Reporter())
    assert all("does not match its name" in found[n][0] for n in everything)
    part = stored.ReadData(int(shared[:8], 16) % 3 + 1, 3)
    other = stored.ReadData(part.part % 3 + 1, 3)
    assert stored.check_blobs(store, everything, part, Reporter())[names(1)]
    assert not stored.check_blobs(store, everything, other, Reporter())[names(1)]
    path.unlink()
    found = stored.check_blobs(store, everything, None, Reporter())
    assert all("missing" in found[n][0] for n in everything)


def test_every_part_is_read_once_over_m_nights():
    checksums = [hashlib.md5(str(n).encode()).hexdigest() for n in range(1000)]
    parts = [stored.ReadData(n, 7) for n in range(1, 8)]
    assert all(sum(p.includes(c) for p in parts) == 1 for c in checksums)
    assert min(sum(p.includes(c) for c in checksums) for p in parts) > 100


def test_check_snapshot_finds_a_damaged_snapshot(lib, tmp_path):
    store = Store(tmp_path / "archive")
    header = lib.backup(store, tmp_path, names(1))
    assert stored.check_snapshot(store, header, "quick", Reporter()) == []
    path = store.folder / header.snapshot.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = stored.check_snapshot(store, header, "quick", Reporter())
    assert problems and "damaged" in problems[0]


def test_collection_removes_only_what_no_kept_backup_refers_to(lib, tmp_path):
    store = Store(tmp_path / "archive")
    lib.backup(store, tmp_path, names(1))
    dropped = sorted(lib.images)[0]
    lib.drop_image(dropped)
    lib.add_images(1)
    lib.backup(store, tmp_path, names(2))
    assert len(blobs_on_disk(store)) == 5  # the dropped image is still kept for the first backup
    would = stored.plan_collection(store, keep=[names(2)])
    assert [c for c, _ in would.delete_blobs] == [dropped] and would.delete_snapshots == [names(1)]
    assert would.delete_packs == []  # the second backup still uses the first one's pages
    expected = store.blob_path(dropped).stat().st_size + store.page_list_path(names(1)).stat().st_size
    assert would.freed_bytes == expected
    store.forget(names(1))
    plan = stored.plan_collection(store)
    assert plan.delete_blobs == would.delete_blobs and plan.delete_snapshots == [names(1)]
    stored.collect(store, plan, Reporter())
    assert blobs_on_disk(store) == lib.images and store.snapshot_names() == [names(2)]
    assert stored.check_blobs(store, [names(2)], stored.ReadData(), Reporter()) == {names(2): []}


def test_a_pack_is_collected_only_when_no_kept_page_list_names_it(lib, tmp_path):
    from stash_backup_plugin.core import page_store

    store = Store(tmp_path / "archive")
    lib.backup(store, tmp_path, names(1))
    first = {p.pack for p in page_store.stored_packs(store.folder)}
    lib.add_images(30)  # enough rows for pages of its own
    lib.backup(store, tmp_path, names(2))
    second = {p.pack for p in page_store.stored_packs(store.folder)} - first
    assert second and stored.plan_collection(store).delete_packs == []
    store.forget(names(2))
    with store.pending("another-run"):  # a run in progress may be naming the new pack in its list
        assert stored.plan_collection(store).spared_packs == len(second)
    plan = stored.plan_collection(store)
    assert {pack for pack, _ in plan.delete_packs} == second and plan.kept_packs == len(first)
    stored.collect(store, plan, Reporter())
    assert {p.pack for p in page_store.stored_packs(store.folder)} == first
    assert stored.check_snapshot(store, store.header(names(1)), "quick", Reporter()) == []
    store.forget(names(1))
    stored.collect(store, stored.plan_collection(store), Reporter())
    assert list(page_store.stored_packs(store.folder)) == []


def test_collection_refuses_when_a_kept_page_list_cannot_be_read(lib, tmp_path):
    from stash_backup_plugin.core.errors import VerificationError

    store = Store(tmp_path / "archive")
    header = lib.backup(store, tmp_path, names(1))
    (store.folder / header.snapshot.file).write_bytes(b"damaged")
    with pytest.raises(VerificationError, match="page list"):
        stored.plan_collection(store)


def test_collection_spares_what_a_run_in_progress_may_be_adding(lib, tmp_path):
    store = Store(tmp_path / "archive")
    lib.backup(store, tmp_path, names(1))
    store.forget(names(1))
    with store.pending("another-run"):
        plan = stored.plan_collection(store)
    assert plan.delete_blobs == [] and plan.spared_blobs == 4 and plan.spared_snapshots == [names(1)]
    assert len(stored.plan_collection(store).delete_blobs) == 4


def test_export_is_a_verified_stash_zip_with_exactly_the_backup(lib, tmp_path):
    store = Store(tmp_path / "archive")
    header = lib.backup(store, tmp_path, names(1))
    lib.add_images(2)  # later images are not in that backup
    lib.backup(store, tmp_path, names(2))
    out = stored.export_zip(store, names(1), tmp_path / "out" / "exported.zip", Reporter())
    report = verify_backup(out)
    assert report.kind == "zip" and report.blob_count == 4 and not report.blobs_not_included
    with zipfile.ZipFile(out) as packed:
        assert packed.getinfo("stash-go.sqlite").compress_type == zipfile.ZIP_DEFLATED
        assert hashlib.sha256(packed.read("stash-go.sqlite")).hexdigest() == header.snapshot.sha256
        assert len([n for n in packed.namelist() if n.startswith("blobs/")]) == 4


def test_import_of_a_full_backup_zip_keeps_only_blobs_the_store_lacks(lib, tmp_path):
    store = Store(tmp_path / "archive")
    lib.backup(store, tmp_path, names(1))
    lib.add_images(3)
    plain = vacuum_copy(lib.database, tmp_path / "plain.sqlite")
    orphan = {hashlib.md5(b"orphan").hexdigest(): b"orphan"}  # in Stash's folder, referenced by nothing
    full = make_full_backup(tmp_path / "stash-go.sqlite.85.20261103_030000.zip", plain, {**lib.images, **orphan})
    header = stored.import_backup_file(store, full, names(3), "quick", Reporter(), source="server-zip")
    assert (header.blob_count, header.new_blobs) == (7, 3) and header.database_member == "stash-go.sqlite"
    assert blobs_on_disk(store) == lib.images  # the orphan is not kept
    assert stored.check_snapshot(store, header, "quick", Reporter()) == []


def test_import_of_a_plain_database_records_no_blobs(lib, tmp_path):
    store = Store(tmp_path / "archive")
    plain = vacuum_copy(lib.database, tmp_path / "plain.sqlite")
    header = stored.import_backup_file(store, plain, names(1), "quick", Reporter(), source="database")
    assert header.includes_blobs is False and header.blob_count == 0 and list(store.stored_blobs()) == []
    assert stored.check_snapshot(store, header, "quick", Reporter()) == []


def test_unlisted_references_is_one_merged_pass():
    listed = [("b", 1), ("d", 1), ("e", 1)]
    assert stored.unlisted_references(iter(["a", "b", "c", "e", "f"]), iter(listed)) == ["a", "c", "f"]
    assert stored.unlisted_references(iter([]), iter(listed)) == []


def test_a_database_failing_its_check_is_never_recorded(lib, tmp_path):
    """The SQLite check runs beside the blob copying: a database that fails it gets no
    record (its blobs, if any were new, are garbage for the next prune)."""
    import contextlib
    import sqlite3
    from stash_backup_plugin.core.errors import VerificationError

    copy = vacuum_copy(lib.database, tmp_path / "copy.sqlite")
    with contextlib.closing(sqlite3.connect(f"file:{copy}?immutable=1", uri=True)) as connection:
        [root] = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'performers'").fetchone()
    data = bytearray(copy.read_bytes())
    page = (root - 1) * int.from_bytes(data[16:18], "big")
    data[page + 1 : page + 3] = (5).to_bytes(2, "big")  # one damaged page only quick_check notices
    copy.write_bytes(bytes(data))
    store = Store(tmp_path / "archive")
    new = stored.checked_backup(names(1), copy, file_digest(copy), "quick", includes_blobs=True, source="filesystem")
    with pytest.raises(VerificationError, match="quick_check"):
        stored.store_backup(store, new, stored.FolderSource([lib.blobs]), Reporter())
    assert store.record_names() == [] and store.snapshot_names() == []
    assert stored.plan_collection(store).delete_blobs  # what it copied is unreferenced: the next prune takes it


def test_a_stray_file_in_the_blobs_folder_never_gets_a_referenced_blob_collected(lib, tmp_path):
    """Thumbs.db (Windows Explorer on a NAS share) sorts after `1aec…` but before every
    name that starts with a letter: the sorted walk once took the referenced blobs after
    it for unreferenced ones, and deleted them (and the stray) on every prune."""
    from tests.support.harness import run_cli

    lib.add_images(12)
    store = Store(tmp_path / "archive")
    lib.backup(store, tmp_path, names(1))
    stray = store.blobs_folder / "1a" / "ec" / "Thumbs.db"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"explorer's thumbnail cache")
    after = [c for c in lib.images if "1aec" < c[:4] and c[0].isdigit()]
    assert after, "the test needs referenced blobs that sort between the stray's folder and 'T'"
    pruned = run_cli("prune", "--keep-last", "10", "--dest", str(store.folder))
    assert pruned.returncode == 0, pruned.stderr
    assert "(0 blob(s)" in pruned.stderr or "freed" not in pruned.stderr, pruned.stderr
    assert "blobs/1a/ec/Thumbs.db" in pruned.stderr and stray.exists()
    assert blobs_on_disk(store) == lib.images
    verified = run_cli("verify", "--read-data", "--dest", str(store.folder))
    assert verified.returncode == 0 and "1 bad" not in verified.stderr, verified.stderr


def test_no_ordering_can_get_a_referenced_blob_deleted(lib, tmp_path):
    """The check by name before deleting: a plan that (by any ordering mistake) lists a
    referenced blob for deletion loses it again."""
    from stash_backup_plugin.core.store_plan import GcPlan, spare_referenced

    plan = GcPlan(delete_blobs=[("b" * 32, 5), ("a" * 32, 7), ("c" * 32, 1)])
    spare_referenced(plan, iter(["c" * 32, "0" * 32, "a" * 32]))
    assert plan.delete_blobs == [("b" * 32, 5)] and plan.rescued_blobs == 2 and plan.kept_bytes == 8


def test_read_data_reads_the_packs_a_backup_uses(lib, tmp_path):
    """A page no snapshot uses yet, damaged inside a pack: reassembly cannot see it, the
    pack's read does (the next snapshot might take that page)."""
    from stash_backup_plugin.core import page_store
    from stash_backup_plugin.core import pages as fmt

    store = Store(tmp_path / "archive")
    lib.backup(store, tmp_path, names(1))
    assert stored.check_packs(store, [names(1)], stored.ReadData()) == {names(1): []}
    pack = next(page_store.stored_packs(store.folder)).pack
    index_path = page_store.pack_path(store.folder, pack, fmt.INDEX_SUFFIX)
    index = fmt.parse_index(index_path.read_bytes(), "i")
    index_path.write_bytes(
        fmt.encode_index(fmt.PackIndex(index.page_size, index.frames, bytes(16) + index.hashes[16:]))
    )
    assert stored.check_snapshot(store, store.header(names(1)), "quick", Reporter()) == []
    (problem,) = stored.check_packs(store, [names(1)], stored.ReadData())[names(1)]
    assert "not the page its index names" in problem


@pytest.mark.parametrize("suffix", [".sqlite", ".gz"])
def test_export_of_the_database_alone_for_stashs_manual_restore(lib, tmp_path, suffix):
    import gzip

    from stash_backup_plugin.jobs.export import export_backup
    from stash_backup_plugin.core.archive import Archive

    store = Store(tmp_path / "archive")
    header = lib.backup(store, tmp_path, names(1))
    out = export_backup(Archive(store.folder), names(1), tmp_path / "out" / f"db{suffix}", Reporter())
    data = gzip.decompress(out.read_bytes()) if suffix == ".gz" else out.read_bytes()
    assert hashlib.sha256(data).hexdigest() == header.snapshot.sha256 and data.startswith(b"SQLite format 3")
    assert out.stat().st_mode & 0o077 == 0
