"""When the single-use link has expired, the job asks Stash for a fresh backup
(a local server plays Stash: a real one cannot be made to expire a link on demand)."""

import pytest

from stash_backup_plugin.jobs.download import DownloadOptions, download_to_archive
from stash_backup_plugin.core.archive import Archive
from stash_backup_plugin.server.connection import Connection
from stash_backup_plugin.core.errors import DownloadError, UsageError
from stash_backup_plugin.server.graphql_client import StashClient
from stash_backup_plugin.core.reporting import Reporter

from tests.support.fault_server import FaultServer
from tests.support.stashlike import make_database, vacuum_copy


@pytest.fixture
def backup_bytes(tmp_path):
    live = tmp_path / "live.sqlite"
    make_database(live, blobs_in_db=True)
    return vacuum_copy(live, tmp_path / "copy.sqlite").read_bytes()


def fake_stash(server, names):
    def graphql(body):
        if "backupDatabase" in body["query"]:
            name = names.pop(0)
            return {"data": {"backupDatabase": f"http://public.example/downloads/{len(names)}/{name}"}}
        return {
            "data": {
                "version": {"version": "v0.31.1"},
                "systemStatus": {"databaseSchema": 75, "databasePath": "/s/stash-go.sqlite", "status": "OK"},
                "configuration": {
                    "general": {
                        "backupDirectoryPath": "",
                        "blobsPath": "",
                        "blobsStorage": "DATABASE",
                        "databasePath": "/s/stash-go.sqlite",
                    }
                },
                "backupInput": {"inputFields": [{"name": "download"}, {"name": "includeBlobs"}]},
            }
        }

    server.graphql = graphql


def test_expired_link_leads_to_a_fresh_backup(tmp_path, backup_bytes):
    with FaultServer(backup_bytes) as server:
        fake_stash(server, ["stash-go.sqlite.75.20260101_000000", "stash-go.sqlite.75.20260101_000001"])
        gets = []
        server.script = lambda n, h: gets.append(h.path) or (server.status(h, 404) if len(gets) == 1 else None)
        with StashClient(Connection(server.url, api_key="k")) as client:
            outcome = download_to_archive(client, Archive(tmp_path / "a"), DownloadOptions(), Reporter())
        assert outcome.entry.file == "stash-go.sqlite.75.20260101_000001"
        assert [r["headers"].get("ApiKey") for r in server.requests] == ["k"] * len(server.requests)
        assert all(r["path"].startswith(("/graphql", "/downloads/")) for r in server.requests)


def test_gives_up_after_bounded_fresh_backups(tmp_path, backup_bytes):
    with FaultServer(backup_bytes) as server:
        fake_stash(server, [f"stash-go.sqlite.75.20260101_00000{i}" for i in range(5)])
        server.script = lambda n, h: server.status(h, 404)
        with StashClient(Connection(server.url)) as client:
            with pytest.raises(DownloadError, match="gave up after 3 fresh backups"):
                download_to_archive(client, Archive(tmp_path / "a"), DownloadOptions(), Reporter())
    assert [p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".stash-backup.lock")] == []


def test_a_link_that_is_not_a_backup_name_is_refused(tmp_path, backup_bytes):
    with FaultServer(backup_bytes) as server:
        fake_stash(server, ["evil.sh"])
        with StashClient(Connection(server.url)) as client:
            with pytest.raises(UsageError, match=r"^'evil.sh' is not a Stash backup name"):
                download_to_archive(client, Archive(tmp_path / "a"), DownloadOptions(), Reporter())
        assert not [r for r in server.requests if r["path"].startswith("/downloads/")]  # never fetched
    assert [p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".stash-backup.lock")] == []
