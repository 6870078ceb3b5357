"""Stash's pre-migration backups adopted by `snapshot --offline` (no server): a plain
database of an older schema in Stash's backup folder is verified, stored and tagged; one
that does not check out is named and left out; zips, newer schemas and other databases
are not candidates; Stash's files are only read; nothing is adopted twice. Retention's
hold: until a verified backup of the new schema has passed a drill, and for good when
the tag cannot be read."""

import json
import types

from stash_backup_plugin.core.retention import held_before_upgrade
from stash_backup_plugin.core.store import Store

from tests.support.harness import run_cli
from tests.support.restore_fixtures import make_install
from tests.support.stashlike import make_database, write_blobs


def test_snapshot_adopts_an_older_schemas_backup_once_and_leaves_the_rest(tmp_path):
    install = make_install(tmp_path / "stash", schema=75)
    older = install.root / "backups" / "stash-go.sqlite.70.20261120_100000"
    older_images = make_database(older, schema=70, wal=False)
    write_blobs(install.blobs, older_images)  # Stash's blobs folder holds what the old schema refers to
    broken = install.root / "backups" / "stash-go.sqlite.71.20261121_100000"
    broken.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    other = install.root / "backups" / "other.sqlite.60.20261121_100000"
    make_database(other, schema=60, wal=False)
    before = {p.name: p.read_bytes() for p in (install.root / "backups").iterdir()}
    dest = tmp_path / "archive"

    result = run_cli("snapshot", "--offline", "--config", str(install.config), "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    assert "stash-go.sqlite.71.20261121_100000" in result.stderr and "not adopted" in result.stderr
    listing = json.loads(run_cli("list", "--dest", str(dest), "--json").stdout)
    adopted = [e for e in listing if e["pre_upgrade"]]
    assert [(e["file"], e["pre_upgrade"], e["verified_ok"]) for e in adopted] == [
        ("stash-go.sqlite.70.20261120_100000", "70→75", True)
    ]
    assert Store(dest).header(adopted[0]["file"]).blob_count == len(older_images)  # with Stash's blobs
    assert {p.name: p.read_bytes() for p in (install.root / "backups").iterdir()} == before

    again = run_cli("snapshot", "--offline", "--config", str(install.config), "--dest", str(dest))
    assert again.returncode == 0 and "Adopted" not in again.stderr, again.stderr


def entry(file, schema, pre_upgrade="", ok=True, drilled=False):
    return types.SimpleNamespace(
        file=file, schema_version=schema, pre_upgrade=pre_upgrade, verified_ok=ok, drill={"ok": True} if drilled else {}
    )


def test_a_pre_upgrade_backup_is_held_until_a_new_schema_backup_passes_a_drill():
    old = entry("old", 70, "70→75")
    assert "old" in held_before_upgrade([old, entry("new", 75)])  # verified, never drilled
    assert "old" in held_before_upgrade([old, entry("new", 75, ok=False, drilled=True)])  # drilled, not verified
    assert "old" in held_before_upgrade([old, entry("older", 72, drilled=True)])  # a drill of another schema
    assert held_before_upgrade([old, entry("new", 75, drilled=True)]) == {}
    assert held_before_upgrade([old, entry("newer", 80, drilled=True)]) == {}
    assert "odd" in held_before_upgrade([entry("odd", 70, "70→?"), entry("new", 99, drilled=True)])  # fail closed


def test_the_plugins_verify_adopts_too(tmp_path):
    """The plugin's verify knows the server (its database path, backup folder, schema):
    it adopts what a download or snapshot would."""
    from stash_backup_plugin.core.archive import Archive
    from stash_backup_plugin.core.reporting import Reporter
    from stash_backup_plugin.jobs.verify import verify_archive
    from stash_backup_plugin.server.api import ServerInfo

    install = make_install(tmp_path / "stash", schema=75)
    older = install.root / "backups" / "stash-go.sqlite.70.20261120_100000"
    write_blobs(install.blobs, make_database(older, schema=70, wal=False))
    info = ServerInfo(
        "v0.31.1", 75, str(install.database), str(install.root / "backups"), str(install.blobs), "FILESYSTEM", True
    )
    archive = Archive(tmp_path / "archive")
    summary = verify_archive(archive, "quick", Reporter(), stash=info)
    assert summary.ok and [(e.file, e.pre_upgrade) for e in archive.entries()] == [
        ("stash-go.sqlite.70.20261120_100000", "70→75")
    ]
    verify_archive(archive, "quick", Reporter(), stash=info)
    assert len(archive.entries()) == 1  # once
