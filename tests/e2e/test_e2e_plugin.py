"""The plugin inside a real Stash, on both pinned versions: every task through
runPluginTask, checked by its effect on disk and in Stash's log (a job is FINISHED
even when the plugin failed, so its status alone proves nothing)."""

import hashlib
import json

import pytest
import yaml

from stash_backup_plugin.core.store import Store
from tests.support.stash_server.build import NEW_VERSION, OLD_VERSION
from tests.support.stored import database_of
from tests.support.stash_server.server import seed_content

pytestmark = pytest.mark.e2e
PLUGIN = "stash-backup"
TASKS = [
    "Backup database",
    "Download backup to archive",
    "Verify archive",
    "Restore drill",
    "Apply retention",
    "Copy archive off-site",
    "Check live database",
]


def stash_log(server):
    """Stash's log as its `logs` query gives it, oldest first: (time, level, message).
    Stash keeps only its newest 30 lines."""
    return [(line["time"], line["level"], line["message"]) for line in reversed(server.logs())]


def task_log(server, task):
    """Run a task; the lines of Stash's log that came during it, oldest first, as (level, message)."""
    before = stash_log(server)
    job = server.run_plugin_task(PLUGIN, task)
    assert job["status"] == "FINISHED", job
    after = stash_log(server)
    if before:
        assert before[-1] in after, "Stash's log keeps 30 lines: some of this task's were dropped"
        after = after[after.index(before[-1]) + 1 :]
    return [(level, message) for _, level, message in after]


def run_task(server, task):
    """Our plugin's lines from a task, with Stash's line for the error the plugin answered."""
    return [
        (level, message)
        for level, message in task_log(server, task)
        if "[Plugin / Stash Backup]" in message or message.startswith("Plugin returned error")
    ]


def archive_dir(server):
    return server.root / "stash-backup-archive"  # the default: beside config.yml


def manifest(server, folder=None):
    """The archive's backups, newest first, as `stash-backup list --json` shows them."""
    from tests.support.harness import run_cli

    result = run_cli("list", "--json", "--dest", str(folder or archive_dir(server)))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def records(folder):
    return sorted(p.name for p in (folder / "backups").glob("*.record"))


def blob_files(server):
    return {p.name: p.read_bytes() for p in server.blobs.rglob("*") if p.is_file()}


def test_stash_lists_the_plugin_its_tasks_and_settings(stash_server_factory, stash_version):
    server = stash_server_factory(stash_version)
    plugins = server.graphql("{ plugins { id name tasks { name } settings { name type } } }")["plugins"]
    ours = next(p for p in plugins if p["id"] == PLUGIN)
    assert [t["name"] for t in ours["tasks"]] == TASKS
    assert {"archiveFolder", "includeBlobs", "keepDaily", "retentionDryRun"} <= {s["name"] for s in ours["settings"]}


def test_backup_task_writes_into_stashs_backup_folder(stash_server_factory, stash_version):
    server = stash_server_factory(stash_version)
    seed_content(server)
    messages = run_task(server, "Backup database")
    made = sorted(server.backups.glob("stash-go.sqlite.*"))
    assert len(made) == 1
    assert made[0].name.endswith(".zip") == (stash_version == NEW_VERSION)  # includeBlobs only on v0.31+
    assert any(level == "Info" and str(made[0]) in text for level, text in messages), messages


def test_download_task_archives_a_verified_full_backup(stash_server_factory, stash_version):
    """On Stash's host the plugin reads blobs straight from Stash's blobs folder (on
    both versions) and stores each once, beside the compressed database."""
    server = stash_server_factory(stash_version)
    seed_content(server, performers=4)
    messages = run_task(server, "Download backup to archive")
    [entry] = manifest(server)
    assert entry["source"] == "live-file" and entry["kind"] == "stored" and entry["verified_ok"]
    on_disk = blob_files(server)
    assert entry["blob_count"] == len(on_disk) == 7  # 2 tags + 1 studio + 4 performers
    folder = archive_dir(server)
    for checksum, data in on_disk.items():
        assert (folder / "blobs" / checksum[:2] / checksum[2:4] / checksum).read_bytes() == data
    snapshot = database_of(Store(folder), entry["file"])
    assert hashlib.sha256(snapshot).hexdigest() == entry["sha256"] and snapshot.startswith(b"SQLite format 3")
    assert any("Archived" in text for _, text in messages)
    assert not [p for p in folder.rglob("*") if "tmp" in p.name]


def test_download_task_with_database_blobs_archives_the_plain_database(stash_server_factory, stash_version):
    server = stash_server_factory(stash_version, blobs_storage="DATABASE")
    seed_content(server)
    run_task(server, "Download backup to archive")
    [entry] = manifest(server)
    assert entry["kind"] == "stored" and entry["source"] == "live-file" and entry["blobs_not_included"] == 0
    assert not entry["includes_blobs"]
    store = Store(archive_dir(server))
    with store.blob_list(entry["file"], images_only=True) as images:
        assert not list(images)
    settings = {f.md5 for f in store.settings(entry["file"])}  # the plugin's run on Stash's host holds them
    assert {p.name for p in (archive_dir(server) / "blobs").glob("??/??/*")} == settings and settings


