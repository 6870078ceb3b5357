"""The restore drill against real Stash binaries, on both pinned versions: a good
backup boots and shows the recorded counts while the live server keeps answering and
its files stay byte for byte; a backup of the older version boots on the newer binary
after a migration; missing blobs and an emptied table fail with the difference named;
kill -9 of a drill leaves no Stash running and the next drill removes its folder."""
import gzip
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import requests

from stash_backup_plugin.core import record as records
from stash_backup_plugin.core.store import Store, write_snapshot, commit_snapshot
from tests.stash_server.build import NEW_VERSION, OLD_VERSION
from tests.stash_server.server import seed_content

from .conftest import REPO, run_cli

pytestmark = pytest.mark.e2e


def download(server, dest) -> dict:
    result = run_cli("download", "--url", server.url, "--dest", str(dest), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def drill(dest, binary, *args) -> tuple[int, dict, str]:
    result = run_cli("drill", "--dest", str(dest), "--stash-binary", str(binary), "--json", *args)
    body = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, body, result.stderr


def scratch_folders(dest) -> list:
    return sorted(p.name for p in dest.iterdir() if p.name.startswith(".drill"))


def live_files(server) -> dict:
    files = [server.database, server.config_path, *sorted(server.blobs.rglob("*"))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


class Prober(threading.Thread):
    """Asks the live server for its performers while the drill runs."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.answers, self.failures, self.stop = server, 0, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.server.graphql("{ findPerformers { count } }", timeout=10)
                self.answers += 1
            except Exception as error:  # noqa: BLE001 - any failure is what the test reports
                self.failures.append(str(error))
            time.sleep(0.2)


def test_drill_of_a_good_backup_passes_beside_the_live_server(stash_server_factory, stash_version, stash_binaries,
                                                              tmp_path):
    server = stash_server_factory(stash_version, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    made = download(server, dest)
    before = live_files(server)
    prober = Prober(server)
    prober.start()
    code, result, stderr = drill(dest, stash_binaries[stash_version])
    prober.stop.set()
    prober.join()
    assert code == 0, stderr
    assert result["ok"] and result["backup"] == made["file"] and not result["migrated"]
    assert result["counts"] == {"scenes": 0, "images": 0, "galleries": 0, "performers": 3, "studios": 1, "tags": 2,
                                "groups": 0}
    assert result["images_checked"] == 6 and stash_version.lstrip("v") in result["stash_version"]
    assert prober.answers > 3 and not prober.failures  # the live server answered throughout
    assert live_files(server) == before  # its database, config and blobs, byte for byte
    assert scratch_folders(dest) == []
    listed = run_cli("list", "--dest", str(dest))
    assert "drill booted" in listed.stdout, listed.stdout
    status = json.loads((dest / "status.json").read_text())
    assert status["jobs"]["drill"]["last_success"]


def test_backup_of_the_older_version_migrates_on_the_newer_binary(stash_server_factory, stash_binaries, tmp_path):
    server = stash_server_factory(OLD_VERSION, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    download(server, dest)
    code, result, stderr = drill(dest, stash_binaries[NEW_VERSION])
    assert code == 0, stderr
    assert result["ok"] and result["migrated"] and result["counts"]["performers"] == 3
    assert NEW_VERSION.lstrip("v") in result["stash_version"]


def empty_table_in_snapshot(dest, name: str, table: str) -> None:
    """A backup whose database is consistent but wrong (a table emptied by hand): the
    snapshot rewritten, its record made to match it, the recorded counts kept."""
    store = Store(dest)
    header = store.header(name)
    database = dest / "tampered.sqlite"
    database.write_bytes(gzip.decompress(store.snapshot_path(name).read_bytes()))
    with sqlite3.connect(database) as connection:
        connection.execute(f"DELETE FROM {table}")
    temp, digest = write_snapshot(store, name, database)
    store.snapshot_path(name).unlink()
    path = commit_snapshot(store, name, temp)
    header.snapshot = records.Snapshot(header.snapshot.file, digest.size, digest.sha256, path.stat().st_size)
    with store.blob_list(name) as blobs:
        listed = list(blobs)
    store.write_record(header, listed)
    database.unlink()


def test_missing_blobs_or_an_emptied_table_fail_with_the_difference_named(stash_server_factory, stash_binaries,
                                                                         tmp_path):
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    made = download(server, dest)
    blob = sorted((dest / "blobs").glob("??/??/*"))[0]
    kept = blob.read_bytes()
    blob.unlink()
    code, result, stderr = drill(dest, stash_binaries[NEW_VERSION], "--notify", "http://127.0.0.1:9/hook")
    assert code == 1 and not result["ok"]
    assert blob.name in " ".join(result["differences"] + [result["error"]]), result
    status = json.loads((dest / "status.json").read_text())
    assert status["jobs"]["drill"]["last_failure"] and blob.name in status["jobs"]["drill"]["failure_message"]
    assert "DRILL-FAILED" in run_cli("list", "--dest", str(dest)).stdout
    blob.write_bytes(kept)

    empty_table_in_snapshot(dest, made["file"], "studios")
    code, result, stderr = drill(dest, stash_binaries[NEW_VERSION], made["file"])
    assert code == 1 and not result["ok"], stderr
    assert "studios: the backup recorded 1, Stash reports 0" in result["differences"], result
    assert "drill of" in stderr and "FAILED" in stderr and "studios" in stderr
    assert scratch_folders(dest) == []


def stash_pid_in(dest, deadline_s: float = 120) -> int:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for folder in dest.glob(".drill*"):
            pid_file = folder / "stash.pid"
            if pid_file.exists() and pid_file.read_text().strip():
                return int(pid_file.read_text())
        time.sleep(0.1)
    raise AssertionError("the drill never started Stash")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = open(f"/proc/{pid}/stat").read().split(") ")[-1].split()[0]
    return status != "Z"


def test_kill_9_of_a_drill_leaves_no_stash_and_the_next_drill_cleans_up(stash_server_factory, stash_binaries,
                                                                       tmp_path):
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    download(server, dest)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    drill_process = subprocess.Popen([sys.executable, "-m", "stash_backup_plugin", "drill", "--dest", str(dest),
                                      "--stash-binary", str(stash_binaries[NEW_VERSION])], env=env, cwd=REPO,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stash_pid = stash_pid_in(dest)
    os.kill(drill_process.pid, signal.SIGKILL)
    drill_process.wait(timeout=30)
    deadline = time.monotonic() + 20
    while alive(stash_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(stash_pid), "the drill's Stash outlived the killed drill"
    left = scratch_folders(dest)
    assert len(left) == 1  # what the kill left behind
    code, result, stderr = drill(dest, stash_binaries[NEW_VERSION])
    assert code == 0 and result["ok"], stderr
    assert scratch_folders(dest) == []
    assert requests.get(f"{server.url}/healthz", timeout=10).ok


def test_plugin_drills_after_every_download_with_the_stash_that_runs_it(stash_server_factory, tmp_path):
    """The plugin's setting "Restore drill every 1": a Download is followed by a drill
    with the parent Stash's own binary; the Restore drill task runs one by hand."""
    from .test_e2e_plugin import PLUGIN, archive_dir, manifest, run_task
    server = stash_server_factory(NEW_VERSION)
    seed_content(server)
    server.graphql(f'mutation {{ configurePlugin(plugin_id: "{PLUGIN}", input: {{drillEvery: "1"}}) }}')
    lines = run_task(server, "Download backup to archive")
    assert not [m for level, m in lines if level == "Error"], lines
    [entry] = manifest(server)
    assert entry["drill"]["ok"] and NEW_VERSION.lstrip("v") in entry["drill"]["stash_version"], entry
    first = entry["drill"]["at"]
    time.sleep(1.1)
    lines = run_task(server, "Restore drill")
    assert any("drill of" in m and "passed" in m for _, m in lines), lines
    [entry] = manifest(server)
    assert entry["drill"]["ok"] and entry["drill"]["at"] != first
    assert scratch_folders(archive_dir(server)) == []
