"""The archive's store against real Stash servers, on both pinned versions: each night
stores only the new blobs (counted on disk), prune collects what no kept backup
refers to, and kill -9 at every named step of a backup or a prune never leaves a
kept backup with a missing blob. Restores of stored backups: test_e2e_restore.py."""
import gzip
import hashlib
import json
import signal
import time

import pytest

from stash_backup_plugin.core.store import CRASH_ENV
from tests.stash_server.build import NEW_VERSION
from tests.stash_server.server import data_url, png_bytes, seed_content

from .conftest import run_cli

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
    return {p.name: p.read_bytes() for p in (dest / "blobs").glob("??/??/*")}


def server_blobs(server) -> dict:
    return {p.name: p.read_bytes() for p in server.blobs.glob("??/??/*")}


def record_blobs(dest, name) -> list:
    with gzip.open(dest / "backups" / f"{name}.record", "rt") as text:
        lines = text.read().splitlines()
    assert lines[-1].startswith("end ")
    return [line.split()[0] for line in lines[1:-1]]


def new_images(server, count: int, seed: int) -> list:
    """New performers with new images, as a night of use adds them."""
    made = []
    for index in range(count):
        image = png_bytes(seed + index)
        server.graphql("mutation($i: PerformerCreateInput!) { performerCreate(input: $i) { id } }",
                       {"i": {"name": f"night-{seed}-{index}", "image": data_url(image)}})
        made.append(hashlib.md5(image).hexdigest())
    return made


def test_nightly_cycle_stores_only_new_blobs(stash_server_factory, stash_version, tmp_path):
    server = stash_server_factory(stash_version, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    first = download(server, dest)
    assert first["kind"] == "stored" and first["source"] == "filesystem" and first["blob_count"] == 6
    assert archive_blobs(dest) == server_blobs(server)  # each blob once, byte for byte
    added = new_images(server, 2, 500)
    second = download(server, dest)
    assert second["blob_count"] == 8 and len(archive_blobs(dest)) == 8  # only the 2 new ones were added
    assert set(record_blobs(dest, second["file"])) == set(server_blobs(server))
    assert set(added) <= set(archive_blobs(dest)) and not set(added) & set(record_blobs(dest, first["file"]))
    # the compressed snapshot is the very database Stash made
    snapshot = dest / "snapshots" / f"{second['file']}.gz"
    assert hashlib.sha256(gzip.decompress(snapshot.read_bytes())).hexdigest() == second["sha256"]
    assert snapshot.stat().st_size < second["size"] / 3
    rows = listing(dest)
    assert [r["file"] for r in rows] == [second["file"], first["file"]]
    assert rows[0]["new_bytes"] < rows[1]["new_bytes"]  # the second added its snapshot and 2 small images
    text = run_cli("list", "--dest", str(dest)).stdout
    assert "archive total" in text and "8 blob(s)" in text
    verify = run_cli("verify", "--read-data", "--dest", str(dest))
    assert verify.returncode == 0 and "2 good, 0 bad" in verify.stderr, verify.stderr
    assert not [p for p in dest.rglob("*") if "tmp" in p.name]


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
    assert set(archive_blobs(dest)) == set(server_blobs(server)) - {orphan.name}
    assert not list(dest.glob("*.zip")) and not [p for p in dest.rglob("*") if "tmp" in p.name]


def test_prune_collects_only_what_no_kept_backup_refers_to(stash_server_factory, tmp_path):
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    created = seed_content(server)
    dest = tmp_path / "archive"
    first = download(server, dest)
    old_image = hashlib.md5(created["performers"][0]["image"]).hexdigest()
    server.graphql("mutation($i: PerformerUpdateInput!) { performerUpdate(input: $i) { id } }",
                   {"i": {"id": created["performers"][0]["id"], "image": data_url(png_bytes(4242))}})
    second = download(server, dest)
    assert old_image in archive_blobs(dest) and old_image not in record_blobs(dest, second["file"])
    dry = cli(server, dest, "prune", "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0 and "would free" in dry.stderr and "1 blob(s), 1 database snapshot(s)" in dry.stderr
    assert old_image in archive_blobs(dest) and len(listing(dest)) == 2
    pruned = cli(server, dest, "prune", "--keep-last", "1")
    assert pruned.returncode == 0 and "freed" in pruned.stderr, pruned.stderr
    assert [r["file"] for r in listing(dest)] == [second["file"]]
    assert set(archive_blobs(dest)) == set(record_blobs(dest, second["file"])) and old_image not in archive_blobs(dest)
    assert not (dest / "snapshots" / f"{first['file']}.gz").exists()
    assert run_cli("verify", "--read-data", "--dest", str(dest)).returncode == 0


# --- kill -9 at every named step ------------------------------------------------------------

BACKUP_STEPS = ["blobs-batch", "snapshot-stored", "record-written"]
PRUNE_STEPS = ["forgotten", "gc-snapshots", "gc-batch"]


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
    assert not list((dest / "incoming").iterdir()) and not list((dest / "pending").iterdir())
    pruned = cli(server, dest, "prune", "--keep-last", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert set(archive_blobs(dest)) == set(record_blobs(dest, again["file"]))  # nothing orphaned stays
    assert_every_kept_backup_whole(dest)


@pytest.mark.parametrize("step", PRUNE_STEPS)
def test_kill_during_a_prune(stash_server_factory, tmp_path, step):
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    created = seed_content(server)
    dest = tmp_path / "archive"
    download(server, dest)
    for index, performer in enumerate(created["performers"]):  # three images only the first backup has
        server.graphql("mutation($i: PerformerUpdateInput!) { performerUpdate(input: $i) { id } }",
                       {"i": {"id": performer["id"], "image": data_url(png_bytes(7000 + index))}})
    kept = download(server, dest)
    crashed = cli(server, dest, "prune", "--keep-last", "1", env={CRASH_ENV: step})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert [r["file"] for r in listing(dest)] == [kept["file"]]  # forgotten first, so listed once
    assert set(record_blobs(dest, kept["file"])) <= set(archive_blobs(dest))
    assert_every_kept_backup_whole(dest)
    again = cli(server, dest, "prune", "--keep-last", "1")
    assert again.returncode == 0, again.stderr
    assert set(archive_blobs(dest)) == set(record_blobs(dest, kept["file"]))
    assert sorted(p.name for p in (dest / "snapshots").iterdir()) == [f"{kept['file']}.gz"]
