"""Restore against the real Stash, on both pinned versions: back up, change content,
stop Stash, restore, start Stash, and read back exactly the backed-up content,
image bytes included; a running Stash makes the restore refuse; undo works."""

import hashlib
import json
import os
import signal
import sqlite3
import time

import pytest

from tests.support.stash_server.build import NEW_VERSION
from tests.support.stash_server.server import content_names, data_url, performer_image, png_bytes, seed_content

from stash_backup_plugin.core.faults import CRASH_ENV

from tests.support.harness import run_cli, run_restore

pytestmark = pytest.mark.e2e


def change_content(server, created):
    server.graphql('mutation { performerCreate(input: {name: "added-after-backup"}) { id } }')
    server.graphql(
        "mutation($i: PerformerUpdateInput!) { performerUpdate(input: $i) { id } }",
        {"i": {"id": created["performers"][0]["id"], "image": data_url(png_bytes(99999))}},
    )
    server.graphql("mutation($i: TagDestroyInput!) { tagDestroy(input: $i) }", {"i": {"id": created["tags"][1]["id"]}})


def download(server, dest, *args):
    result = run_cli("download", "--url", server.url, "--dest", str(dest), "--json", *args)
    assert result.returncode == 0, result.stderr
    return dest / json.loads(result.stdout)["file"]


def wait_until_idle(server, deadline_s: float = 120):
    """Past Stash's 30 s idle timeout its pools close and it holds no lock at all. Its
    -wal and -shm may go or stay (they stay when its last connection to close is a
    read-only one, as after a download that only read), so poll the locks themselves
    (offline/liveness's probe), with a deadline."""
    from stash_backup_plugin.offline.liveness import Finding, _probe_locks

    deadline = time.monotonic() + deadline_s
    while True:
        finding = Finding()
        _probe_locks(server.database, finding)
        if not finding.running:
            return
        assert time.monotonic() < deadline, f"Stash still holds {server.database} after {deadline_s} s: {finding}"
        assert server.running, server.log_tail()
        time.sleep(0.5)


def files_digest(server):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in server.root.iterdir()
        if p.name.startswith("stash-go.sqlite") and p.is_file()
    }


@pytest.mark.parametrize("kind", ["full", "database-only"])
def test_restore_brings_back_exactly_the_backed_up_content(stash_server_factory, stash_version, tmp_path, kind):
    server = stash_server_factory(stash_version, install_plugin=False)
    created = seed_content(server)
    backup = download(server, tmp_path / "archive", *(["--no-blobs"] if kind == "database-only" else []))
    backed_up = content_names(server)
    change_content(server, created)
    changed = content_names(server)
    assert changed != backed_up
    server.stop()

    result = run_restore(str(backup), "--config", str(server.config_path), "--yes")
    assert result.returncode == 0, result.stderr
    assert not any((server.root / f"stash-go.sqlite{s}").exists() for s in ("-wal", "-shm", "-journal"))

    server.start()
    assert content_names(server) == backed_up
    image = performer_image(server, created["performers"][0]["id"])
    if kind == "full":
        assert image == created["performers"][0]["image"]  # the old image file came back from the zip
    server.stop()

    undo = run_restore("--undo", "--config", str(server.config_path), "--yes")
    assert undo.returncode == 0, undo.stderr
    server.start()
    assert content_names(server) == changed


def test_restore_of_stashs_own_backup_by_name(stash_server_factory, stash_version):
    server = stash_server_factory(stash_version, install_plugin=False)
    seed_content(server)
    server.graphql("mutation { backupDatabase(input: {download: false}) }")
    [made] = list(server.backups.glob("stash-go.sqlite.*"))
    backed_up = content_names(server)
    server.graphql('mutation { tagCreate(input: {name: "later"}) { id } }')
    server.stop()
    listing = run_restore("--list", "--config", str(server.config_path))
    assert made.name in listing.stdout
    result = run_restore(made.name, "--config", str(server.config_path), "--yes")
    assert result.returncode == 0, result.stderr
    server.start()
    assert content_names(server) == backed_up


def test_restore_refuses_while_stash_is_busy_or_idle(stash_server_factory, stash_version, tmp_path):
    """An idle Stash holds no lock after 30 s: the process and port probes catch it."""
    server = stash_server_factory(stash_version, install_plugin=False)
    seed_content(server)
    backup = download(server, tmp_path / "archive")
    before = files_digest(server)
    busy = run_restore(str(backup), "--config", str(server.config_path), "--yes")
    assert busy.returncode != 0 and "Stash seems to be running" in busy.stderr
    assert files_digest(server) == before
    wait_until_idle(server)  # no lock left: only the process and port probes see it
    before = files_digest(server)
    idle = run_restore(str(backup), "--config", str(server.config_path), "--yes")
    assert idle.returncode != 0 and "Stash seems to be running" in idle.stderr
    assert "Traceback" not in idle.stderr
    assert files_digest(server) == before
    assert not list(server.root.glob("stash-restore-*"))


