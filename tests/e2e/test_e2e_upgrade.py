"""A real Stash upgrade, v0.28.1 -> v0.31.1 on the same config: Stash's own
pre-migration backup (its `migrate` mutation with a backup path) is adopted by the next
`download`: in the archive, tagged pre-upgrade <from>→<to>, verified; a prune that would
remove it keeps it; after a passing restore drill of a new-schema backup it is released."""

import json
import sqlite3
import time

import pytest
import requests

from tests.support.stash_server.build import NEW_VERSION, OLD_VERSION
from tests.support.stash_server.server import seed_content

from tests.support.harness import run_cli

pytestmark = pytest.mark.e2e


def schema_of(database):
    with sqlite3.connect(f"file:{database}?immutable=1", uri=True) as connection:
        return connection.execute("SELECT version FROM schema_migrations").fetchone()[0]


def start_needing_migration(server):
    """Start the new binary: it answers, and says NEEDS_MIGRATION until migrated."""

    def until_answering():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{server.url}/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            assert server.process.poll() is None, server.log_tail()
            time.sleep(0.2)
        raise AssertionError(server.log_tail())

    server._wait_until_ready = until_answering
    server.start()


def wait_for_status(server, wanted, deadline_s=300):
    deadline = time.monotonic() + deadline_s
    while (status := server.graphql("{ systemStatus { status } }")["systemStatus"]["status"]) != wanted:
        assert time.monotonic() < deadline, f"status {status}:\n{server.log_tail()}"
        time.sleep(0.5)


def entries(dest):
    listing = run_cli("list", "--dest", str(dest), "--json")
    assert listing.returncode == 0, listing.stderr
    return json.loads(listing.stdout)


def test_stash_upgrade_pre_migration_backup_adopted_kept_and_released_after_a_drill(
    stash_server_factory, stash_binaries, tmp_path
):
    server = stash_server_factory(OLD_VERSION, install_plugin=False)
    seed_content(server)
    server.stop()
    old_schema = schema_of(server.database)

    server.binary, server.version = stash_binaries[NEW_VERSION], NEW_VERSION
    start_needing_migration(server)
    wait_for_status(server, "NEEDS_MIGRATION")
    backup_name = f"stash-go.sqlite.{old_schema}.20261201_120000"
    server.graphql("mutation($p: String!) { migrate(input: {backupPath: $p}) }", {"p": backup_name})
    wait_for_status(server, "OK")
    new_schema = schema_of(server.database)
    assert new_schema > old_schema and (server.backups / backup_name).is_file()  # where Stash puts a bare name

    dest = tmp_path / "archive"
    download = run_cli("download", "--url", server.url, "--dest", str(dest))
    assert download.returncode == 0, download.stderr
    assert "Adopted Stash's pre-upgrade backup" in download.stderr, download.stderr
    adopted = [e for e in entries(dest) if e["pre_upgrade"]]
    assert len(adopted) == 1, entries(dest)
    assert adopted[0]["pre_upgrade"] == f"{old_schema}→{new_schema}" and adopted[0]["verified_ok"]
    assert adopted[0]["schema_version"] == old_schema and adopted[0]["source"] == "pre-upgrade"
    assert f"pre-upgrade {old_schema}→{new_schema}" in run_cli("list", "--dest", str(dest)).stdout
    assert (server.backups / backup_name).is_file()  # Stash's own file is only read

    again = run_cli("download", "--url", server.url, "--dest", str(dest))
    assert again.returncode == 0 and "Adopted" not in again.stderr, again.stderr  # once

    verify = run_cli("verify", "--dest", str(dest))
    assert verify.returncode == 0, verify.stderr
    kept = run_cli("prune", "--dest", str(dest), "--keep-last", "1")
    assert kept.returncode == 0, kept.stderr
    assert adopted[0]["file"] in {e["file"] for e in entries(dest)}, kept.stderr
    assert f"pre-upgrade {old_schema}→{new_schema}: until a verified backup of schema {new_schema}" in kept.stderr

    drill = run_cli("drill", "--dest", str(dest), "--stash-binary", str(stash_binaries[NEW_VERSION]))
    assert drill.returncode == 0, drill.stderr
    released = run_cli("prune", "--dest", str(dest), "--keep-last", "1")
    assert released.returncode == 0, released.stderr
    assert adopted[0]["file"] not in {e["file"] for e in entries(dest)}, released.stderr
    assert (server.backups / backup_name).is_file()

    later = run_cli("download", "--url", server.url, "--dest", str(dest))
    assert later.returncode == 0 and "Adopted" not in later.stderr, later.stderr  # released stays released
