"""The plugin's off-site copy inside a real Stash: after every download when asked, and
as its own task; a remote that refuses answers one error line in Stash's log, and no
secret of the remote ever reaches that log."""

import uuid

import pytest

from stash_backup_plugin.offsite.rclone import Rclone
from stash_backup_plugin.offsite.remote import RemoteArchive
from tests.support.offsite_fixtures import seaweed, write_config  # noqa: F401
from tests.support.offsite_servers import SECRET_KEY, make_bucket
from tests.support.stash_server.build import NEW_VERSION
from tests.support.stash_server.server import seed_content
from tests.e2e.test_e2e_plugin import run_task

pytestmark = pytest.mark.e2e


def configure(server, **values):
    server.graphql('mutation($i: Map!) { configurePlugin(plugin_id: "stash-backup", input: $i) }', {"i": values})


def test_plugin_pushes_after_download_and_as_a_task_without_logging_secrets(stash_server_factory, seaweed, tmp_path):
    bucket = "t-" + uuid.uuid4().hex[:10]
    config = write_config(tmp_path / "rclone.conf", seaweed=seaweed)
    make_bucket(config, f"sw:{bucket}")
    server = stash_server_factory(NEW_VERSION)
    configure(server, offsiteRemote=f"sw:{bucket}/stash", offsiteRcloneConfig=str(config), offsiteAfterDownload=True)
    seed_content(server)
    lines = run_task(server, "Download backup to archive")
    assert not [m for level, m in lines if level.lower() == "error"], lines
    remote = RemoteArchive(Rclone(config), f"sw:{bucket}/stash")
    assert len(remote.read_manifest().backups) == 1
    lines = run_task(server, "Copy archive off-site")
    assert any("is up to date: it holds 1 backup(s)" in m for _, m in lines), lines

    wrong = tmp_path / "wrong.conf"
    wrong.write_text(config.read_text().replace(SECRET_KEY, "wrong-" + SECRET_KEY[::-1]))
    configure(server, offsiteRemote=f"sw:{bucket}/stash", offsiteRcloneConfig=str(wrong))  # replaces all settings
    lines = run_task(server, "Copy archive off-site")
    errors = [m for level, m in lines if level.lower() == "error"]
    assert len(errors) == 1 and "refused the credentials" in errors[0], lines
    everything = "\n".join(m for _, m in lines) + server.log_tail(200)
    assert SECRET_KEY not in everything and SECRET_KEY[::-1] not in everything
