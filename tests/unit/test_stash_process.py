"""Telling that Stash is running: locks, the process table and the port."""

import contextlib
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from stash_backup_plugin.offline.liveness import probe

from tests.support.stashlike import make_database


@pytest.fixture
def install(tmp_path):
    database = tmp_path / "stash-go.sqlite"
    make_database(database)
    config = tmp_path / "config.yml"
    config.write_text(f"database: {database}\n")
    return database, config


@contextlib.contextmanager
def running(process):
    """Yield the process; kill it at the end, whatever happened."""
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def fake_stash(tmp_path, *args, env=None, cwd=None, chroot=None):
    """A process whose program is called `stash`, with Stash's command line, its
    environment and working directory; `chroot` puts it in its own root, as a
    container is."""
    program = tmp_path / "stash"
    if not program.exists():
        program.symlink_to(sys.executable)
    script = tmp_path / "idle.py"
    script.write_text(
        "import os, sys, time\n"
        "if os.environ.get('FAKE_CHROOT'):\n"
        "    os.chroot(os.environ.pop('FAKE_CHROOT')); os.chdir('/')\n"
        "print('up', flush=True)\ntime.sleep(60)\n"
    )
    full_env = dict(env if env is not None else os.environ, **({"FAKE_CHROOT": str(chroot)} if chroot else {}))
    process = subprocess.Popen(
        [str(program), str(script), *args], stdout=subprocess.PIPE, text=True, env=full_env, cwd=cwd
    )
    assert process.stdout.readline().strip() == "up"
    return process


def test_nothing_running(install):
    database, config = install
    finding = probe(database, config, "127.0.0.1", None)
    assert finding.running == [] and finding.certain_stopped


def test_a_process_with_the_database_open(install):
    database, config = install
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('select 1 from performers').fetchall(); print('ready', flush=True); "
            "time.sleep(60)",
            str(database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    with running(holder):
        assert holder.stdout.readline().strip() == "ready"
        finding = probe(database, config, "127.0.0.1", None)
        assert any(f"pid {holder.pid}" in r for r in finding.running)


def test_an_idle_stash_process_with_this_config(install, tmp_path):
    database, config = install
    with running(fake_stash(tmp_path, "--config", str(config))) as process:
        finding = probe(database, config, "127.0.0.1", None)
        assert any(f"Stash process {process.pid}" in r for r in finding.running)


def test_another_stash_instance_is_not_ours(install, tmp_path):
    database, config = install
    other = tmp_path / "other.yml"
    other.write_text("database: /elsewhere.sqlite\n")
    with running(fake_stash(tmp_path, "--config", str(other))):
        assert probe(database, config, "127.0.0.1", None).running == []


def test_something_answering_healthz_on_the_port(install):
    database, config = install

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        finding = probe(database, config, "0.0.0.0", server.server_address[1])
        assert any("Stash answers" in r for r in finding.running)
    finally:
        server.shutdown()


def test_a_stash_started_through_stash_config_file_from_another_folder(install, tmp_path):
    """The official Docker image and many systemd units: no --config, the variable
    names the file, the working directory is /."""
    database, config = install
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "STASH_CONFIG_FILE": str(config)}
    with running(fake_stash(tmp_path, env=env, cwd="/")) as process:
        finding = probe(database, config, "127.0.0.1", None)
        assert any(f"Stash process {process.pid}" in r for r in finding.running)


def test_stash_config_file_naming_another_config_is_not_ours(install, tmp_path):
    database, config = install
    other = tmp_path / "other.yml"
    other.write_text("database: /elsewhere.sqlite\n")
    env = {"PATH": os.environ["PATH"], "STASH_CONFIG_FILE": str(other)}
    with running(fake_stash(tmp_path, env=env, cwd="/")):
        assert probe(database, config, "127.0.0.1", None).certain_stopped


@pytest.mark.parametrize(
    "args",
    [["--config", "config.yml"], ["--config=config.yml"], ["-c", "config.yml"], ["-cconfig.yml"], []],
    ids=["flag", "equals", "short", "glued", "default"],
)
def test_a_relative_config_is_read_from_the_processs_own_folder(install, tmp_path, args):
    database, config = install
    with running(fake_stash(tmp_path, *args, cwd=config.parent)) as process:
        finding = probe(database, config, "127.0.0.1", None)
        assert any(f"Stash process {process.pid}" in r for r in finding.running)


def test_a_stash_in_its_own_root_is_matched_by_inode_not_by_path(install, tmp_path):
    """As in a container: the process names /config.yml inside its root, which is
    another path here; the same file (device and inode) is what counts."""
    database, config = install
    root = tmp_path / "container"
    root.mkdir()
    os.link(config, root / "config.yml")
    with running(fake_stash(tmp_path, "--config", "/config.yml", chroot=root)) as process:
        finding = probe(database, config, "127.0.0.1", None)
        assert any(f"Stash process {process.pid}" in r for r in finding.running)
    (tmp_path / "decoy.yml").write_text("database: /elsewhere.sqlite\n")
    os.replace(tmp_path / "decoy.yml", root / "config.yml")  # same path inside, another file
    with running(fake_stash(tmp_path, "--config", "/config.yml", chroot=root)):
        assert probe(database, config, "127.0.0.1", None).certain_stopped


def test_without_a_config_the_processs_own_config_tells_which_database_it_serves(install, tmp_path):
    """A restore given --database has no config to compare: another Stash on the
    machine, serving another database, is not ours; one whose config names this
    database (here as a relative path, from its own folder) is."""
    database, _ = install
    other = tmp_path / "other.yml"
    other.write_text("database: /elsewhere/stash-go.sqlite\n")
    with running(fake_stash(tmp_path, "--config", str(other))):
        assert probe(database, None, "127.0.0.1", None).certain_stopped
    same_database = tmp_path / "same.yml"
    same_database.write_text(f"database: {database.name}\n")
    with running(fake_stash(tmp_path, "--config", str(same_database), cwd=database.parent)) as process:
        finding = probe(database, None, "127.0.0.1", None)
        assert any(f"Stash process {process.pid}" in r for r in finding.running)


def test_another_stashs_database_setting_is_read_without_pyyaml(tmp_path, monkeypatch):
    """The plugin's Python (which runs the restore drill's probe) may lack PyYAML: the
    setting is read from its line, and what cannot be read counts as ours (fail closed)."""
    import builtins
    from stash_backup_plugin.offline import liveness

    real_import = builtins.__import__

    def no_yaml(name, *args, **kwargs):
        if name == "yaml":
            raise ImportError("no yaml here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    config = tmp_path / "config.yml"
    config.write_text("host: 0.0.0.0\ndatabase: /srv/stash/stash-go.sqlite\nport: 9999\n")
    assert liveness._database_setting(config) == "/srv/stash/stash-go.sqlite"
    config.write_text("database: |\n  /odd\n")
    assert liveness._database_setting(config) is None
