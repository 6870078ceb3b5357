"""The contract of the off-site transport, run against every kind of remote the tests
start (as Litestream runs one ReplicaClient suite against each backend): a local
folder, SeaweedFS's S3, `rclone serve s3`, OpenSSH's SFTP, and rclone crypt over S3.
`RemoteArchive` (offsite/remote.py) is the one interface the off-site jobs use; rclone
does the talking, so what differs between kinds is what rclone and the server do. Each
promise the jobs rely on is checked here once per kind:
- a new place is empty and holds no manifest;
- a small file appears whole under its name (uploaded under a temp name, moved), reads
  back the same, and leaves no temp behind;
- the manifest is replaced and reads back as written;
- files sent by a listing are listed (blobs sorted by checksum, with their sizes; with
  their MD5s where the backend lists them cheaply), fetched back byte for byte, and
  deleted by a listing;
- the lock marks the place while held and leaves nothing once released."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from stash_backup_plugin.offsite import manifest as manifests
from stash_backup_plugin.offsite.rclone import Rclone
from stash_backup_plugin.offsite.remote import RemoteArchive

from tests.support.offsite_fixtures import rclone_s3, seaweed, sshd, write_config  # noqa: F401
from tests.support.offsite_servers import make_bucket

pytestmark = pytest.mark.e2e

KINDS = ["local", "seaweedfs", "rclone-s3", "sftp", "crypt"]


def place(kind: str, request, tmp_path: Path) -> RemoteArchive:
    """A new, empty place on a real remote of `kind`."""
    name = "c-" + uuid.uuid4().hex[:10]
    config = tmp_path / "rclone.conf"
    if kind == "local":
        folder = tmp_path / "remote"
        folder.mkdir()
        return RemoteArchive(Rclone(write_config(config)), str(folder))
    if kind in ("seaweedfs", "crypt"):
        write_config(config, seaweed=request.getfixturevalue("seaweed"), crypt_bucket=name if kind == "crypt" else "")
        make_bucket(config, f"sw:{name}")
        return RemoteArchive(Rclone(config), "secret:stash" if kind == "crypt" else f"sw:{name}/stash")
    if kind == "rclone-s3":
        write_config(config, rclone_s3=request.getfixturevalue("rclone_s3"))
        make_bucket(config, f"rs3:{name}")
        return RemoteArchive(Rclone(config), f"rs3:{name}/stash")
    server = request.getfixturevalue("sshd")
    write_config(config, sshd=server)
    return RemoteArchive(Rclone(config), f"ssh:{server.home}/{name}")


@pytest.fixture(params=KINDS)
def remote(request, tmp_path) -> RemoteArchive:
    archive = place(request.param, request, tmp_path)
    with archive.session():
        yield archive


@pytest.fixture
def scratch(tmp_path) -> Path:
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


def everything(remote: RemoteArchive, scratch: Path) -> dict[str, int]:
    with remote.listing(scratch) as listing:
        blobs = {f"blobs/{b.checksum[:2]}/{b.checksum[2:4]}/{b.checksum}": b.size for b in listing.blobs}
        return {**blobs, **listing.files, **{stray: -1 for stray in listing.strays}}


def test_a_new_place_is_empty_and_holds_no_manifest(remote, scratch):
    assert remote.top_files() == {}
    assert manifests.encode(remote.read_manifest()) == manifests.encode(manifests.Manifest())
    assert everything(remote, scratch) == {}


def test_a_small_file_appears_whole_under_its_name_and_leaves_no_temp(remote, scratch, tmp_path):
    data = os.urandom(3000)
    remote.put_bytes("backups/one.record", data, scratch)
    assert remote.files("backups") == {"backups/one.record": 3000}
    remote.fetch_file("backups/one.record", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    assert everything(remote, scratch) == {"backups/one.record": 3000}
    assert list(scratch.iterdir()) == []


def test_the_manifest_is_replaced_and_reads_back_as_written(remote, scratch):
    first = manifests.Manifest()
    remote.write_manifest(first, scratch)
    assert manifests.encode(remote.read_manifest()) == manifests.encode(first)
    remote.write_manifest(first, scratch)  # replacing it is the same operation
    assert set(remote.top_files()) == {manifests.NAME}


def test_files_sent_by_a_listing_are_listed_fetched_and_deleted(remote, scratch, tmp_path):
    local = tmp_path / "local"
    sent = {}
    for size in (1, 700, 70_000, 1_000_000, 5):
        data = os.urandom(size)
        checksum = hashlib.md5(data).hexdigest()
        path = local / "blobs" / checksum[:2] / checksum[2:4] / checksum
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sent[checksum] = size
    (local / "snapshots").mkdir()
    (local / "snapshots" / "one.gz").write_bytes(b"\x1f\x8b" + os.urandom(100))
    names = [str(p.relative_to(local)) for p in sorted(local.rglob("*")) if p.is_file()]
    listing = tmp_path / "listing"
    listing.write_text("".join(n + "\n" for n in names))

    remote.send(local, listing, "upload to")
    with remote.listing(scratch, hashes=remote.has_cheap_md5()) as found:
        blobs = list(found.blobs)
        others, strays = found.files, found.strays
    assert [b.checksum for b in blobs] == sorted(sent)
    assert {b.checksum: b.size for b in blobs} == sent
    if remote.has_cheap_md5():
        assert all(b.md5 == b.checksum for b in blobs)
    assert others == {"snapshots/one.gz": 102} and strays == []

    back = tmp_path / "back"
    remote.fetch(listing, back, "download from")
    assert {n: (back / n).read_bytes() for n in names} == {n: (local / n).read_bytes() for n in names}

    remote.delete(listing)
    assert everything(remote, scratch) == {}


def test_the_lock_marks_the_place_while_held_and_leaves_nothing(remote, scratch):
    lines: list[str] = []
    with remote.held("push", scratch, lines.append):
        markers = remote.markers()
        assert len(markers) == 1 and markers[0].action == "push" and markers[0].pid == os.getpid()
    assert remote.markers() == [] and remote.pending()[1] == {}
