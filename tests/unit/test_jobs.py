"""The jobs against a StashAPI of our own: the three calls they make, served from local
files. No HTTP, no fake server: what these tests prove is the jobs' own logic (which
backup they ask for, what they keep, what they refuse); the real server is the e2e tests'."""

from __future__ import annotations

import hashlib
import sqlite3
import shutil
from pathlib import Path
from typing import Optional

import pytest

from stash_backup_plugin.jobs.download import DownloadOptions, FRESH_BACKUP_ATTEMPTS, download_to_archive
from stash_backup_plugin.core.archive import Archive
from stash_backup_plugin.core.atomic import temp_path_in
from stash_backup_plugin.core.errors import DownloadError, LinkExpiredError, ServerError
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.core.library import Fingerprint, of_database
from stash_backup_plugin.core.sqlite_check import open_unchanged
from stash_backup_plugin.server.api import Downloaded, ServerInfo

from tests.support.stashlike import make_database, make_full_backup, vacuum_copy, write_blobs


class LocalStash:
    """Serves backups made from a local database; `expire` makes the first N links dead."""

    def __init__(
        self, root: Path, blobs_storage: str = "DATABASE", supports_include_blobs: bool = True, expire: int = 0
    ):
        self.root, self.expire, self.requests = root, expire, []
        root.mkdir(parents=True)
        self.database = root / "stash-go.sqlite"
        self.images = make_database(self.database, schema=85, blobs_in_db=blobs_storage == "DATABASE")
        self.blobs = root / "blobs"
        write_blobs(self.blobs, self.images)
        self.info = ServerInfo(
            "v0.31.1",
            85,
            str(self.database),
            str(root / "backups"),
            str(self.blobs),
            blobs_storage,
            supports_include_blobs,
        )
        self.count = 0
        self.fingerprints = 0
        self.serves: Optional[Path] = None

    def server_info(self) -> ServerInfo:
        return self.info

    def library_fingerprint(self) -> Fingerprint:
        """What a server running on `serves` answers (by default the database it names)."""
        self.fingerprints += 1
        with open_unchanged(self.serves or self.database) as connection:
            return of_database(connection)

    def backup_database(self, download: bool, include_blobs: Optional[bool] = None) -> Optional[str]:
        self.requests.append((download, include_blobs))
        self.count += 1
        name = f"stash-go.sqlite.85.20260101_00000{self.count}"
        try:
            made = vacuum_copy(self.database, self.root / f"made-{self.count}")
        except sqlite3.DatabaseError as error:  # as Stash answers it: a GraphQL error
            raise ServerError(f"backupDatabase: vacuum failed: {error}") from None
        if include_blobs:
            name += ".zip"
            made = make_full_backup(self.root / f"made-{self.count}.zip", made, self.images)
        (self.root / "served").mkdir(exist_ok=True)
        shutil.move(made, self.root / "served" / name)
        return f"http://elsewhere.example/downloads/{self.count}/{name}"

    def fetch_backup(self, link: str, folder: Path, final_name: str, progress=None, durable: bool = True) -> Downloaded:
        if self.expire:
            self.expire -= 1
            raise LinkExpiredError("the link expired")
        source = self.root / "served" / final_name
        temp = temp_path_in(folder, final_name)
        shutil.copyfile(source, temp)
        data = temp.read_bytes()
        return Downloaded(temp, len(data), hashlib.sha256(data).hexdigest(), 0)


VIA_SERVER = DownloadOptions(live_copy=False)


def test_a_database_only_install_gets_the_plain_database_verified_into_the_archive(tmp_path):
    stash = LocalStash(tmp_path / "stash")
    outcome = download_to_archive(stash, Archive(tmp_path / "archive"), VIA_SERVER, Reporter())
    assert outcome.entry.kind == "stored" and outcome.entry.verified_ok and outcome.entry.source == "database"
    assert not outcome.entry.includes_blobs
    assert stash.requests == [(True, False)]  # includeBlobs asked off: there are no filesystem blobs


def test_filesystem_blobs_readable_here_come_from_stashs_folder_on_both_versions(tmp_path):
    """The plugin and a CLI on Stash's host: the plain database, the blobs straight from
    blobs_path, never a zip of everything."""
    for supports, asked in ((True, False), (False, None)):  # None: never the field an old server would reject
        stash = LocalStash(tmp_path / f"stash-{supports}", blobs_storage="FILESYSTEM", supports_include_blobs=supports)
        archive = Archive(tmp_path / f"archive-{supports}")
        outcome = download_to_archive(stash, archive, VIA_SERVER, Reporter())
        assert outcome.entry.source == "filesystem" and outcome.entry.blob_count == len(stash.images)
        assert stash.requests == [(True, asked)]
        assert {b.checksum for b in archive.store.stored_blobs()} == set(stash.images)