def test_verify_task_logs_each_bad_backup_once_and_one_summary(stash_server_factory, stash_version):
    server = stash_server_factory(stash_version)
    seed_content(server)
    run_task(server, "Download backup to archive")
    run_task(server, "Download backup to archive")
    good, bad = manifest(server)
    path = archive_dir(server) / "snapshots" / f"{bad['file']}.pages"  # the other backup shares its packs
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    messages = run_task(server, "Verify archive")
    # one error line per bad backup and one summary: Stash logs the answered error,
    # so the plugin must not log it as well
    assert [level for level, text in messages if f"BAD {bad['file']}:" in text] == ["Error"], messages
    assert [text for level, text in messages if "1 good, 1 bad" in text] == [
        "Plugin returned error: Verified 2 backup(s): 1 good, 1 bad"
    ], messages
    states = {e["file"]: e["verified_ok"] for e in manifest(server)}
    assert states == {good["file"]: True, bad["file"]: False}


def test_retention_task_follows_the_settings_and_keeps_the_newest_verified(stash_server_factory, stash_version):
    server = stash_server_factory(stash_version, blobs_storage="DATABASE")
    seed_content(server)
    for _ in range(3):
        run_task(server, "Download backup to archive")
        import time

        time.sleep(1.05)  # backup names carry seconds
    files = [e["file"] for e in manifest(server)]
    assert len(files) == 3
    server.graphql(
        'mutation { configurePlugin(plugin_id: "stash-backup", input: {keepLast: 1, retentionDryRun: true}) }'
    )
    messages = run_task(server, "Apply retention")
    assert len(manifest(server)) == 3 and any("would remove" in t for _, t in messages)
    server.graphql(
        'mutation { configurePlugin(plugin_id: "stash-backup", input: {keepLast: 1, retentionDryRun: false}) }'
    )
    run_task(server, "Apply retention")
    assert [e["file"] for e in manifest(server)] == files[:1]
    assert records(archive_dir(server)) == [f"{files[0]}.record"]
    assert sorted(p.name for p in (archive_dir(server) / "snapshots").iterdir()) == [f"{files[0]}.pages"]


def test_retention_with_no_rule_removes_nothing(stash_server_factory):
    server = stash_server_factory(OLD_VERSION, blobs_storage="DATABASE")
    run_task(server, "Download backup to archive")
    messages = run_task(server, "Apply retention")
    assert len(manifest(server)) == 1 and any("No retention rule" in t for _, t in messages)


def test_archive_folder_setting_and_progress(stash_server_factory, stash_version, tmp_path):
    server = stash_server_factory(stash_version)
    target = tmp_path / "elsewhere"
    server.graphql(
        'mutation($i: Map!) { configurePlugin(plugin_id: "stash-backup", input: $i) }',
        {"i": {"archiveFolder": str(target)}},
    )
    seed_content(server)
    job = server.run_plugin_task(PLUGIN, "Download backup to archive")
    assert job["status"] == "FINISHED" and job["progress"] == 1
    assert len(records(target)) == 1


def test_plugin_on_a_server_with_credentials_uses_the_api_key_and_never_logs_it(stash_server_factory, stash_version):
    server = stash_server_factory(stash_version)
    seed_content(server)
    key = server.enable_credentials()
    run_task(server, "Download backup to archive")
    run_task(server, "Verify archive")
    assert manifest(server)[0]["verified_ok"]
    everything = (
        server.log_text()
        + json.dumps(server.logs())
        + "".join(
            p.read_text(errors="replace") for p in archive_dir(server).rglob("*") if p.suffix in (".json", ".record")
        )
    )
    assert key not in everything


def test_plugin_installed_under_another_id_reads_its_own_settings(stash_server_factory, tmp_path):
    from tests.support.harness import install_plugin_into

    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    install_plugin_into(server, "my-backups")
    server.graphql(
        'mutation($i: Map!) { configurePlugin(plugin_id: "my-backups", input: $i) }',
        {"i": {"archiveFolder": str(tmp_path / "mine")}},
    )
    job = server.run_plugin_task("my-backups", "Download backup to archive")
    assert job["status"] == "FINISHED"
    assert len(records(tmp_path / "mine")) == 1


def test_plugin_talks_https_to_a_server_whose_certificate_names_another_host(stash_server_factory, stash_version):
    """Stash serves https with stash.crt, which names the public host, not 127.0.0.1:
    the plugin pins that very certificate instead of turning verification off."""
    server = stash_server_factory(stash_version, tls=True)
    seed_content(server)
    messages = run_task(server, "Download backup to archive")
    assert manifest(server)[0]["verified_ok"], messages
    assert not any(level == "Error" for level, _ in messages)


def test_plugin_on_a_stash_bound_to_ipv6_with_a_login_uses_the_session_cookie(stash_server_factory, stash_version):
    """Stash bound to [::] with a login and no API key: the plugin has only the session
    cookie Stash hands it, and must send it to [::1] (GraphQL and the download)."""
    server = stash_server_factory(stash_version, host="[::]", blobs_storage="DATABASE")
    seed_content(server)
    server.enable_login()
    assert not yaml.safe_load(server.config_path.read_text()).get("api_key")
    messages = run_task(server, "Download backup to archive")
    assert not any(level == "Error" for level, _ in messages), messages
    [entry] = manifest(server)
    assert entry["verified_ok"] and any("Archived" in text for _, text in messages)


def test_plugin_talks_https_to_a_stash_serving_a_certificate_chain(stash_server_factory, stash_version):
    """ssl_cert_path holds the server's certificate and its CA, with text around them
    (as exported PEM files have): the plugin pins the first, the one Stash serves as its own."""
    server = stash_server_factory(stash_version, tls="chain", blobs_storage="DATABASE")
    seed_content(server)
    messages = run_task(server, "Download backup to archive")
    assert not any(level == "Error" for level, _ in messages), messages
    assert manifest(server)[0]["verified_ok"]
