"""A live database damaged on purpose while a real Stash runs (v0.31.1 and v0.28.1):
`check-live` reports it (exit 1, one line, status.json, a webhook notice), retention
holds every backup and names the one to restore, and a healthy backup after the
repair lets retention remove again. An unreachable ping URL does not fail the backup.

How the damage is made, and why so: Stash keeps its database in WAL mode, so the
newest copy of a page may sit in the -wal, where damage to the main file would be
hidden. The test checkpoints the WAL (an ordinary SQLite connection, as any tool may),
then overwrites the head of the `tags` table's root page in the file: its b-tree page
type becomes invalid, which `quick_check` reports every time, and nothing Stash does
meanwhile rewrites that page (no tag is written while it is damaged). A running Stash
may still hold the good copy in its page cache, so its own backup is not reliably
failed that way; for that, Stash is stopped, the page damaged, Stash started: its
VACUUM INTO then fails with "database disk image is malformed" every time."""

import json
import sqlite3
import time

import pytest

from tests.support.archive_age import age_backups
from tests.support.harness import run_cli
from tests.support.notify_receiver import Receiver
from tests.support.stash_server.server import free_port

pytestmark = pytest.mark.e2e

DAMAGED_BYTES = 64


def damage_tags_page(database) -> tuple[int, bytes]:
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'tags'").fetchone()[0]
    connection.close()
    offset = (root - 1) * page_size
    with open(database, "r+b") as handle:
        handle.seek(offset)
        original = handle.read(DAMAGED_BYTES)
        handle.seek(offset)
        handle.write(b"\xff" * DAMAGED_BYTES)
    return offset, original


def repair(database, offset: int, original: bytes) -> None:
    with open(database, "r+b") as handle:
        handle.seek(offset)
        handle.write(original)


def backups_in(archive) -> list[str]:
    return sorted(e["file"] for e in json.loads(run_cli("list", "--dest", str(archive), "--json").stdout))


def test_a_damaged_live_database_is_reported_and_holds_retention(stash_server_factory, stash_version, tmp_path):
    server = stash_server_factory(stash_version, install_plugin=False)
    for i in range(3):
        server.graphql("mutation($n: String!) { tagCreate(input: {name: $n}) { id } }", {"n": f"tag {i}"})
    archive = tmp_path / "archive"
    connect = ["--url", server.url, *(["--api-key", server.api_key] if server.api_key else [])]
    for _ in range(2):
        made = run_cli("download", *connect, "--dest", str(archive))
        assert made.returncode == 0, made.stderr
        assert "live database healthy: PRAGMA quick_check ok" in made.stderr
        time.sleep(1.1)  # backups are named by the second
    age_backups(archive, days=1)  # made before the damage is first seen
    before = backups_in(archive)
    assert len(before) == 2

    offset, original = damage_tags_page(server.database)
    assert server.running
    with Receiver() as receiver:
        checked = run_cli(
            "check-live", "-q", *connect, "--dest", str(archive), "--notify", f"http://127.0.0.1:{receiver.port}/hook"
        )
        notices = receiver.wait_for(1)
    assert checked.returncode == 1
    lines = [line for line in checked.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "live database damaged" in lines[0] and "quick_check" in lines[0], checked.stderr
    assert [n["json"]["title"] for n in notices] == ["Stash backup failed: Check live database"]
    record = json.loads((archive / "status.json").read_text())["jobs"]["check-live"]
    assert record["damaged_since"] and record["last_failure"] and "live database damaged" in record["failure_message"]

    pruned = run_cli("prune", "--dest", str(archive), "--keep-last", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert backups_in(archive) == before
    newest = json.loads(run_cli("list", "--dest", str(archive), "--json").stdout)[0]["file"]
    held = [line for line in pruned.stderr.splitlines() if "retention holds every backup" in line]
    assert len(held) == 1 and f"restore {newest}" in held[0], pruned.stderr

    repair(server.database, offset, original)
    ping = f"http://127.0.0.1:{free_port()}/ping/0b7c-secret-uuid"
    healed = run_cli("download", *connect, "--dest", str(archive), "--ping", ping)
    assert healed.returncode == 0, healed.stderr
    assert "live database healthy" in healed.stderr and "retention runs again" in healed.stderr
    assert "ping (start)" in healed.stderr and "secret-uuid" not in healed.stderr
    assert not json.loads((archive / "status.json").read_text())["jobs"]["check-live"]["damaged_since"]

    pruned = run_cli("prune", "--dest", str(archive), "--keep-last", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert len(backups_in(archive)) == 1 and "removed 2" in pruned.stderr


def test_the_plugins_ping_url_hears_each_task_start_and_end(stash_server_factory, stash_version):
    server = stash_server_factory(stash_version)
    with Receiver() as receiver:
        url = f"http://127.0.0.1:{receiver.port}/ping/0b7c-secret-uuid"
        server.graphql(
            "mutation($id: ID!, $input: Map!) { configurePlugin(plugin_id: $id, input: $input) }",
            {"id": "stash-backup", "input": {"pingUrl": url}},
        )
        server.run_plugin_task("stash-backup", "Check live database")
        server.run_plugin_task("stash-backup", "Download backup to archive")
        pings = receiver.wait_for(4)
    assert [p["path"] for p in pings] == ["/ping/0b7c-secret-uuid/start", "/ping/0b7c-secret-uuid"] * 2
    assert "secret-uuid" not in server.log_text()


def test_stash_backup_failing_on_a_malformed_database_counts_as_damage(stash_server_factory, stash_version, tmp_path):
    """Stopped, damaged, started again: Stash starts, and its own backup (VACUUM INTO)
    then fails with "database disk image is malformed" every time (no page cache of a
    running Stash holds the page's good copy)."""
    server = stash_server_factory(stash_version, install_plugin=False)
    for i in range(3):
        server.graphql("mutation($n: String!) { tagCreate(input: {name: $n}) { id } }", {"n": f"tag {i}"})
    server.stop()
    offset, original = damage_tags_page(server.database)
    server.start()
    archive = tmp_path / "archive"
    connect = ["--url", server.url, *(["--api-key", server.api_key] if server.api_key else [])]
    failed = run_cli("download", *connect, "--dest", str(archive))
    assert failed.returncode == 1 and "database disk image is malformed" in failed.stderr, failed.stderr
    record = json.loads((archive / "status.json").read_text())["jobs"]["check-live"]
    assert record["damaged_since"] and "Stash's own backup failed" in record["damage_reason"]

    server.stop()
    repair(server.database, offset, original)
    server.start()
    healed = run_cli("download", *connect, "--dest", str(archive))
    assert healed.returncode == 0 and "retention runs again" in healed.stderr, healed.stderr
    assert not json.loads((archive / "status.json").read_text())["jobs"]["check-live"]["damaged_since"]