def test_blobs_not_readable_here_come_from_v031s_zip(tmp_path):
    stash = LocalStash(tmp_path / "stash", blobs_storage="FILESYSTEM")
    options = DownloadOptions(blobs_path=tmp_path / "not-here")
    outcome = download_to_archive(stash, Archive(tmp_path / "archive"), options, Reporter())
    assert outcome.entry.source == "server-zip" and outcome.entry.blob_count == len(stash.images)
    assert stash.requests == [(True, True)]


def test_blobs_not_readable_on_an_older_server_say_what_to_do(tmp_path):
    from stash_backup_plugin.core.errors import ConfigError

    stash = LocalStash(tmp_path / "stash", blobs_storage="FILESYSTEM", supports_include_blobs=False)
    with pytest.raises(ConfigError, match="--no-blobs"):
        download_to_archive(
            stash, Archive(tmp_path / "archive"), DownloadOptions(blobs_path=tmp_path / "x"), Reporter()
        )
    assert stash.requests == []


def test_extra_blob_paths_are_read_too(tmp_path):
    """v0.31's developer_options.extra_blob_paths: Stash reads blobs there as well."""
    import dataclasses

    stash = LocalStash(tmp_path / "stash", blobs_storage="FILESYSTEM")
    moved = sorted(stash.images)[0]
    extra = tmp_path / "extra-blobs"
    (extra / moved[:2] / moved[2:4]).mkdir(parents=True)
    (stash.blobs / moved[:2] / moved[2:4] / moved).rename(extra / moved[:2] / moved[2:4] / moved)
    stash.info = dataclasses.replace(stash.info, extra_blob_paths=(str(extra), str(tmp_path / "unreadable")))
    archive = Archive(tmp_path / "archive")
    outcome = download_to_archive(stash, archive, DownloadOptions(), Reporter())
    assert outcome.entry.blob_count == len(stash.images) and outcome.entry.blobs_not_included == 0
    assert archive.store.blob_size(moved) == len(stash.images[moved])


def test_an_expired_link_asks_for_a_fresh_backup_a_bounded_number_of_times(tmp_path):
    stash = LocalStash(tmp_path / "stash", expire=1)
    outcome = download_to_archive(stash, Archive(tmp_path / "archive"), VIA_SERVER, Reporter())
    assert outcome.entry and len(stash.requests) == 2
    stash = LocalStash(tmp_path / "stash2", expire=FRESH_BACKUP_ATTEMPTS)
    with pytest.raises(DownloadError, match="gave up"):
        download_to_archive(stash, Archive(tmp_path / "archive2"), VIA_SERVER, Reporter())
    assert len(stash.requests) == FRESH_BACKUP_ATTEMPTS
    assert Archive(tmp_path / "archive2").entries() == []
    assert not [p for p in (tmp_path / "archive2").rglob("*") if p.name.startswith("stash-go")]


def test_if_older_than_skips_without_asking_stash(tmp_path):
    from stash_backup_plugin.core.retention import parse_duration

    stash = LocalStash(tmp_path / "stash")
    archive = Archive(tmp_path / "archive")
    download_to_archive(stash, archive, DownloadOptions(), Reporter())
    asked = (len(stash.requests), stash.fingerprints)
    outcome = download_to_archive(stash, archive, DownloadOptions(if_older_than=parse_duration("1d")), Reporter())
    assert outcome.entry is None and "younger" in outcome.skipped_reason
    assert (len(stash.requests), stash.fingerprints) == asked


@pytest.mark.parametrize(
    "text, expected",
    [
        ("developer_options:\n  extra_blob_paths:\n  - /a\n  - '/b c'\n", ("/a", "/b c")),  # PyYAML's style
        (
            'developer_options:\n    extra_blob_paths:\n        - /a\n        - "/b"  # note\nport: 9999\n',
            ("/a", "/b"),
        ),  # Go's
        ("developer_options:\n  extra_blob_paths: [/a, '/b']\n", ("/a", "/b")),
        ("developer_options:\n  other: 1\nextra_blob_paths:\n- /not-in-the-section\n", ()),
        ("blobs_path: /blobs\n", ()),
        ("developer_options:\n  extra_blob_paths: *alias\n", ()),
    ],
)
def test_extra_blob_paths_are_read_from_config_yml_without_a_yaml_parser(text, expected):
    from stash_backup_plugin.server.graphql_client import extra_blob_paths_in

    assert extra_blob_paths_in(text) == expected