def test_restore_refuses_an_idle_stash_started_through_stash_config_file(stash_server_factory, tmp_path):
    """As the official Docker image and many systemd units start it: STASH_CONFIG_FILE,
    no --config, another working directory. Idle, it holds no lock; its process names
    the config only in its environment, and its /healthz is proof that --stash-stopped
    cannot overrule."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    server = stash_server_factory(NEW_VERSION, install_plugin=False, config_via_env=True, working_dir=elsewhere)
    seed_content(server)
    backup = download(server, tmp_path / "archive")
    wait_until_idle(server)
    before = files_digest(server)
    for vouched in ([], ["--stash-stopped"]):
        result = run_restore(str(backup), "--config", str(server.config_path), "--yes", *vouched)
        assert result.returncode != 0, result.stderr
        assert f"Stash seems to be running (Stash process {server.process.pid}" in result.stderr
    assert files_digest(server) == before
    assert not list(server.root.glob("stash-restore-*"))


def test_restore_finds_backups_in_the_plugins_archive_folder_but_never_the_anonymised_database(
    stash_server_factory, stash_version, tmp_path
):
    """The Archive folder setting as Stash really stores it in config.yml (the plugin
    under another ID), and Stash's own "Anonymise database" output beside the backups."""
    from tests.support.harness import install_plugin_into

    server = stash_server_factory(stash_version, install_plugin=False)
    install_plugin_into(server, "my-backups")
    archive = tmp_path / "my-archive"
    server.graphql(
        'mutation($i: Map!) { configurePlugin(plugin_id: "my-backups", input: $i) }',
        {"i": {"archiveFolder": str(archive)}},
    )
    seed_content(server)
    assert server.run_plugin_task("my-backups", "Download backup to archive")["status"] == "FINISHED"
    [archived] = list((archive / "backups").glob("stash-go.sqlite.*.record"))  # a stored backup, by its record
    server.graphql("mutation { anonymiseDatabase(input: {download: false}) }")
    [anonymised] = list(server.backups.glob("stash-go.sqlite.anonymous.*"))
    server.stop()
    listing = run_restore("--list", "--json", "--config", str(server.config_path))
    listed = {row["path"] for row in json.loads(listing.stdout)}
    assert str(archived) in listed and str(anonymised) not in listed, listing.stdout
    by_name = run_restore(archived.name[: -len(".record")], "--config", str(server.config_path), "--dry-run")
    assert by_name.returncode == 0, by_name.stderr
    refused = run_restore(str(anonymised), "--config", str(server.config_path), "--yes")
    assert refused.returncode != 0 and "--allow-anonymised" in refused.stderr


def test_restore_refuses_a_backup_newer_than_the_database(stash_server_factory, stash_binaries, tmp_path):
    from tests.support.stash_server.build import OLD_VERSION

    new = stash_server_factory(NEW_VERSION, install_plugin=False, name="new")
    backup = download(new, tmp_path / "archive", "--no-blobs")
    old = stash_server_factory(OLD_VERSION, install_plugin=False, name="old")
    old.stop()
    before = files_digest(old)
    result = run_restore(str(backup), "--config", str(old.config_path), "--yes")
    assert result.returncode != 0 and "newer than the current database" in result.stderr
    assert files_digest(old) == before


def kill_hard(server) -> None:
    """Stash killed, as by a power cut: what it committed may live only in its -wal."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=15)


def add_tag(server, name: str) -> None:
    server.graphql("mutation($i: TagCreateInput!) { tagCreate(input: $i) { id } }", {"i": {"name": name}})


@pytest.mark.parametrize("step", ["aside-db", "placed"])
def test_a_stash_restarted_after_a_killed_undo_serves_a_whole_database(stash_server_factory, tmp_path, step):
    """A restart policy starts Stash between a killed --undo and its rerun: Stash serves
    the database from before or after the undo, whole, and what it writes then is kept;
    the rerun finishes the undo, never swaps back."""
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    created = seed_content(server)
    backup = download(server, tmp_path / "archive")
    change_content(server, created)
    kill_hard(server)
    assert run_restore(str(backup), "--config", str(server.config_path), "--yes").returncode == 0
    server.start()
    add_tag(server, "after-restore")
    after_restore = content_names(server)
    kill_hard(server)

    crashed = run_restore("--undo", "--config", str(server.config_path), "--yes", env={CRASH_ENV: step})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    server.start()
    seen = content_names(server)
    undone = step == "placed"
    assert (
        seen == after_restore
        if not undone
        else ("added-after-backup" in seen["performers"] and "after-restore" not in seen["tags"])
    )
    add_tag(server, "written-before-the-rerun")
    server.stop()

    rerun = run_restore("--undo", "--config", str(server.config_path), "--yes")
    assert rerun.returncode == 0, rerun.stderr
    assert "is now the database from" in rerun.stderr
    server.start()
    final = content_names(server)
    assert "added-after-backup" in final["performers"] and "after-restore" not in final["tags"]
    assert ("written-before-the-rerun" in final["tags"]) == undone
    kept_with_it = [
        a
        for a in server.root.glob("stash-restore-*")
        if (a / "stash-go.sqlite").exists() and "written-before-the-rerun" in tag_names(a / "stash-go.sqlite")
    ]
    assert bool(kept_with_it) != undone  # not undone yet when Stash wrote it: kept with the restored database


def tag_names(database) -> list:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return [row[0] for row in connection.execute("SELECT name FROM tags")]
    finally:
        connection.close()
