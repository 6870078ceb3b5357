"""The archive's store against real Stash servers, on both pinned versions: each night
stores only the new blobs (counted on disk), prune collects what no kept backup
refers to, and kill -9 at every named step of a backup or a prune never leaves a
kept backup with a missing blob. Restores of stored backups: test_e2e_restore.py."""

import hashlib
import json
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from stash_backup_plugin.core import page_store
from stash_backup_plugin.core.naming import TEMP_MARKER
from stash_backup_plugin.core.faults import CRASH_ENV
from stash_backup_plugin.core.store import Store
from tests.support.stored import database_of
from tests.support.stash_server.build import NEW_VERSION
from tests.support.stash_server.server import data_url, png_bytes, seed_content

from tests.support.harness import run_cli

pytestmark = pytest.mark.e2e


def cli(server, dest, *args, env=None):
    return run_cli(*args, "--url", server.url, "--dest", str(dest), env=env)


def download(server, dest, *args):
    result = cli(server, dest, "download", "--json", *args)
    assert result.returncode == 0, result.stderr
    time.sleep(1.05)  # backup names carry seconds: the next one gets its own
    return json.loads(result.stdout)


def listing(dest) -> list:
    result = run_cli("list", "--json", "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def archive_blobs(dest) -> dict:
    """Every blob file of the archive: images and Stash's settings files."""
    return {p.name: p.read_bytes() for p in (dest / "blobs").glob("??/??/*")}


def archive_images(dest) -> dict:
    """The archive's blobs that are not settings files of any backup it holds."""
    store = Store(dest)
    settings = {f.md5 for name in store.record_names() for f in store.settings(name)}
    return {checksum: data for checksum, data in archive_blobs(dest).items() if checksum not in settings}


def server_blobs(server) -> dict:
    return {p.name: p.read_bytes() for p in server.blobs.glob("??/??/*")}


def record_blobs(dest, name, images_only: bool = False) -> list:
    """Every blob the backup's record refers to: its images and its settings files."""
    with Store(dest).blob_list(name, images_only) as blobs:
        return [checksum for checksum, _ in blobs]


def new_images(server, count: int, seed: int) -> list:
    """New performers with new images, as a night of use adds them."""
    made = []
    for index in range(count):
        image = png_bytes(seed + index)
        server.graphql(
            "mutation($i: PerformerCreateInput!) { performerCreate(input: $i) { id } }",
            {"i": {"name": f"night-{seed}-{index}", "image": data_url(image)}},
        )
        made.append(hashlib.md5(image).hexdigest())
    return made


def test_nightly_cycle_stores_only_new_blobs(stash_server_factory, stash_version, tmp_path):
    server = stash_server_factory(stash_version, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    first = download(server, dest)
    # on Stash's host: a consistent copy of the live file, no backup asked of Stash
    assert first["kind"] == "stored" and first["source"] == "live-file" and first["blob_count"] == 6
    assert "Backing up database" not in server.log_text()
    assert archive_images(dest) == server_blobs(server)  # each blob once, byte for byte
    added = new_images(server, 2, 500)
    second = download(server, dest)
    assert second["blob_count"] == 8 and len(archive_images(dest)) == 8  # only the 2 new ones were added
    assert set(record_blobs(dest, second["file"], images_only=True)) == set(server_blobs(server))
    assert {f.path for f in Store(dest).settings(second["file"])} >= {"config.yml"}
    assert set(added) <= set(archive_blobs(dest)) and not set(added) & set(record_blobs(dest, first["file"]))
    # the pages reassemble to the very database Stash made; the second stored only the pages it changed
    store = Store(dest)
    assert hashlib.sha256(database_of(store, second["file"])).hexdigest() == second["sha256"]
    added = [store.header(name).snapshot.added for name in (first["file"], second["file"])]
    assert 0 < added[1] < added[0] < second["size"] / 3, added
    rows = listing(dest)
    assert [r["file"] for r in rows] == [second["file"], first["file"]]
    assert rows[0]["new_bytes"] < rows[1]["new_bytes"]  # the second added its snapshot and 2 small images
    text = run_cli("list", "--dest", str(dest)).stdout
    assert "archive total" in text and f"{len(archive_blobs(dest))} blob(s)" in text  # images and settings files
    verify = run_cli("verify", "--read-data", "--dest", str(dest))
    assert verify.returncode == 0 and "2 good, 0 bad" in verify.stderr, verify.stderr
    assert not [p for p in dest.rglob("*") if "tmp" in p.name]


def test_via_server_asks_stash_for_its_backup_even_on_its_host(stash_server_factory, tmp_path):
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    live = download(server, dest)
    asked = download(server, dest, "--via-server")
    assert (live["source"], asked["source"]) == ("live-file", "filesystem")
    assert server.log_text().count("Backing up database") == 1
    store = Store(dest)
    # Stash's VACUUM INTO repacks the file: the same library, other pages
    assert database_of(store, asked["file"]) != database_of(store, live["file"])
    assert asked["blob_count"] == live["blob_count"] == 6


def test_downloads_while_stash_writes_each_hold_one_committed_state(stash_server_factory, tmp_path):
    """Performers are created as fast as Stash takes them while the live file is
    copied: each backup is sound and holds a library Stash reported at some moment
    (a copy that matches neither the count before nor after is not kept)."""
    import threading

    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    dest, stop, created = tmp_path / "archive", threading.Event(), []

    def write():
        while not stop.is_set():
            server.graphql(
                "mutation($i: PerformerCreateInput!) { performerCreate(input: $i) { id } }",
                {"i": {"name": f"busy-{len(created)}"}},
            )
            created.append(1)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        made = [cli(server, dest, "download", "--json") for _ in range(3)]
    finally:
        stop.set()
        writer.join()
    assert len(created) > 10
    for result in made:
        assert result.returncode == 0, result.stderr
    entries = [json.loads(r.stdout) for r in made]
    assert all(e["verified_ok"] for e in entries)
    assert "live-file" in [e["source"] for e in entries]  # the copy held up under writes
    verify = run_cli("verify", "--read-data", "--dest", str(dest))
    assert verify.returncode == 0, verify.stderr
    store = Store(dest)
    counts = [store.header(e["file"]).counts["performers"] for e in entries]
    assert counts == sorted(counts) and counts[-1] <= 3 + len(created), counts


def test_a_cli_on_another_machine_keeps_only_the_blobs_it_lacks_from_stashs_zip(stash_server_factory, tmp_path):
    """Where Stash's blob folder is not readable, v0.31's includeBlobs zip is fetched
    and only the blobs the archive lacks (and the database refers to) are kept."""
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    dest, elsewhere = tmp_path / "archive", ["--blobs-path", str(tmp_path / "not-here")]
    first = download(server, dest, *elsewhere)
    assert first["source"] == "server-zip" and first["blob_count"] == 6
    orphan = server.blobs / "ab" / "cd" / ("abcd" + "0" * 28)  # in Stash's folder, referenced by nothing
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"not an image anyone uses")
    new_images(server, 1, 700)
    second = download(server, dest, *elsewhere)
    assert second["blob_count"] == 7 and second["new_bytes"] < first["new_bytes"]
    assert set(archive_images(dest)) == set(server_blobs(server)) - {orphan.name}
    assert not list(dest.glob("*.zip")) and not [p for p in dest.rglob("*") if "tmp" in p.name]


def test_prune_collects_only_what_no_kept_backup_refers_to(stash_server_factory, tmp_path):
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    created = seed_content(server)
    dest = tmp_path / "archive"
    first = download(server, dest)
    old_image = hashlib.md5(created["performers"][0]["image"]).hexdigest()
    server.graphql(
        "mutation($i: PerformerUpdateInput!) { performerUpdate(input: $i) { id } }",
        {"i": {"id": created["performers"][0]["id"], "image": data_url(png_bytes(4242))}},
    )
    second = download(server, dest)
    assert old_image in archive_blobs(dest) and old_image not in record_blobs(dest, second["file"])
    dry = cli(server, dest, "prune", "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0 and "would free" in dry.stderr and "1 blob(s), 1 database snapshot(s)" in dry.stderr
    assert old_image in archive_blobs(dest) and len(listing(dest)) == 2
    pruned = cli(server, dest, "prune", "--keep-last", "1")
    assert pruned.returncode == 0 and "freed" in pruned.stderr, pruned.stderr
    assert [r["file"] for r in listing(dest)] == [second["file"]]
    assert set(archive_blobs(dest)) == set(record_blobs(dest, second["file"])) and old_image not in archive_blobs(dest)
    assert not (dest / "snapshots" / f"{first['file']}.pages").exists()
    assert packs_on_disk(dest) == named_packs(dest, [second["file"]])
    assert run_cli("verify", "--read-data", "--dest", str(dest)).returncode == 0


# --- kill -9 at every named step ------------------------------------------------------------

BACKUP_STEPS = ["live-copied", "blobs-batch", "pack-sealed", "snapshot-stored", "record-written"]
PRUNE_STEPS = ["forgotten", "gc-snapshots", "gc-packs", "gc-batch"]


def packs_on_disk(dest) -> set:
    return {p.name.split(".")[0] for p in dest.glob("packs/*/*")}


def named_packs(dest, names) -> set:
    store = Store(dest)
    return {pack for name in names for pack in page_store.read_page_list(store.page_list_path(name)).packs}


def assert_every_kept_backup_whole(dest):
    """verify --read-data: every recorded backup's database and every blob it lists."""
    result = run_cli("verify", "--read-data", "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("step", BACKUP_STEPS)
def test_kill_during_a_backup(stash_server_factory, tmp_path, step):
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    first = download(server, dest)
    new_images(server, 2, 900)
    crashed = cli(server, dest, "download", env={CRASH_ENV: step})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    names = [r["file"] for r in listing(dest)]
    assert names[-1] == first["file"] and len(names) == (2 if step == "record-written" else 1)
    assert_every_kept_backup_whole(dest)
    again = download(server, dest)  # the next run cleans up and stores what is new
    assert again["blob_count"] == 8
    assert not list(dest.glob("incoming/*")) and not list(dest.glob("pending/*"))
    assert not [p for p in dest.rglob("*") if TEMP_MARKER in p.name]  # anywhere: the killed run's copy too
    pruned = cli(server, dest, "prune", "--keep-last", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert set(archive_blobs(dest)) == set(record_blobs(dest, again["file"]))  # nothing orphaned stays
    assert packs_on_disk(dest) == named_packs(dest, [again["file"]])
    assert_every_kept_backup_whole(dest)


@pytest.mark.parametrize("step", PRUNE_STEPS)
def test_kill_during_a_prune(stash_server_factory, tmp_path, step):
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    created = seed_content(server)
    dest = tmp_path / "archive"
    download(server, dest)
    for index, performer in enumerate(created["performers"]):  # three images only the first backup has
        server.graphql(
            "mutation($i: PerformerUpdateInput!) { performerUpdate(input: $i) { id } }",
            {"i": {"id": performer["id"], "image": data_url(png_bytes(7000 + index))}},
        )
    kept = download(server, dest)
    # A run killed once its pack is written: that pack is garbage too (a small database's
    # pages fit in one pack, which the kept backup still uses: a pack is never split).
    new_images(server, 1, 7100)
    killed = cli(server, dest, "download", env={CRASH_ENV: "pack-sealed"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    crashed = cli(server, dest, "prune", "--keep-last", "1", env={CRASH_ENV: step})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert [r["file"] for r in listing(dest)] == [kept["file"]]  # forgotten first, so listed once
    assert set(record_blobs(dest, kept["file"])) <= set(archive_blobs(dest))
    assert_every_kept_backup_whole(dest)
    again = cli(server, dest, "prune", "--keep-last", "1")
    assert again.returncode == 0, again.stderr
    assert set(archive_blobs(dest)) == set(record_blobs(dest, kept["file"]))
    assert sorted(p.name for p in (dest / "snapshots").iterdir()) == [f"{kept['file']}.pages"]
    assert packs_on_disk(dest) == named_packs(dest, [kept["file"]])


# --- restoring stored backups -----------------------------------------------------------------


def state_of(server) -> dict:
    """What a user sees: names, and every performer's image bytes (served by Stash
    from its blobs folder)."""
    from tests.support.stash_server.server import content_names, performer_image

    performers = server.graphql("{ findPerformers(filter: {per_page: -1}) { performers { id name } } }")
    images = {p["name"]: performer_image(server, p["id"]) for p in performers["findPerformers"]["performers"]}
    return {"names": content_names(server), "images": images}


def restore_and_read(server, dest, name) -> dict:
    """Stop Stash, empty its blobs folder (every image must come from the archive),
    restore the backup by name, start Stash and read what it serves."""
    import shutil
    from tests.support.harness import run_restore

    server.stop()
    shutil.rmtree(server.blobs)
    server.blobs.mkdir()
    result = run_restore(name, "--config", str(server.config_path), "--archive", str(dest), "--yes")
    assert result.returncode == 0, result.stderr
    server.start()
    return state_of(server)


def a_night(server, created, night: int) -> None:
    """New images, a replaced one, a removed tag: what changes between two backups."""
    new_images(server, 1, 100 * night)
    server.graphql(
        "mutation($i: PerformerUpdateInput!) { performerUpdate(input: $i) { id } }",
        {"i": {"id": created["performers"][night % 3]["id"], "image": data_url(png_bytes(50 * night))}},
    )
    server.graphql(f'mutation {{ tagCreate(input: {{name: "tag-of-night-{night}"}}) {{ id }} }}')


def test_restore_of_each_backup_then_prune_and_restore_of_every_kept_one(stash_server_factory, stash_version, tmp_path):
    server = stash_server_factory(stash_version, install_plugin=False)
    created = seed_content(server)
    dest = tmp_path / "archive"
    backups = []
    for night in (1, 2, 3):
        backups.append((download(server, dest)["file"], state_of(server)))
        a_night(server, created, night)
    for name, expected in backups:
        assert restore_and_read(server, dest, name) == expected, name
    pruned = cli(server, dest, "prune", "--keep-last", "2")
    assert pruned.returncode == 0 and "freed" in pruned.stderr, pruned.stderr
    assert [r["file"] for r in listing(dest)] == [name for name, _ in reversed(backups[1:])]
    for name, expected in reversed(backups[1:]):  # after garbage collection, each kept backup is whole
        assert restore_and_read(server, dest, name) == expected, name


def make_old_format_archive(server, dest, stash_version) -> str:
    """An archive as the versions before the store left it: a verified per-backup zip
    in manifest.json (Stash's own zip on v0.31; one built in the same layout on v0.28)."""
    import requests
    from stash_backup_plugin.core import backup_zip
    from stash_backup_plugin.core.archive import Archive, Entry, entry_from_name, utc_now
    from stash_backup_plugin.core.atomic import temp_path_in
    from stash_backup_plugin.core.verify import verify_backup

    with_blobs = stash_version == NEW_VERSION
    archive = Archive(dest)
    with archive.locked():
        extra = ", includeBlobs: true" if with_blobs else ""
        link = server.graphql(f"mutation {{ backupDatabase(input: {{download: true{extra}}}) }}")["backupDatabase"]
        name = link.rsplit("/", 1)[1]
        fetched = temp_path_in(dest, name)
        fetched.write_bytes(requests.get(server.url + "/downloads/" + link.split("/downloads/")[1], timeout=60).content)
        if not with_blobs:
            database, name = fetched, name + ".zip"
            fetched = temp_path_in(dest, name)
            files = sorted((p.name, p) for p in server.blobs.glob("??/??/*"))
            with open(fetched, "r+b") as handle:
                backup_zip.write_full_backup(handle, database, "stash-go.sqlite", files)
            database.unlink()
        verified = verify_backup(fetched)
        archive.add(
            fetched,
            Entry(
                file=name,
                size=verified.size,
                sha256=verified.sha256,
                **entry_from_name(name),
                kind="zip",
                blob_count=verified.blob_count,
                includes_blobs=True,
                source="server-zip" if with_blobs else "plugin-zip",
                verified_at=utc_now(),
                verified_level="quick",
                verified_ok=True,
            ),
        )
    return name


def test_an_old_format_archive_keeps_working_then_is_migrated_and_restored(
    stash_server_factory, stash_version, tmp_path
):
    server = stash_server_factory(stash_version, install_plugin=False)
    created = seed_content(server)
    dest = tmp_path / "archive"
    old = make_old_format_archive(server, dest, stash_version)
    expected_old = state_of(server)
    time.sleep(1.05)
    a_night(server, created, 1)
    new = download(server, dest)["file"]  # a new backup beside the old zip: in the store
    assert [r["kind"] for r in listing(dest)] == ["stored", "zip"]
    assert run_cli("verify", "--dest", str(dest)).returncode == 0
    dry = run_cli("migrate", "--dest", str(dest))
    assert dry.returncode == 0 and f"would import {old}" in dry.stderr and "freed" in dry.stderr, dry.stderr
    assert (dest / old).exists()
    applied = run_cli("migrate", "--apply", "--dest", str(dest))
    assert applied.returncode == 0 and f"migrated {old}" in applied.stderr, applied.stderr
    assert not (dest / old).exists() and not list(dest.glob("*.zip"))
    rows = listing(dest)
    assert [r["kind"] for r in rows] == ["stored", "stored"] and rows[1]["migrated_from"] == old
    assert len(archive_blobs(dest)) == len(
        set(record_blobs(dest, rows[0]["file"])) | set(record_blobs(dest, rows[1]["file"]))
    )
    assert run_cli("verify", "--read-data", "--dest", str(dest)).returncode == 0
    assert restore_and_read(server, dest, rows[1]["file"]) == expected_old
    assert run_cli("migrate", "--dest", str(dest)).returncode == 0  # nothing left to do
    assert rows[0]["file"] == new


def test_an_uncompressed_snapshot_is_stored_verified_and_restored_like_a_compressed_one(stash_server_factory, tmp_path):
    """`--no-compress` (faster nights on a slow CPU): the pages are stored in zlib's
    stored blocks, so verify and stash-restore read them as they read the rest."""
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    plain_dest, packed_dest = tmp_path / "plain", tmp_path / "packed"
    plain = download(server, plain_dest, "--no-compress")
    expected = state_of(server)
    packed = download(server, packed_dest)
    added = {
        name: Store(dest).header(name).snapshot.added
        for dest, name in ((plain_dest, plain["file"]), (packed_dest, packed["file"]))
    }
    database = database_of(Store(plain_dest), plain["file"])
    unique = len({database[at : at + 4096] for at in range(0, len(database), 4096)}) * 4096  # each page once
    assert unique < added[plain["file"]] < unique * 1.02 + 4096  # stored blocks: a few bytes a frame, and the index
    assert added[packed["file"]] < unique / 2  # the default compresses (zlib -1)
    verified = cli(server, plain_dest, "verify", "--read-data")
    assert verified.returncode == 0, verified.stderr
    assert restore_and_read(server, plain_dest, plain["file"]) == expected


# --- private by default -----------------------------------------------------------------------


def as_nobody(*command):
    """Run a command as another local user (nobody), as a second user of the machine would."""
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
    )


def test_a_download_makes_an_archive_no_other_local_user_can_read(stash_server_factory):
    """Every file and folder a real download creates is its owner's alone (0600, 0700,
    as restic and borg): another user can neither zcat a snapshot nor flock the lock.
    An archive an older version left open (0755, 0644) is closed by the next run."""
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    shared = Path(tempfile.mkdtemp(prefix="stash-backup-modes-", dir="/tmp"))
    try:
        shared.chmod(0o755)  # a home or /srv folder: other users may pass through it
        (shared / "public").write_text("readable by all")
        (shared / "public").chmod(0o644)
        assert as_nobody("cat", str(shared / "public")).returncode == 0  # the second user is real
        dest = shared / "archive"
        first = download(server, dest)
        made = [dest, *dest.rglob("*")]
        modes = {str(p.relative_to(shared)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in made}
        assert {
            "archive/blobs",
            "archive/snapshots",
            "archive/backups",
            "archive/status.json",
            "archive/.stash-backup.lock",
            f"archive/snapshots/{first['file']}.pages",
            "archive/packs",
        } <= set(modes)
        assert {m for p, m in modes.items() if (shared / p).is_dir()} == {"0o700"}, modes
        assert {m for p, m in modes.items() if not (shared / p).is_dir()} == {"0o600"}, modes
        snapshot = next(dest.glob("packs/*/*.pack"))
        read = as_nobody("cat", str(snapshot))
        assert read.returncode != 0 and "Permission denied" in read.stderr, read
        held = as_nobody("flock", "-n", str(dest / ".stash-backup.lock"), "true")
        assert held.returncode != 0 and "Permission denied" in held.stderr, held
        # What an older version left: the folders 0755, the files 0644.
        for path in made:
            path.chmod(0o755 if path.is_dir() else 0o644)
        assert as_nobody("cat", str(snapshot)).returncode == 0
        verified = run_cli("verify", "--dest", str(dest))
        assert verified.returncode == 0, verified.stderr
        assert oct(stat.S_IMODE(dest.stat().st_mode)) == "0o700"
        assert as_nobody("cat", str(snapshot)).returncode != 0
    finally:
        shutil.rmtree(shared)
