"""The restore drill against real Stash binaries, on both pinned versions: a good
backup boots and shows the recorded counts while the live server keeps answering and
its files stay byte for byte; a backup of the older version boots on the newer binary
after a migration; missing blobs and an emptied table fail with the difference named;
kill -9 of a drill leaves no Stash running and the next drill removes its folder."""

import contextlib
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from stash_backup_plugin.core.store import Store
from tests.support.stash_server.build import NEW_VERSION, OLD_VERSION
from tests.support.stash_server.server import seed_content

from tests.support.harness import REPO, run_cli
from tests.support.stored import database_of, replace_database

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
        self.server, self.answered, self.failures, self.stop = server, [], [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.server.graphql("{ findPerformers { count } }", timeout=10)
                self.answered.append(time.monotonic())
            except Exception as error:  # noqa: BLE001 - any failure is what the test reports
                self.failures.append(str(error))
            time.sleep(0.05)

    def answers_between(self, start: float, end: float) -> int:
        return sum(1 for moment in self.answered if start <= moment <= end)


def test_drill_of_a_good_backup_passes_beside_the_live_server(
    stash_server_factory, stash_version, stash_binaries, tmp_path
):
    server = stash_server_factory(stash_version, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    made = download(server, dest)
    before = live_files(server)
    prober = Prober(server)
    prober.start()
    started = time.monotonic()
    code, result, stderr = drill(dest, stash_binaries[stash_version])
    ended = time.monotonic()
    prober.stop.set()
    prober.join()
    assert code == 0, stderr
    assert result["ok"] and result["backup"] == made["file"] and not result["migrated"]
    assert result["counts"] == {
        "scenes": 0,
        "images": 0,
        "galleries": 0,
        "performers": 3,
        "studios": 1,
        "tags": 2,
        "groups": 0,
    }
    assert result["images_checked"] == 6 and stash_version.lstrip("v") in result["stash_version"]
    # the live server answered while the drill ran (however quick: a fast machine drilled
    # in less than the four answers this once counted, at one each 0.2 s)
    assert prober.answers_between(started, ended) >= 2 and not prober.failures
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
    change_snapshot(dest, name, f"DELETE FROM {table}")


def change_snapshot(dest, name: str, sql: str) -> None:
    store = Store(dest)
    database = dest / "tampered.sqlite"
    database.write_bytes(database_of(store, name))
    connection = sqlite3.connect(database)
    connection.execute(sql)
    connection.commit()
    connection.close()  # a live copy is in WAL mode: closing folds the change into the file
    replace_database(store, name, database)
    database.unlink()


def test_missing_blobs_or_an_emptied_table_fail_with_the_difference_named(
    stash_server_factory, stash_binaries, tmp_path
):
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


def scratch_stash_started(drill_process, dest, deadline_s: float = 120) -> tuple[int, Path, int]:
    """The drill's Stash as soon as its pid file is written: pid, scratch folder, port."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if drill_process.poll() is not None:
            raise AssertionError(
                f"the drill ended ({drill_process.returncode}) before it started Stash: "
                f"{(dest.parent / 'drill.err').read_text()[-2000:]}"
            )
        for folder in dest.glob(".drill*"):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                pid = int((folder / "stash.pid").read_text())
                # the drill writes JSON; Stash may have rewritten it as YAML already
                return (
                    pid,
                    folder,
                    int(re.search(r'^ *"?port"?: *(\d+)', (folder / "config.yml").read_text(), re.MULTILINE).group(1)),
                )
        time.sleep(0.02)
    raise AssertionError(f"the drill never started Stash: {sorted(str(p) for p in dest.glob('.drill*/*'))}")


def answers(port: int, deadline_s: float = 120) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                return True
        time.sleep(0.2)
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[-1].split()[0] != "Z"
    return False


def running_from(folder, inside: bool = False) -> list[int]:
    """Every live process started on that scratch folder's config, whatever its pid file
    says (inside: on the config of any folder in it)."""
    config = str(folder / "config.yml")
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError, ValueError):
            arguments = cmdline.read_bytes().decode(errors="replace").split("\0")
            if (any(a.startswith(f"{folder}/") for a in arguments) if inside else config in arguments) and alive(
                int(cmdline.parent.name)
            ):
                found.append(int(cmdline.parent.name))
    return found


@contextlib.contextmanager
def no_process_left(drill_process, dest):
    """Whatever the test's outcome, neither the drill nor a Stash of its scratch folders outlives it."""
    try:
        yield
    finally:
        if drill_process.poll() is None:
            drill_process.kill()
            drill_process.wait()
        for pid in running_from(dest, inside=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


WITHOUT_PDEATHSIG = """import sys
from stash_backup_plugin.jobs import drill
drill.dies_with_us = lambda: (lambda: None)  # as where PR_SET_PDEATHSIG does not exist
from stash_backup_plugin.cli.commands import main
sys.exit(main())
"""


HELD_STASH = """#!/bin/sh
# The Stash binary, started by a drill that is then held still (SIGSTOP) once it has
# written the pid file, so that the drill cannot finish before the test kills it.
while [ ! -s stash.pid ]; do sleep 0.02; done
kill -STOP $PPID
exec "{binary}" "$@"
"""


def start_drill(dest, binary, tmp_path, pdeathsig: bool = True) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if pdeathsig:
        entry = ["-m", "stash_backup_plugin"]
    else:
        script = tmp_path / "drill_without_pdeathsig.py"
        script.write_text(WITHOUT_PDEATHSIG)
        entry = [str(script)]
    held = tmp_path / "held-stash"
    held.write_text(HELD_STASH.format(binary=binary))
    held.chmod(0o755)
    return subprocess.Popen(
        [sys.executable, *entry, "drill", "--dest", str(dest), "--stash-binary", str(held)],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "drill.err", "w+"),
    )


def kill_9_once_stash_answers(drill_process, dest) -> tuple[int, Path]:
    """kill -9 of the drill (held still since it started Stash) once that Stash serves."""
    stash_pid, scratch, port = scratch_stash_started(drill_process, dest)
    assert answers(port), "the drill's Stash never answered"
    os.kill(drill_process.pid, signal.SIGKILL)
    drill_process.wait(timeout=30)
    return stash_pid, scratch


def assert_next_drill_cleans_up(server, dest, binary, scratch, before: dict) -> None:
    code, result, stderr = drill(dest, binary)
    assert code == 0 and result["ok"], stderr
    assert running_from(scratch) == [] and not scratch.exists() and scratch_folders(dest) == []
    assert server.process.poll() is None and requests.get(f"{server.url}/healthz", timeout=10).ok
    assert live_files(server) == before


def test_kill_9_of_a_drill_leaves_no_stash_and_the_next_drill_cleans_up(stash_server_factory, stash_binaries, tmp_path):
    """Linux: the drill's Stash dies with it (PR_SET_PDEATHSIG), at once."""
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    download(server, dest)
    before = live_files(server)
    drill_process = start_drill(dest, stash_binaries[NEW_VERSION], tmp_path)
    with no_process_left(drill_process, dest):
        stash_pid, scratch = kill_9_once_stash_answers(drill_process, dest)
        deadline = time.monotonic() + 20
        while running_from(scratch) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(stash_pid) and running_from(scratch) == [], "the drill's Stash outlived the killed drill"
        assert scratch_folders(dest) == [scratch.name]  # what the kill left behind
        assert_next_drill_cleans_up(server, dest, stash_binaries[NEW_VERSION], scratch, before)


def test_the_next_drill_stops_a_stash_that_outlived_a_killed_drill(stash_server_factory, stash_binaries, tmp_path):
    """Where the Stash survives the kill (no PR_SET_PDEATHSIG: simulated), the next drill
    finds it by the pid file, makes sure it is that folder's Stash, stops it and removes
    the folder; the live Stash, also running on this machine, is left alone."""
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    download(server, dest)
    before = live_files(server)
    drill_process = start_drill(dest, stash_binaries[NEW_VERSION], tmp_path, pdeathsig=False)
    with no_process_left(drill_process, dest):
        stash_pid, scratch = kill_9_once_stash_answers(drill_process, dest)
        time.sleep(2)
        assert running_from(scratch) == [stash_pid], "the simulated survivor did not survive"
        assert_next_drill_cleans_up(server, dest, stash_binaries[NEW_VERSION], scratch, before)
        assert not alive(stash_pid)


def test_plugin_drills_after_every_download_with_the_stash_that_runs_it(stash_server_factory, tmp_path):
    """The plugin's setting "Restore drill every 1": a Download is followed by a drill
    with the parent Stash's own binary; the Restore drill task runs one by hand."""
    from tests.e2e.test_e2e_plugin import PLUGIN, archive_dir, manifest, run_task

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


# --- the scratch Stash: no way in without its own credentials; Stash's own reasons, at once ---


def archived_from(stash_server_factory, version: str, tmp_path) -> tuple:
    """A live Stash with some content, and an archive of one downloaded backup of it."""
    server = stash_server_factory(version, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    return server, dest, download(server, dest)


def graphql_status(port: int, query: str, headers: dict | None = None) -> int:
    return requests.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": query},
        headers=headers or {},
        timeout=10,
        allow_redirects=False,
    ).status_code


def test_the_drills_stash_lets_no_one_in_without_its_own_credentials(
    stash_server_factory, stash_version, stash_binaries, tmp_path
):
    """While a drill runs (held still once its Stash starts), its Stash refuses a query,
    a mutation that would point its scrapers elsewhere, and the web page to anyone
    without its API key, whatever key they guess; the drill itself still passes."""
    _, dest, _ = archived_from(stash_server_factory, stash_version, tmp_path)
    drill_process = start_drill(dest, stash_binaries[stash_version], tmp_path)
    with no_process_left(drill_process, dest):
        _, scratch, port = scratch_stash_started(drill_process, dest)
        assert answers(port), "the drill's Stash never answered"
        assert graphql_status(port, "{ stats { performer_count } }") == 401
        assert graphql_status(port, "{ stats { performer_count } }", {"ApiKey": "a-guess"}) == 401
        assert (
            graphql_status(port, 'mutation { configureGeneral(input: {scrapersPath: "/tmp/x"}) { scrapersPath } }')
            == 401
        )
        page = requests.get(f"http://127.0.0.1:{port}/performers", timeout=10, allow_redirects=False)
        assert page.status_code == 302 and page.headers["Location"].startswith("/login")
        login = requests.post(
            f"http://127.0.0.1:{port}/login",
            data={"username": "admin", "password": ""},
            timeout=10,
            allow_redirects=False,
        )
        assert "session" not in login.cookies
        os.kill(drill_process.pid, signal.SIGCONT)
        assert drill_process.wait(timeout=300) == 0, (tmp_path / "drill.err").read_text()[-2000:]
    assert scratch_folders(dest) == []


def test_a_backup_newer_than_the_binary_fails_at_once_with_stashs_own_reason(
    stash_server_factory, stash_binaries, tmp_path
):
    _, dest, _ = archived_from(stash_server_factory, NEW_VERSION, tmp_path)
    started = time.monotonic()
    code, result, stderr = drill(dest, stash_binaries[OLD_VERSION], "--timeout", "120")
    assert code == 1 and not result["ok"], stderr
    assert result["error"] == (
        "the drill's Stash exited with 1: manager initialization error: schema version 85 "
        "is incompatible with required schema version 72"
    ), result["error"]
    assert time.monotonic() - started < 60 and scratch_folders(dest) == []


def test_a_failing_migration_fails_at_once_with_its_reason(stash_server_factory, stash_binaries, tmp_path):
    """A table in the way of the newer binary's first migration (73 creates studio_urls)."""
    _, dest, made = archived_from(stash_server_factory, OLD_VERSION, tmp_path)
    change_snapshot(dest, made["file"], "CREATE TABLE studio_urls (in_the_way integer)")
    started = time.monotonic()
    code, result, stderr = drill(dest, stash_binaries[NEW_VERSION], "--timeout", "120")
    assert code == 1 and not result["ok"], stderr
    assert "could not migrate the backup" in result["error"], result["error"]
    assert "table `studio_urls` already exists" in result["error"], result["error"]
    assert time.monotonic() - started < 60 and scratch_folders(dest) == []


TEES_ITS_CONSOLE = """#!/bin/sh
# The Stash binary, its console output also kept outside the scratch folder.
"{binary}" "$@" 2>&1 | tee -a "{record}"
"""

IN_A_HOME_OF_ITS_OWN = """
mount --bind "{passwd}" /etc/passwd && exec "$@"
"""

FOLLOWS_NO_CERTIFICATE = """import sys
from stash_backup_plugin.jobs import drill
drill._tls_settings = lambda: {}  # a client that speaks http whatever Stash serves
from stash_backup_plugin.cli.commands import main
sys.exit(main())
"""


def with_a_home_of_its_own(home: Path, tmp_path: Path) -> list:
    """A command prefix: a mount namespace in which this account's home (from the
    password database, where Stash's user.Current looks; $HOME it ignores) is `home`."""
    import pwd

    account = pwd.getpwuid(os.getuid())
    lines = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == account.pw_name:
            fields[5] = str(home)
        lines.append(":".join(fields))
    passwd = tmp_path / "passwd"
    passwd.write_text("\n".join(lines) + "\n")
    script = tmp_path / "own-home.sh"
    script.write_text(IN_A_HOME_OF_ITS_OWN.format(passwd=passwd))
    return ["unshare", "--mount", *([] if os.geteuid() == 0 else ["--map-root-user"]), "sh", str(script)]


def test_a_certificate_in_the_users_stash_folder_is_followed_not_waited_out(
    stash_server_factory, stash_binaries, tmp_path
):
    """stash.crt and stash.key in ~/.stash: Stash serves https on the scratch config too
    (InitTLS), and the drill speaks https to it, pinned to that certificate. A client
    that spoke http would get Stash's "HTTP request to an HTTPS server": not GraphQL,
    a failure at once, not 900 s of "starting"."""
    _, dest, _ = archived_from(stash_server_factory, NEW_VERSION, tmp_path)
    home = tmp_path / "home"
    (home / ".stash").mkdir(parents=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=users.stash.example",
            "-days",
            "2",
            "-keyout",
            str(home / ".stash" / "stash.key"),
            "-out",
            str(home / ".stash" / "stash.crt"),
        ],
        check=True,
        capture_output=True,
    )
    record = tmp_path / "console.txt"
    binary = tmp_path / "stash-teed"
    binary.write_text(TEES_ITS_CONSOLE.format(binary=stash_binaries[NEW_VERSION], record=record))
    binary.chmod(0o755)
    own_home = with_a_home_of_its_own(home, tmp_path)
    arguments = ["drill", "--dest", str(dest), "--stash-binary", str(binary), "--json", "--timeout", "120"]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    started = time.monotonic()
    passed = subprocess.run(
        [*own_home, sys.executable, "-m", "stash_backup_plugin", *arguments],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert passed.returncode == 0 and json.loads(passed.stdout)["ok"], passed.stderr
    assert "stash is running at https://127.0.0.1:" in record.read_text()
    assert time.monotonic() - started < 90

    script = tmp_path / "drill_without_tls.py"
    script.write_text(FOLLOWS_NO_CERTIFICATE)
    started = time.monotonic()
    failed = subprocess.run(
        [*own_home, sys.executable, str(script), *arguments],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    error = json.loads(failed.stdout)["error"]
    assert (
        failed.returncode == 1
        and "answered HTTP 400, not GraphQL: Client sent an HTTP request to an HTTPS server." in error
    ), error
    assert time.monotonic() - started < 60 and scratch_folders(dest) == []
