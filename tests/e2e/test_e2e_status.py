"""The plugin's status operation and notifications on real Stash servers (v0.31.1 and
v0.28.1): `runPluginOperation` returns the plugin's JSON object as is; a task that
fails still ends FINISHED in Stash's queue, but the status and a notification (a plain
webhook and Apprise's json://, both to a local receiver) say what failed; an overdue
backup is reported once; no notification secret reaches Stash's log."""

import hashlib
import json
import sys

import pytest

from tests.support.archive_age import age_backups
from tests.support.notify_receiver import Receiver

pytestmark = pytest.mark.e2e

PLUGIN_ID = "backups-here"  # not the default: nothing may assume the plugin's ID
SECRET = "hook-s3cret"
STATUS = "mutation($id: ID!, $args: Map) { runPluginOperation(plugin_id: $id, args: $args) }"


def fingerprint(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:8]


def status_of(server) -> dict:
    return server.graphql(STATUS, {"id": PLUGIN_ID, "args": {"mode": "status"}})["runPluginOperation"]


def configure(server, **settings) -> None:
    server.graphql(
        "mutation($id: ID!, $input: Map!) { configurePlugin(plugin_id: $id, input: $input) }",
        {"id": PLUGIN_ID, "input": settings},
    )


def test_status_operation_and_notifications_on_a_real_server(stash_server_factory, stash_version):
    # Apprise is an optional extra the user installs into Stash's Python: this one has it.
    server = stash_server_factory(stash_version, install_plugin=False, python_path=sys.executable)
    from tests.support.harness import install_plugin_into

    install_plugin_into(server, PLUGIN_ID)
    with Receiver() as receiver:
        urls = f"http://127.0.0.1:{receiver.port}/hook?token={SECRET} json://bot:{SECRET}@127.0.0.1:{receiver.port}/apprise"
        configure(server, notifyUrls=urls)
        server.run_plugin_task(PLUGIN_ID, "Download backup to archive")
        good = status_of(server)
        assert isinstance(good, dict) and good["plugin_id"] == PLUGIN_ID
        assert good["stale"] is False and good["last_failure"] is None
        assert good["backups"][0]["verified_ok"] is True
        assert good["jobs"]["download"]["last_message"].startswith("Archived ")
        assert receiver.requests == []

        # Two days without a backup (interval 24h): one overdue notice, not one per page view.
        age_backups(server.root / "stash-backup-archive", days=2)
        assert status_of(server)["stale"] is True
        status_of(server)
        overdue = receiver.wait_for(2)
        assert sorted(n["path"] for n in overdue) == ["/apprise", f"/hook?token={SECRET}"]
        assert {n["json"]["type"] for n in overdue} == {"warning"}
        assert "2 d old" in overdue[0]["json"]["message"]

        # A failing backup: the archive folder cannot be created (its parent is a file).
        blocker = server.root / "a-file"
        blocker.write_text("x")
        configure(server, notifyUrls=urls, archiveFolder=str(blocker / "archive"))
        job = server.run_plugin_task(PLUGIN_ID, "Download backup to archive")
        assert job["status"] == "FINISHED"  # Stash's queue cannot tell a failure...
        failed = status_of(server)  # ...the status can (kept beside Stash's config)
        assert failed["last_failure"]["job"] == "download"
        assert "Not a directory" in failed["last_failure"]["message"]
        notices = receiver.wait_for(4)[2:]
        assert len(receiver.requests) == 4  # and no overdue notice on top of the failure
        assert sorted(n["path"] for n in notices) == ["/apprise", f"/hook?token={SECRET}"]
        assert all(n["json"]["type"] == "failure" and "Not a directory" in n["json"]["message"] for n in notices)
        assert notices[0]["json"]["title"] == "Stash backup failed: Back up to archive"
    assert SECRET not in server.log_text()
    assert SECRET not in json.dumps(server.logs())
    for url in urls.split():  # each named by its scheme and fingerprint (`printf %s URL | sha256sum`)
        assert f"notification sent to {url.split(':')[0]}://… (fingerprint {fingerprint(url)})" in server.log_text()
