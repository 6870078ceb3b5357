"""Bad input and faults, through the CLI against real servers: an unknown remote,
refused credentials, a missing bucket, a full remote, the server killed in the middle
of a push, a network stall; and kill -9 of our own run at every step of a push and a
prune. Each failure is one line that says what and what to do, a non-zero exit, nothing
half-written counted as a backup on the remote, and the next run completes the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from stash_backup_plugin.offsite.rclone import Rclone
from stash_backup_plugin.offsite.remote import RemoteArchive

from tests.support.harness import REPO, run_cli
from tests.support.offsite_fixtures import bucket, local_archive, seaweed, write_config  # noqa: F401
from tests.support.offsite_servers import SECRET_KEY, RcloneSftp, SeaweedFS, SmallDisk, make_bucket


# Every test here starts a real server (SeaweedFS, sshd or rclone's): -m "not e2e" leaves them out.
pytestmark = pytest.mark.e2e


def cli(config, spec, *args, env=None):
    return run_cli("offsite", *args, env={"RCLONE_CONFIG": str(config), "STASH_BACKUP_REMOTE": spec, **(env or {})})


def one_line_error(result, *words):
    output = result.stdout + result.stderr
    assert result.returncode not in (0, -9), output
    errors = [line for line in output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and output.rstrip("\n").splitlines()[-1] == errors[0], output
    assert "Traceback" not in output and SECRET_KEY not in output, output
    for word in words:
        assert word in output, output
    return output


def manifest_names(config, spec):
    return RemoteArchive(Rclone(config), spec).read_manifest().names()


def add_big_images(library, count: int, size: int) -> None:
    """Images of `size` random bytes: enough data that a push takes a while."""
    library.add_images(count, lambda index: os.urandom(size))


# --- bad input ----------------------------------------------------------------------------


def test_unknown_remote(bucket, local_archive):
    config, _ = bucket
    local_archive.backup()
    result = cli(config, "nosuchremote:stash", "push", "--dest", str(local_archive.folder))
    one_line_error(result, "unknown remote", "rclone config")


def test_wrong_credentials_are_refused_and_not_shown(seaweed, tmp_path, local_archive):
    config = tmp_path / "rclone.conf"
    config.write_text(seaweed.config("sw").replace(SECRET_KEY, "wrong-" + SECRET_KEY[::-1]))
    local_archive.backup()
    result = cli(config, "sw:anybucket/stash", "push", "--dest", str(local_archive.folder))
    output = one_line_error(result, "refused the credentials")
    assert SECRET_KEY[::-1] not in output


def test_missing_bucket_is_not_created(bucket, local_archive):
    config, _ = bucket
    local_archive.backup()
    missing = "no-such-bucket-" + uuid.uuid4().hex[:6]
    result = cli(config, f"sw:{missing}/stash", "push", "--dest", str(local_archive.folder))
    one_line_error(result, "bucket does not exist", "rclone mkdir")
    listing = subprocess.run(["rclone", "--config", str(config), "lsjson", "sw:"], capture_output=True, text=True)
    assert missing not in listing.stdout  # a typo never starts a new bucket


def test_a_full_remote_stops_the_push_and_the_next_push_completes(tmp_path, local_archive):
    disk = SmallDisk(tmp_path / "small-disk", "48k")
    server = RcloneSftp(tmp_path / "sftp", disk.folder).start()
    try:
        config = tmp_path / "rclone.conf"
        config.write_text(server.config("full"))
        local_archive.backup(new_images=40)
        first = cli(config, "full:stash", "push", "--dest", str(local_archive.folder))
        one_line_error(first, "remote is full", "push again")
        assert manifest_names(config, "full:stash") == []  # nothing half-written counted
        disk.grow("8m")
        again = cli(config, "full:stash", "push", "--dest", str(local_archive.folder))
        assert again.returncode == 0, again.stderr
        assert len(manifest_names(config, "full:stash")) == 1
        assert cli(config, "full:stash", "verify", "--read-data").returncode == 0
    finally:
        server.stop()
        disk.remove()


# --- the server dies or stalls in the middle --------------------------------------------------


@pytest.fixture
def fragile(tmp_path):
    """A SeaweedFS of this test's own, to kill or freeze."""
    server = SeaweedFS(tmp_path / "fragile").start()
    yield server
    with_pid = server.process
    if with_pid and with_pid.poll() is None:
        server.resume()
    server.stop()


