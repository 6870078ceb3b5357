"""`snapshot --offline` against the real Stash, on both pinned versions: refused while
Stash runs; exact when it is stopped (the stored database has Stash's content, its blobs
are in the archive, verify passes, stash-restore brings it back); a second run stores
no blob again. A database damaged on purpose: refused, then `--salvage` stores what
SQLite recovers, marked salvaged, which stash-restore restores only when asked."""

import json
import sqlite3
import time

import pytest

from tests.support.stash_server.server import content_names, seed_content

from stash_backup_plugin.core.store import Store

from tests.support.harness import run_cli, run_restore

pytestmark = pytest.mark.e2e


def snapshot(server, dest, *args):
    return run_cli("snapshot", "--offline", "--config", str(server.config_path), "--dest", str(dest), *args)


def error_lines(result):
    """The refusal is one line; the lines before it say which config and database were read."""
    lines = result.stderr.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("error")) :]


def dump(path):
    """Every row of every table: the database's content, whatever its page layout."""
    with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as connection:
        return list(connection.iterdump())


def stored_database(dest, name, out):
    store = Store(dest)
    with open(out, "wb") as target:
        store.read_snapshot(store.header(name), target)
    return out


def test_snapshot_offline_refused_while_stash_runs_and_exact_when_stopped(
    stash_server_factory, stash_version, tmp_path
):
    server = stash_server_factory(stash_version, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"

    refused = snapshot(server, dest)
    assert refused.returncode != 0
    assert len(error_lines(refused)) == 1 and "Stash seems to be running" in refused.stderr, refused.stderr
    assert not Store(dest).record_names()

    backed_up = content_names(server)
    server.stop()
    started = time.monotonic()
    result = snapshot(server, dest, "--json")
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)
    assert entry["source"] == "offline" and entry["verified_ok"] and not entry["salvaged"]
    assert dump(stored_database(dest, entry["file"], tmp_path / "stored.sqlite")) == dump(server.database)
    blobs = sorted(p.name for p in server.blobs.rglob("*") if p.is_file())
    assert blobs and all(Store(dest).blob_size(checksum) is not None for checksum in blobs)
    assert entry["blob_count"] == len(blobs)
    first_seconds = time.monotonic() - started

    again = snapshot(server, dest, "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert Store(dest).header(second["file"]).new_blobs == 0  # nothing changed: no blob copied again
    print(f"snapshot --offline: first {first_seconds:.2f} s")

    verify = run_cli("verify", "--dest", str(dest))
    assert verify.returncode == 0, verify.stderr

    server.start()
    server.graphql('mutation { performerCreate(input: {name: "after-the-snapshot"}) { id } }')
    server.stop()
    restored = run_restore(entry["file"], "--config", str(server.config_path), "--archive", str(dest), "--yes")
    assert restored.returncode == 0, restored.stderr
    server.start()
    assert content_names(server) == backed_up


def damage_an_index_page(database):
    """Overwrite one page (the root of an index on performers) as a failing disk would:
    quick_check fails, Stash's own backup fails; the table rows are all still there."""
    with sqlite3.connect(f"file:{database}?immutable=1", uri=True) as connection:
        page = connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE type = 'index' AND tbl_name = "
            "'performers' AND rootpage > 1 ORDER BY rootpage LIMIT 1"
        ).fetchone()[0]
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    with open(database, "r+b") as handle:
        handle.seek((page - 1) * page_size)
        handle.write(b"\xee" * page_size)


def test_salvage_of_a_damaged_database_is_stored_marked_and_restored_only_when_asked(
    stash_server_factory, stash_version, tmp_path
):
    server = stash_server_factory(stash_version, install_plugin=False)
    seed_content(server)
    before = content_names(server)
    server.stop()
    damage_an_index_page(server.database)
    dest = tmp_path / "archive"

    refused = snapshot(server, dest)
    assert refused.returncode != 0
    assert len(error_lines(refused)) == 1 and "damaged" in refused.stderr and "--salvage" in refused.stderr, (
        refused.stderr
    )
    assert not Store(dest).record_names() and not Store(dest).snapshot_names()

    result = snapshot(server, dest, "--salvage", "--json")
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)
    assert entry["salvaged"] and not entry["verified_ok"]
    listing = run_cli("list", "--dest", str(dest))
    assert "SALVAGED" in listing.stdout, listing.stdout
    prune = run_cli("prune", "--dest", str(dest), "--keep-last", "1", "--json")
    assert prune.returncode == 0, prune.stderr
    assert Store(dest).record_names() == [entry["file"]]  # never counted as good, never removed
    assert f"keep   {entry['file']} (salvaged" in prune.stderr, prune.stderr

    refused = run_restore(entry["file"], "--config", str(server.config_path), "--archive", str(dest), "--yes")
    assert refused.returncode != 0 and "--allow-salvaged" in refused.stderr, refused.stderr
    restored = run_restore(
        entry["file"], "--config", str(server.config_path), "--archive", str(dest), "--yes", "--allow-salvaged"
    )
    assert restored.returncode == 0, restored.stderr
    server.start()
    assert content_names(server) == before  # only an index was lost, and SQLite rebuilt it
