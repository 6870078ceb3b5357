"""pytest fixtures for the off-site tests: one of each real server per session, an
rclone config naming them, a fresh bucket or folder per test, and a local archive with
stored backups. Imported by the test modules that use them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from stash_backup_plugin.core.store import Store
from tests.support.offsite_servers import RcloneS3, SeaweedFS, Sshd, make_bucket, obscure
from tests.unit.test_stored import Library

CRYPT_PASSWORD = "crypt-pass-Wq8#longer"
CRYPT_SALT = "crypt-salt-7Hk2"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory):
    server = RcloneS3(tmp_path_factory.mktemp("rclone-s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


def write_config(path: Path, seaweed=None, rclone_s3=None, sshd=None, crypt_bucket: str = "") -> Path:
    text = ""
    if seaweed:
        text += seaweed.config("sw")
    if rclone_s3:
        text += rclone_s3.config("rs3")
    if sshd:
        text += sshd.config("ssh")
    if crypt_bucket:
        text += (
            f"[secret]\ntype = crypt\nremote = sw:{crypt_bucket}/encrypted\n"
            f"password = {obscure(CRYPT_PASSWORD)}\npassword2 = {obscure(CRYPT_SALT)}\n\n"
        )
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def bucket(seaweed, tmp_path) -> tuple[Path, str]:
    """(rclone config, a new empty bucket on SeaweedFS)."""
    name = "t-" + uuid.uuid4().hex[:12]
    config = write_config(tmp_path / "rclone.conf", seaweed=seaweed)
    make_bucket(config, f"sw:{name}")
    return config, name


class LocalArchive:
    """A Stash-like library and an archive of stored backups made from it."""

    def __init__(self, root: Path):
        self.root = root
        self.library = Library(root / "library")
        self.folder = root / "archive"
        self.store = Store(self.folder)
        self.work = root / "work"
        self.work.mkdir()
        self.count = 0

    def backup(self, new_images: int = 0, day: int = 0):
        if new_images:
            self.library.add_images(new_images)
        self.count += 1
        name = f"stash-go.sqlite.85.202611{day or self.count:02d}_0300{self.count:02d}"
        return self.library.backup(self.store, self.work, name)


@pytest.fixture
def local_archive(tmp_path) -> LocalArchive:
    return LocalArchive(tmp_path / "local")
