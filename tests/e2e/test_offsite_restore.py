"""The lost server, end to end: an archive pushed to S3 (SeaweedFS), plainly or through
an rclone crypt remote; a new machine pulls one backup into a new archive and
stash-restore puts the database and every image back. Through crypt, nothing on the S3
server is readable: no name, no image byte; with the wrong password nothing comes back."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest

from stash_backup_plugin.core import stored
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.core.store import Store

from tests.support.harness import run_cli, run_restore
from tests.support.offsite_fixtures import CRYPT_PASSWORD, seaweed, write_config  # noqa: F401
from tests.support.offsite_servers import make_bucket, obscure
from tests.support.restore_fixtures import make_install

NAME = "stash-go.sqlite.75.20261126_180103"
BACKED_UP = ["performer-0", "performer-1", "performer-2"]


# Every test here starts a real server (SeaweedFS, sshd or rclone's): -m "not e2e" leaves them out.
pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("through", ["s3", "crypt"])
def test_lost_server_new_machine_pulls_and_restores(through, seaweed, tmp_path):
    bucket = "t-" + uuid.uuid4().hex[:10]
    config = write_config(tmp_path / "rclone.conf", seaweed=seaweed, crypt_bucket=bucket)
    make_bucket(config, f"sw:{bucket}")
    spec = "secret:stash" if through == "crypt" else f"sw:{bucket}/stash"
    env = {"RCLONE_CONFIG": str(config), "STASH_BACKUP_REMOTE": spec}

    old = make_install(tmp_path / "old-machine")
    old_archive = old.root / "stash-backup-archive"
    stored.import_backup_file(Store(old_archive), old.backup_zip, NAME, "quick", Reporter(), source="test")
    pushed = run_cli("offsite", "push", "--dest", str(old_archive), env=env)
    assert pushed.returncode == 0, pushed.stderr

    if through == "crypt":
        _assert_unreadable_on_the_server(config, bucket, old)

    # The old machine is gone. A new one: Stash installed again, its images lost.
    new = make_install(tmp_path / "new-machine")
    for path in sorted(new.blobs.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    archive = new.root / "stash-backup-archive"
    listing = run_cli("offsite", "list", "--json", env=env)
    assert [b["name"] for b in json.loads(listing.stdout)] == [NAME], listing.stderr
    pulled = run_cli("offsite", "pull", NAME, "--to", str(archive), env=env)
    assert pulled.returncode == 0, pulled.stderr
    # Only crypt authenticates what the remote holds: said once elsewhere, never there.
    assert pulled.stderr.count("is not an rclone crypt remote") == (0 if through == "crypt" else 1), pulled.stderr
    restored = run_restore(NAME, "--archive", str(archive), "--config", str(new.config), "--yes")
    assert restored.returncode == 0, restored.stderr
    assert new.names() == BACKED_UP
    for checksum, data in old.images.items():
        assert (new.blobs / checksum[:2] / checksum[2:4] / checksum).read_bytes() == data

    if through == "crypt":
        wrong = tmp_path / "wrong.conf"
        wrong.write_text(
            re.sub(r"(?m)^password = .*$", f"password = {obscure('not-the-password')}", config.read_text())
        )
        lost = run_cli(
            "offsite", "pull", NAME, "--to", str(tmp_path / "other"), env={**env, "RCLONE_CONFIG": str(wrong)}
        )
        assert lost.returncode != 0 and "holds no backup named" in lost.stderr, lost.stderr
        assert "not-the-password" not in lost.stderr and CRYPT_PASSWORD not in lost.stderr


def _assert_unreadable_on_the_server(config, bucket, old):
    """What the S3 server holds: encrypted names, encrypted bytes."""
    raw = subprocess.run(
        ["rclone", "--config", str(config), "lsjson", "-R", "--files-only", f"sw:{bucket}"],
        capture_output=True,
        text=True,
        check=True,
    )
    paths = [item["Path"] for item in json.loads(raw.stdout)]
    assert paths and all(p.startswith("encrypted/") for p in paths)
    text = "\n".join(paths)
    for plain in ["blobs", "snapshots", "backups", "offsite-manifest", NAME, *old.images]:
        assert plain not in text
    dump = subprocess.run(["rclone", "--config", str(config), "cat", f"sw:{bucket}"], capture_output=True, check=True)
    for data in old.images.values():
        assert data[:40] not in dump.stdout
    assert b'"backups"' not in dump.stdout and b"SQLite format 3" not in dump.stdout
