"""stash-backup migrate on an archive of per-backup files (no server needed): a dry run
changes nothing; --apply imports each verified file, removes it only once its stored
copy checks out, skips a damaged one; killed after the import, the next run finishes."""

import json
import sqlite3
import signal

import pytest

from stash_backup_plugin.core.archive import Archive, Entry, entry_from_name, utc_now
from stash_backup_plugin.core.atomic import temp_path_in
from stash_backup_plugin.core.faults import CRASH_ENV
from stash_backup_plugin.core.verify import verify_backup

from tests.support.harness import run_cli
from tests.support.stashlike import make_database, make_full_backup, vacuum_copy

NAMES = [
    "stash-go.sqlite.85.20261101_030000.zip",
    "stash-go.sqlite.85.20261102_030000.zip",
    "stash-go.sqlite.85.20261103_030000",
]


@pytest.fixture
def old_archive(tmp_path):
    """Two full-backup zips sharing most images and a plain database, as the versions
    before the store left them in manifest.json."""
    database = tmp_path / "stash-go.sqlite"
    images = make_database(database, schema=85, performers=4)
    plain = vacuum_copy(database, tmp_path / "plain.sqlite")
    folder = tmp_path / "archive"
    archive = Archive(folder)
    with archive.locked():
        for index, name in enumerate(NAMES):
            temp = temp_path_in(folder, name)
            if name.endswith(".zip"):
                chosen = dict(list(images.items())[index:])  # the second zip lacks the first image
                make_full_backup(temp, plain, chosen)
            else:
                temp.write_bytes(plain.read_bytes())
            verified = verify_backup(temp)
            archive.add(
                temp,
                Entry(
                    file=name,
                    size=verified.size,
                    sha256=verified.sha256,
                    **entry_from_name(name),
                    kind=verified.kind,
                    blob_count=verified.blob_count,
                    includes_blobs=verified.kind == "zip",
                    verified_at=utc_now(),
                    verified_level="quick",
                    verified_ok=True,
                    source="plugin-zip",
                ),
            )
    return folder, images


def listed(folder):
    return json.loads(run_cli("list", "--json", "--dest", str(folder)).stdout)


