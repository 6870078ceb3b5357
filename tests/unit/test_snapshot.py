"""`snapshot --offline` on a stopped Stash-shaped install (no server): committed data
still in the -wal is in the backup; Stash's files are not changed by reading them (bytes,
times, no new file); a second run of an unchanged Stash copies no blob again."""

import json
import os
import sqlite3

from stash_backup_plugin.core.store import Store

from tests.support.harness import run_cli
from tests.support.restore_fixtures import make_install


def files_state(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def test_snapshot_includes_the_wal_and_changes_nothing_of_stash(tmp_path):
    install = make_install(tmp_path / "stash")
    assert os.path.exists(f"{install.database}-wal")
    before = files_state(install.root)
    dest = tmp_path / "archive"

    result = run_cli("snapshot", "--offline", "--config", str(install.config), "--dest", str(dest), "--json")
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)
    assert files_state(install.root) == before

    store = Store(dest)
    with open(tmp_path / "stored.sqlite", "wb") as out:
        store.read_snapshot(store.header(entry["file"]), out)
    with sqlite3.connect(tmp_path / "stored.sqlite") as stored:
        names = [row[0] for row in stored.execute("SELECT name FROM performers ORDER BY name")]
    assert names == install.names() and "added-after-backup" in names  # the -wal's committed row
    assert entry["blob_count"] == len(install.images) and entry["verified_ok"]
    assert os.stat(store.record_path(entry["file"])).st_mode & 0o077 == 0

    again = run_cli("snapshot", "--offline", "--config", str(install.config), "--dest", str(dest), "--json")
    assert again.returncode == 0, again.stderr
    assert store.header(json.loads(again.stdout)["file"]).new_blobs == 0


def test_snapshot_without_a_config_refuses_in_one_line(tmp_path):
    result = run_cli("snapshot", "--offline", "--config", str(tmp_path / "missing.yml"), "--dest", str(tmp_path / "a"))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "missing.yml" in result.stderr, result.stderr
    assert not Store(tmp_path / "a").record_names()  # (status.json records the failed attempt)


def test_a_stash_without_a_database_yet_is_skipped_so_its_first_start_goes_ahead(tmp_path):
    """ExecStartPre= before Stash's very first start: no database, nothing at risk, exit 0."""
    config = tmp_path / "config.yml"
    config.write_text(f"database: {tmp_path / 'stash-go.sqlite'}\nport: 1\n")
    result = run_cli("snapshot", "--offline", "--config", str(config), "--dest", str(tmp_path / "a"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"skipped": "Stash has no database yet"}
    assert not (tmp_path / "stash-go.sqlite").exists() and not Store(tmp_path / "a").record_names()