def _push_in_background(config, spec, archive, env):
    full = dict(os.environ, RCLONE_CONFIG=str(config), STASH_BACKUP_REMOTE=spec, PYTHONPATH=str(REPO), **env)
    return subprocess.Popen(
        [sys.executable, "-m", "stash_backup_plugin", "offsite", "push", "--dest", str(archive)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )


def _wait_until_sending(config, spec, seconds=60):
    remote = RemoteArchive(Rclone(config), spec)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if remote.files("blobs"):
            return
        time.sleep(0.3)
    pytest.fail("the push never started sending")


@pytest.mark.parametrize("fault", ["killed", "stalled"])
def test_server_killed_or_stalled_mid_push_then_the_next_push_completes(fault, fragile, tmp_path, local_archive):
    config = write_config(tmp_path / "rclone.conf", seaweed=fragile)
    make_bucket(config, "sw:fragile")
    spec = "sw:fragile/stash"
    add_big_images(local_archive.library, 60, 100_000)
    local_archive.backup()
    slow = {
        "RCLONE_BWLIMIT": "600k",
        "RCLONE_TRANSFERS": "2",
        "RCLONE_TIMEOUT": "3s",
        "RCLONE_CONTIMEOUT": "3s",
        "RCLONE_LOW_LEVEL_RETRIES": "1",
        "STASH_BACKUP_STALL_SECONDS": "8",
    }
    push = _push_in_background(config, spec, local_archive.folder, slow)
    _wait_until_sending(config, spec)
    if fault == "killed":
        fragile.kill()
    else:
        fragile.pause()
    try:
        out, err = push.communicate(timeout=120)
    finally:
        if fault == "stalled":
            fragile.resume()
    result = subprocess.CompletedProcess(push.args, push.returncode, out, err)
    one_line_error(result, "cannot reach the remote" if fault == "killed" else "stopped answering", "run again")
    if fault == "killed":
        fragile.start()  # the same data folder and ports
    assert manifest_names(config, spec) == []  # the interrupted push counted nothing
    again = cli(config, spec, "push", "--dest", str(local_archive.folder))
    assert again.returncode == 0, again.stderr
    assert len(manifest_names(config, spec)) == 1
    check = cli(config, spec, "verify", "--read-data", "--dest", str(tmp_path / "v"))
    assert check.returncode == 0, check.stderr


# --- kill -9 of our own run at each step --------------------------------------------------------

PUSH_STEPS = [
    "offsite-data-sent",
    "offsite-records-sent",
    "offsite-temp-offsite-manifest.json",
    "offsite-manifest-written",
]


@pytest.mark.parametrize("step", PUSH_STEPS)
def test_push_killed_at_each_step_is_completed_by_the_next(step, bucket, tmp_path, local_archive):
    config, name = bucket
    spec = f"sw:{name}/stash"
    local_archive.backup()
    assert cli(config, spec, "push", "--dest", str(local_archive.folder)).returncode == 0
    local_archive.backup(new_images=3)
    killed = cli(config, spec, "push", "--dest", str(local_archive.folder), env={"STASH_BACKUP_CRASH_AT": step})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    counted = manifest_names(config, spec)
    assert len(counted) == (2 if step == "offsite-manifest-written" else 1)  # the new one only once complete
    again = cli(config, spec, "push", "--dest", str(local_archive.folder))
    assert again.returncode == 0, again.stderr
    assert "interrupted push" in again.stderr  # our dead run's marker is cleared
    assert len(manifest_names(config, spec)) == 2
    check = cli(config, spec, "verify", "--dest", str(tmp_path / "v"))
    assert check.returncode == 0 and "2 good, 0 bad" in check.stderr, check.stderr


PRUNE_STEPS = ["offsite-temp-offsite-manifest.json", "offsite-forgotten", "offsite-collected"]


@pytest.mark.parametrize("step", PRUNE_STEPS)
def test_prune_killed_at_each_step_is_completed_by_the_next(step, bucket, tmp_path, local_archive):
    config, name = bucket
    spec = f"sw:{name}/stash"
    for day in (1, 2, 3):
        local_archive.backup(new_images=2, day=day)
    assert cli(config, spec, "push", "--dest", str(local_archive.folder)).returncode == 0
    killed = cli(
        config,
        spec,
        "prune",
        "--keep-last",
        "1",
        "--dest",
        str(local_archive.folder),
        env={"STASH_BACKUP_CRASH_AT": step},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    kept = manifest_names(config, spec)
    assert len(kept) in (1, 3)  # the manifest changes whole or not at all
    check = cli(config, spec, "verify", "--dest", str(tmp_path / "v"))
    assert check.returncode == 0, check.stderr  # whatever it lists is complete
    again = cli(config, spec, "prune", "--keep-last", "1", "--dest", str(local_archive.folder))
    assert again.returncode == 0, again.stderr
    remote = RemoteArchive(Rclone(config), spec)
    assert len(remote.read_manifest().backups) == 1
    newest = local_archive.store.record_names()[-1]
    with local_archive.store.blob_list(newest) as blobs:
        wanted = {f"blobs/{c[:2]}/{c[2:4]}/{c}" for c, _ in blobs}
    assert set(remote.files("blobs")) == wanted  # collected exactly the unreferenced, temps included
    assert [k for k in remote.top_files() if "tmp" in k] == [] and remote.files("pending") == {}
    assert set(remote.files("backups")) == {f"backups/{newest}.record"}