def test_dry_run_then_apply(old_archive):
    folder, images = old_archive
    before = {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    dry = run_cli("migrate", "--dest", str(folder))
    assert dry.returncode == 0 and dry.stderr.count("would import") == 3 and "freed" in dry.stderr, dry.stderr
    assert {p: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    applied = run_cli("migrate", "--apply", "--json", "--dest", str(folder))
    assert applied.returncode == 0, applied.stderr
    assert [s["action"] for s in json.loads(applied.stdout)] == ["import"] * 3
    rows = listed(folder)
    assert [r["kind"] for r in rows] == ["stored"] * 3 and {r["migrated_from"] for r in rows} == set(NAMES)
    assert not any((folder / name).exists() for name in NAMES)
    assert len(list((folder / "blobs").glob("??/??/*"))) == len(images)  # each image once
    assert run_cli("verify", "--read-data", "--dest", str(folder)).returncode == 0


def test_a_damaged_old_file_is_skipped_and_kept(old_archive):
    folder, _ = old_archive
    path = folder / NAMES[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    applied = run_cli("migrate", "--apply", "--dest", str(folder))
    assert applied.returncode == 1 and f"BAD {NAMES[0]}" in applied.stderr and "Traceback" not in applied.stderr
    assert path.exists() and sorted(r["kind"] for r in listed(folder)) == ["stored", "stored", "zip"]


def test_killed_after_an_import_the_next_run_finishes(old_archive):
    folder, images = old_archive
    crashed = run_cli("migrate", "--apply", "--dest", str(folder), env={CRASH_ENV: "migrated"})
    assert crashed.returncode == -signal.SIGKILL
    assert (folder / NAMES[0]).exists()  # imported, not yet removed: listed once, as the stored backup
    assert len(listed(folder)) == 3
    rerun = run_cli("migrate", "--apply", "--json", "--dest", str(folder))
    assert rerun.returncode == 0, rerun.stderr
    assert [s["action"] for s in json.loads(rerun.stdout)] == ["remove-old", "import", "import"]
    assert not any((folder / name).exists() for name in NAMES)
    assert [r["kind"] for r in listed(folder)] == ["stored"] * 3
    assert run_cli("verify", "--read-data", "--dest", str(folder)).returncode == 0


# --- gzip snapshots (archives made before page snapshots) folded into pages ---------------------


@pytest.fixture
def gzip_archive(tmp_path):
    """A store whose two backups keep their databases as whole gzip snapshots, as the
    versions before page snapshots stored them; the second database differs a little."""
    from stash_backup_plugin.core import stored
    from stash_backup_plugin.core.reporting import Reporter
    from stash_backup_plugin.core.store import Store
    from stash_backup_plugin.core.verify import file_digest
    from tests.support.stored import gzip_snapshot

    database = tmp_path / "stash-go.sqlite"
    make_database(database, schema=85, performers=4)
    with sqlite3.connect(database) as connection:  # a few MiB of rows, as a library's scenes would be
        connection.execute("CREATE TABLE filler (id INTEGER PRIMARY KEY, body TEXT)")
        connection.executemany("INSERT INTO filler VALUES (?, ?)", ((n, f"{n:08d}" * 64) for n in range(6000)))
    store = Store(tmp_path / "archive")
    names = [n for n in NAMES if n.endswith(".zip")]
    for night, name in enumerate(names):
        copy = vacuum_copy(database, tmp_path / f"night-{night}.sqlite")
        new = stored.checked_backup(name[:-4], copy, file_digest(copy), "quick", includes_blobs=False, source="t")
        stored.store_backup(store, new, stored.NoBlobs(), Reporter())
        gzip_snapshot(store, name[:-4])
        with sqlite3.connect(database) as connection:
            connection.execute("UPDATE filler SET body = upper(hex(randomblob(256))) WHERE id % 500 = 0")
    stored.collect(store, stored.plan_collection(store), Reporter())  # the packs made on the way: gone
    assert not list(store.folder.glob("packs/*/*"))
    return store, [n[:-4] for n in names]


def databases(store, names):
    from tests.support.stored import database_of

    return {name: database_of(store, name) for name in names}


def test_migrate_folds_gzip_snapshots_into_pages(gzip_archive):
    store, names = gzip_archive
    before = databases(store, names)
    dry = run_cli("migrate", "--dest", str(store.folder))
    assert dry.returncode == 0 and dry.stderr.count("would fold the gzip snapshot") == 2, dry.stderr
    assert all(store.header(n).snapshot.codec == "gzip" for n in names)
    applied = run_cli("migrate", "--apply", "--dest", str(store.folder))
    assert applied.returncode == 0 and "folded 2 gzip snapshot(s)" in applied.stderr, applied.stderr
    assert [store.header(n).snapshot.codec for n in names] == ["pages", "pages"]
    assert databases(store, names) == before and not list(store.folder.glob("snapshots/*.gz"))
    first, second = (store.header(n).snapshot.added for n in names)
    assert 0 < second < first / 2  # the second shares most pages with the first
    verified = run_cli("verify", "--read-data", "--dest", str(store.folder))
    assert verified.returncode == 0 and "2 good, 0 bad" in verified.stderr, verified.stderr
    again = run_cli("migrate", "--apply", "--dest", str(store.folder))
    assert again.returncode == 0 and "fold the gzip" not in again.stderr


@pytest.mark.parametrize("step", ["pack-sealed", "fold-list", "fold-record"])
def test_a_fold_killed_anywhere_is_finished_by_the_next_run(gzip_archive, step):
    store, names = gzip_archive
    before = databases(store, names)
    crashed = run_cli("migrate", "--apply", "--dest", str(store.folder), env={CRASH_ENV: step})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert databases(store, names) == before  # every backup whole, whichever file holds it now
    pruned = run_cli("prune", "--keep-last", "5", "--dest", str(store.folder))  # collection meanwhile
    assert pruned.returncode == 0, pruned.stderr
    assert databases(store, names) == before
    rerun = run_cli("migrate", "--apply", "--dest", str(store.folder))
    assert rerun.returncode == 0, rerun.stderr
    assert [store.header(n).snapshot.codec for n in names] == ["pages", "pages"]
    assert databases(store, names) == before and not list(store.folder.glob("snapshots/*.gz"))
    assert run_cli("verify", "--read-data", "--dest", str(store.folder)).returncode == 0
