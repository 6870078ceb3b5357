"""The jobs against a StashAPI of our own: the three calls they make, served from local
files. No HTTP, no fake server: what these tests prove is the jobs' own logic (which
backup they ask for, what they keep, what they refuse); the real server is the e2e tests'."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Optional

import pytest

from stash_backup_plugin import jobs
from stash_backup_plugin.core.archive import Archive
from stash_backup_plugin.core.atomic import temp_path_in
from stash_backup_plugin.core.errors import DownloadError, LinkExpiredError
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.server.api import Downloaded, ServerInfo

from .stashlike import make_database, make_full_backup, vacuum_copy, write_blobs


class LocalStash:
    """Serves backups made from a local database; `expire` makes the first N links dead."""

    def __init__(self, root: Path, blobs_storage: str = "DATABASE", supports_include_blobs: bool = True,
                 expire: int = 0):
        self.root, self.expire, self.requests = root, expire, []
        root.mkdir(parents=True)
        self.database = root / "stash-go.sqlite"
        self.images = make_database(self.database, schema=85, blobs_in_db=blobs_storage == "DATABASE")
        self.blobs = root / "blobs"
        write_blobs(self.blobs, self.images)
        self.info = ServerInfo("v0.31.1", 85, str(self.database), str(root / "backups"), str(self.blobs),
                               blobs_storage, supports_include_blobs)
        self.count = 0

    def server_info(self) -> ServerInfo:
        return self.info

    def backup_database(self, download: bool, include_blobs: Optional[bool] = None) -> Optional[str]:
        self.requests.append((download, include_blobs))
        self.count += 1
        name = f"stash-go.sqlite.85.20260101_00000{self.count}"
        made = vacuum_copy(self.database, self.root / f"made-{self.count}")
        if include_blobs:
            name += ".zip"
            made = make_full_backup(self.root / f"made-{self.count}.zip", made, self.images)
        (self.root / "served").mkdir(exist_ok=True)
        shutil.move(made, self.root / "served" / name)
        return f"http://elsewhere.example/downloads/{self.count}/{name}"

    def fetch_backup(self, link: str, folder: Path, final_name: str, progress=None) -> Downloaded:
        if self.expire:
            self.expire -= 1
            raise LinkExpiredError("the link expired")
        source = self.root / "served" / final_name
        temp = temp_path_in(folder, final_name)
        shutil.copyfile(source, temp)
        data = temp.read_bytes()
        return Downloaded(temp, len(data), hashlib.sha256(data).hexdigest(), 0)


def test_a_database_only_install_gets_the_plain_database_verified_into_the_archive(tmp_path):
    stash = LocalStash(tmp_path / "stash")
    outcome = jobs.download_to_archive(stash, Archive(tmp_path / "archive"), jobs.DownloadOptions(), Reporter())
    assert outcome.entry.kind == "sqlite" and outcome.entry.verified_ok and outcome.entry.source == "database"
    assert stash.requests == [(True, False)]  # includeBlobs asked off: there are no filesystem blobs


def test_filesystem_blobs_on_v031_take_the_servers_zip(tmp_path):
    stash = LocalStash(tmp_path / "stash", blobs_storage="FILESYSTEM")
    outcome = jobs.download_to_archive(stash, Archive(tmp_path / "archive"), jobs.DownloadOptions(), Reporter())
    assert outcome.entry.kind == "zip" and outcome.entry.blob_count == len(stash.images)
    assert stash.requests == [(True, True)]


def test_an_older_server_gets_a_zip_we_pack_from_its_blobs_folder(tmp_path):
    stash = LocalStash(tmp_path / "stash", blobs_storage="FILESYSTEM", supports_include_blobs=False)
    outcome = jobs.download_to_archive(stash, Archive(tmp_path / "archive"), jobs.DownloadOptions(), Reporter())
    assert outcome.entry.source == "plugin-zip" and outcome.entry.blob_count == len(stash.images)
    assert stash.requests == [(True, None)]  # never the field an old server would reject


def test_an_expired_link_asks_for_a_fresh_backup_a_bounded_number_of_times(tmp_path):
    stash = LocalStash(tmp_path / "stash", expire=1)
    outcome = jobs.download_to_archive(stash, Archive(tmp_path / "archive"), jobs.DownloadOptions(), Reporter())
    assert outcome.entry and len(stash.requests) == 2
    stash = LocalStash(tmp_path / "stash2", expire=jobs.FRESH_BACKUP_ATTEMPTS)
    with pytest.raises(DownloadError, match="gave up"):
        jobs.download_to_archive(stash, Archive(tmp_path / "archive2"), jobs.DownloadOptions(), Reporter())
    assert len(stash.requests) == jobs.FRESH_BACKUP_ATTEMPTS
    assert Archive(tmp_path / "archive2").entries() == []
    assert not [p for p in (tmp_path / "archive2").iterdir() if p.name.startswith("stash-go")]


def test_if_older_than_skips_without_asking_stash(tmp_path):
    from stash_backup_plugin.core.retention import parse_duration
    stash = LocalStash(tmp_path / "stash")
    archive = Archive(tmp_path / "archive")
    jobs.download_to_archive(stash, archive, jobs.DownloadOptions(), Reporter())
    outcome = jobs.download_to_archive(stash, archive, jobs.DownloadOptions(if_older_than=parse_duration("1d")),
                                       Reporter())
    assert outcome.entry is None and "younger" in outcome.skipped_reason and len(stash.requests) == 1
