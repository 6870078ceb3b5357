"""Off-site copies against real servers: SeaweedFS's S3, `rclone serve s3`, and
OpenSSH's SFTP. Push sends only what the remote lacks, verify finds what is missing or
damaged there, pull brings one backup back verified, retention and collection on the
remote keep exactly what the kept backups need."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest

from stash_backup_plugin.core.archive import Archive
from stash_backup_plugin.core.errors import VerificationError
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.core.retention import Policy
from stash_backup_plugin.core.stored import ReadData, check_blobs, check_snapshot
from stash_backup_plugin.jobs import offsite
from stash_backup_plugin.offsite.rclone import Rclone
from stash_backup_plugin.offsite.remote import RemoteArchive

from tests.support.harness import run_cli
from tests.support.offsite_fixtures import bucket, local_archive, rclone_s3, seaweed, sshd  # noqa: F401
from tests.support.offsite_fixtures import write_config
from tests.support.offsite_servers import ACCESS_KEY, SECRET_KEY, CountingProxy, make_bucket


# Every test here starts a real server (SeaweedFS, sshd or rclone's): -m "not e2e" leaves them out.
pytestmark = pytest.mark.e2e


class Lines(Reporter):
    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)

    warning = error = info


def remote_for(kind: str, request, tmp_path):
    """(rclone config, remote spec) of a new empty place on a real server of `kind`."""
    name = "t-" + uuid.uuid4().hex[:10]
    if kind == "seaweedfs":
        config = write_config(tmp_path / "rclone.conf", seaweed=request.getfixturevalue("seaweed"))
        make_bucket(config, f"sw:{name}")
        return config, f"sw:{name}/stash"
    if kind == "rclone-s3":
        config = write_config(tmp_path / "rclone.conf", rclone_s3=request.getfixturevalue("rclone_s3"))
        make_bucket(config, f"rs3:{name}")
        return config, f"rs3:{name}/stash"
    server = request.getfixturevalue("sshd")
    config = write_config(tmp_path / "rclone.conf", sshd=server)
    return config, f"ssh:{server.home}/{name}"


def listed(config, spec, folder=""):
    remote = RemoteArchive(Rclone(config), spec)
    return remote.files(folder) if folder else remote.top_files()


@pytest.mark.parametrize("kind", ["seaweedfs", "rclone-s3", "sftp"])
def test_push_sends_only_what_the_remote_lacks_and_pull_brings_a_backup_back(kind, request, tmp_path, local_archive):
    config, spec = remote_for(kind, request, tmp_path)
    first = local_archive.backup()
    remote = RemoteArchive(Rclone(config), spec)
    archive = Archive(local_archive.folder)

    result = offsite.push(archive, remote, Lines())
    assert result.pushed == [first.name] and result.blobs_sent == first.blob_count == 4

    second = local_archive.backup(new_images=3)
    again = offsite.push(archive, remote, Lines())
    assert again.pushed == [second.name] and again.blobs_sent == 3  # only the night's new images
    # only the night's new images and new pages: the packs the first backup sent are not sent again
    assert again.bytes_sent < second.new_blob_bytes + second.snapshot.stored_size + second.snapshot.added + 4096
    assert set(listed(config, spec, "packs")) == local_packs(archive.store)
    assert offsite.push(archive, remote, Lines()).pushed == []

    summary = offsite.verify(tmp_path / "v", remote, ReadData(), Lines())
    assert summary.ok and summary.checked == 2, summary.failed

    target = Archive(tmp_path / "pulled")
    entry = offsite.pull(target, remote, first.name, "quick", Lines())
    assert entry.file == first.name and entry.verified_ok
    header = target.store.header(first.name)
    assert check_snapshot(target.store, header, "quick", Reporter()) == []
    assert check_blobs(target.store, [first.name], ReadData(), Reporter()) == {first.name: []}
    assert {b.checksum for b in target.store.stored_blobs()} == {c for c, _ in _blobs(target.store, first.name)}
    offsite.pull(target, remote, second.name, "quick", Lines())  # only the 3 blobs the first lacked come
    assert len(list(target.store.stored_blobs())) == 7
    assert local_packs(target.store) == local_packs(archive.store)
    assert check_snapshot(target.store, target.store.header(second.name), "quick", Reporter()) == []


def local_packs(store) -> set:
    return {p.relative_to(store.folder).as_posix() for p in store.folder.glob("packs/*/*")}


def named_packs(store, names) -> set:
    from stash_backup_plugin.core import page_store
    from stash_backup_plugin.offsite.manifest import pack_files

    return {
        relative
        for name in names
        for pack in page_store.read_page_list(store.page_list_path(name)).packs
        for relative in pack_files(pack)
    }


def _blobs(store, name):
    with store.blob_list(name) as blobs:
        return list(blobs)


def test_verify_finds_a_missing_and_a_damaged_blob_and_a_replaced_record(bucket, tmp_path, local_archive):
    config, name = bucket
    spec = f"sw:{name}/stash"
    local_archive.backup()
    local_archive.backup(new_images=2)
    remote = RemoteArchive(Rclone(config), spec)
    offsite.push(Archive(local_archive.folder), remote, Lines())
    blobs = sorted(k for k in listed(config, spec, "blobs"))
    rclone = Rclone(config)
    rclone.check(rclone.run(["deletefile", remote.path(blobs[0])]), "delete", "x")
    damaged = tmp_path / "damaged"
    damaged.write_bytes(b"not the image at all")
    size = listed(config, spec, "blobs")[blobs[1]]
    damaged.write_bytes(b"z" * size)  # same size, other content: only a hash finds it
    rclone.check(rclone.run(["copyto", str(damaged), remote.path(blobs[1])]), "upload", "x")
    report = Lines()
    summary = offsite.verify(tmp_path / "v", remote, None, report)
    assert not summary.ok and summary.checked == 2
    text = "\n".join(report.lines)
    assert "missing on the remote" in text and "damaged" in text  # S3 lists MD5s: no download needed

    deep = offsite.verify(tmp_path / "v", remote, ReadData.parse("1/1"), Lines())
    assert not deep.ok

    records = sorted(listed(config, spec, "backups"))
    rclone.check(rclone.run(["copyto", remote.path(records[1]), remote.path(records[0])]), "replace", "x")
    report = Lines()
    offsite.verify(tmp_path / "v", remote, None, report)
    assert "does not match the manifest" in "\n".join(report.lines)


def test_retention_on_the_remote_then_collection_frees_exactly_the_unreferenced(bucket, tmp_path, local_archive):
    config, name = bucket
    spec = f"sw:{name}/stash"
    remote = RemoteArchive(Rclone(config), spec)
    archive = Archive(local_archive.folder)
    headers = [local_archive.backup(new_images=2, day=day) for day in (1, 2, 3)]
    offsite.push(archive, remote, Lines())
    # the local archive drops the oldest; the remote keeps its own policy
    result = offsite.prune(archive, remote, Policy(last=2), False, Lines())
    assert result.forgotten == [headers[0].name]
    left = offsite.remote_backups(remote)
    assert [b.name for b in left] == [headers[2].name, headers[1].name]
    referenced = {c for h in headers[1:] for c, _ in _blobs(local_archive.store, h.name)}
    on_remote = {k.rsplit("/", 1)[1] for k in listed(config, spec, "blobs")}
    assert on_remote == referenced  # the first backup's 2 images that no one else has are gone
    assert set(listed(config, spec, "snapshots")) == {h.snapshot.file for h in headers[1:]}
    assert set(listed(config, spec, "packs")) == named_packs(local_archive.store, [h.name for h in headers[1:]])
    assert offsite.verify(tmp_path / "v", remote, None, Lines()).ok


def test_verify_finds_a_missing_and_a_damaged_pack(bucket, tmp_path, local_archive):
    config, name = bucket
    spec = f"sw:{name}/stash"
    first = local_archive.backup()
    remote = RemoteArchive(Rclone(config), spec)
    offsite.push(Archive(local_archive.folder), remote, Lines())
    packs = sorted(p for p in listed(config, spec, "packs") if p.endswith(".pack"))
    rclone = Rclone(config)
    damaged = tmp_path / "damaged"
    damaged.write_bytes(b"z" * listed(config, spec, "packs")[packs[0]])  # same size: only reading finds it
    rclone.check(rclone.run(["copyto", str(damaged), remote.path(packs[0])]), "upload", "x")
    assert offsite.verify(tmp_path / "v", remote, None, Lines()).ok  # present, with its size
    report = Lines()
    assert not offsite.verify(tmp_path / "v", remote, ReadData(), report).ok
    assert "damaged" in "\n".join(report.lines), report.lines
    with pytest.raises(VerificationError, match="arrived damaged"):
        offsite.pull(Archive(tmp_path / "pulled"), remote, first.name, "quick", Lines())
    assert not list((tmp_path / "pulled").glob("packs/*/*"))  # nothing damaged entered the archive
    rclone.check(rclone.run(["deletefile", remote.path(packs[0])]), "delete", "x")
    report = Lines()
    assert not offsite.verify(tmp_path / "v", remote, None, report).ok
    assert "pack file(s) of its database are missing" in "\n".join(report.lines), report.lines


def test_cli_push_list_verify_pull(bucket, tmp_path, local_archive):
    config, name = bucket
    local_archive.backup()
    env = {"RCLONE_CONFIG": str(config), "STASH_BACKUP_REMOTE": f"sw:{name}/stash"}
    push = run_cli("offsite", "push", "--dest", str(local_archive.folder), "--json", env=env)
    assert push.returncode == 0, push.stderr
    assert json.loads(push.stdout)["blobs_sent"] == 4
    listing = run_cli("offsite", "list", "--json", env=env)
    assert listing.returncode == 0 and len(json.loads(listing.stdout)) == 1
    check = run_cli("offsite", "verify", "--read-data-subset", "1/2", "--dest", str(tmp_path / "v"), env=env)
    assert check.returncode == 0 and "1 good, 0 bad" in check.stderr, check.stderr
    manifest = Rclone(config).cat(f"sw:{name}/stash/offsite-manifest.json").decode()
    assert SECRET_KEY not in manifest and ACCESS_KEY not in manifest and "sw:" not in manifest  # no remote named
    backup = json.loads(listing.stdout)[0]["name"]
    pull = run_cli("offsite", "pull", backup, "--to", str(tmp_path / "new-archive"), env=env)
    assert pull.returncode == 0, pull.stderr
    assert f"stash-restore {backup}" in pull.stderr


def test_a_listing_costs_a_few_requests_however_many_blobs_the_remote_holds(seaweed, bucket, tmp_path):
    """One page request per thousand objects, no request per blob (on S3 a modification
    time is a HEAD each): what the server receives for a nightly push stays the new data."""
    config, name = bucket
    folder = tmp_path / "many"
    for index in range(300):
        data = f"blob {index}".encode()
        checksum = hashlib.md5(data).hexdigest()
        path = folder / "blobs" / checksum[:2] / checksum[2:4] / checksum
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    Rclone(config).check(Rclone(config).run(["copy", str(folder), f"sw:{name}/stash"]), "seed", "x")
    proxy = CountingProxy(seaweed.ports["s3"])
    try:
        counted = tmp_path / "counted.conf"
        counted.write_text(seaweed.config("sw").replace(f":{seaweed.ports['s3']}", f":{proxy.port}"))
        remote = RemoteArchive(Rclone(counted), f"sw:{name}/stash")
        with remote.listing(tmp_path, hashes=True) as there:
            assert sum(1 for blob in there.blobs if blob.md5 == blob.checksum) == 300
    finally:
        proxy.close()
    assert proxy.received < 10_000, proxy.received  # a HEAD per blob would be ~200 kB


def _rclone_logging_its_runs(tmp_path):
    """An rclone that notes each start (its pid and arguments), then becomes rclone."""
    log = tmp_path / "rclone-runs.txt"
    wrapper = tmp_path / "rclone-logged"
    wrapper.write_text(f'#!/bin/sh\necho "$$ $*" >> {log}\nexec {shutil.which("rclone")} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


def _gone(pid: int, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] in ("Z", "X"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_a_nightly_push_starts_three_rclone_processes_and_leaves_none(bucket, tmp_path, local_archive):
    """The small steps (manifest, marker, records, the manifest's temp, move and read-back)
    go to one rclone daemon; only it, the listing and the copy are processes. The daemon
    ends with the push, even one killed with -9."""
    config, name = bucket
    spec = f"sw:{name}/stash"
    wrapper, log = _rclone_logging_its_runs(tmp_path)
    env = {"RCLONE_CONFIG": str(config), "STASH_BACKUP_REMOTE": spec, "STASH_BACKUP_RCLONE": str(wrapper)}
    local_archive.backup()
    assert run_cli("offsite", "push", "--dest", str(local_archive.folder), env=env).returncode == 0
    local_archive.backup(new_images=3)
    log.unlink()
    nightly = run_cli("offsite", "push", "--dest", str(local_archive.folder), env=env)
    assert nightly.returncode == 0 and "3 new blob(s)" in nightly.stderr, nightly.stderr
    runs = log.read_text().splitlines()
    assert len(runs) == 3 and " rcd " in runs[0], runs
    assert _gone(int(runs[0].split()[0]))
    local_archive.backup(new_images=1)
    log.unlink()
    killed = run_cli(
        "offsite",
        "push",
        "--dest",
        str(local_archive.folder),
        env={**env, "STASH_BACKUP_CRASH_AT": "offsite-data-sent"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    daemon = int(next(line for line in log.read_text().splitlines() if " rcd " in line).split()[0])
    assert _gone(daemon)  # the kernel ended it with us


def test_without_the_daemon_each_step_runs_as_its_own_process(bucket, tmp_path, local_archive):
    """Where no daemon can run (not Linux, an rclone too old to serve a socket) a push
    works the same, one process per step."""
    config, name = bucket
    wrapper, log = _rclone_logging_its_runs(tmp_path)
    env = {
        "RCLONE_CONFIG": str(config),
        "STASH_BACKUP_REMOTE": f"sw:{name}/stash",
        "STASH_BACKUP_RCLONE": str(wrapper),
        "STASH_BACKUP_RCLONE_RCD": "0",
    }
    local_archive.backup()
    local_archive.backup(new_images=2)
    push = run_cli("offsite", "push", "--dest", str(local_archive.folder), env=env)
    assert push.returncode == 0 and "Pushed 2 backup(s)" in push.stderr, push.stderr
    runs = log.read_text().splitlines()
    assert len(runs) > 3 and not any(" rcd " in run for run in runs), runs
    check = run_cli("offsite", "verify", "--dest", str(tmp_path / "v"), env=env)
    assert check.returncode == 0 and "2 good, 0 bad" in check.stderr, check.stderr


def test_push_refuses_a_backup_whose_pack_is_missing_locally(bucket, local_archive):
    config, name = bucket
    local_archive.backup()
    next(local_archive.folder.glob("packs/*/*.pack")).unlink()
    remote = RemoteArchive(Rclone(config), f"sw:{name}/stash")
    with pytest.raises(VerificationError, match="missing from the archive: nothing was pushed"):
        offsite.push(Archive(local_archive.folder), remote, Lines())
    assert not offsite.remote_backups(remote)
