"""The plugin where Stash runs: installed from a wheel (no source checkout), run by a
Python that has only the standard library and requests (Stash's official Docker
image) with no package index in reach, on each CPython from our floor up; and the
plugin-manager route through Stash's own package API, uninstall included."""

import shlex
import subprocess
import time

import pytest

from tests.support.python_envs import SUPPORTED, clean_env, copy_of_checkout
from tests.support.stash_server.build import NEW_VERSION
from tests.support.stash_server.server import seed_content

from tests.e2e.test_e2e_plugin import TASKS, archive_dir, manifest

pytestmark = pytest.mark.e2e
PLUGIN = "stash-backup"
FLOOR = SUPPORTED[0]


def wheel_cli(python_envs, tmp_path, *args: str, version: str = None) -> subprocess.CompletedProcess:
    """stash-backup as a user who pip-installed the wheel runs it: from another folder,
    nothing of this checkout on the path."""
    bin_dir = python_envs.wheel_cli(*([version] if version else []))
    result = subprocess.run(
        [str(bin_dir / "stash-backup"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return result


def plugin_errors(server) -> list:
    """Our error lines in Stash's log file (its `logs` query keeps only the last 30)."""
    return [line for line in server.log_text().splitlines() if "[Plugin / Stash Backup]" in line and "ERRO" in line]


def run_every_task(server, plugin_id=PLUGIN) -> None:
    seed_content(server)
    for task in TASKS:
        job = server.run_plugin_task(plugin_id, task)
        assert job["status"] == "FINISHED", job
    assert not plugin_errors(server)
    [entry] = manifest(server)
    assert entry["verified_ok"] and entry["blob_count"] == 6, entry


def test_every_task_from_a_wheel_install_with_only_requests_and_no_index(
    stash_server_factory, stash_version, python_envs, tmp_path
):
    server = stash_server_factory(
        stash_version, install_plugin=False, python_path=python_envs.requests_only()
    )  # PIP_NO_INDEX=1 too
    wheel_cli(python_envs, tmp_path, "install-plugin", "--plugins-dir", str(server.plugins), "--url", server.url)
    assert sorted(p.name for p in (server.plugins / PLUGIN).iterdir()) == sorted(
        [f"{PLUGIN}.yml", "stash_backup_plugin.pyz", "backups.js", "backups.css"]
    )
    run_every_task(server)


@pytest.mark.parametrize("python", SUPPORTED)
def test_a_package_built_on_the_floor_python_runs_on_every_python(stash_server_factory, python_envs, tmp_path, python):
    """What the bundle holds depends on the Python that built it (gql 4.4 needs 3.10):
    built with the oldest supported one it runs on all of them."""
    server = stash_server_factory(NEW_VERSION, install_plugin=False, python_path=python_envs.requests_only(python))
    wheel_cli(
        python_envs,
        tmp_path,
        "install-plugin",
        "--plugins-dir",
        str(server.plugins),
        "--url",
        server.url,
        version=FLOOR,
    )
    run_every_task(server)


def test_a_python_without_requests_logs_one_error_line_with_the_fix(stash_server_factory, python_envs):
    server = stash_server_factory(NEW_VERSION, python_path=python_envs.bare())
    job = server.run_plugin_task(PLUGIN, "Verify archive")
    assert job["status"] == "FINISHED"

    def ours():  # answered once, as the error: Stash logs it ("Plugin returned error: …")
        return [line for line in server.log_text().splitlines() if "needs the Python package requests" in line]

    deadline = time.monotonic() + 5  # Stash may log the plugin's answer after it ends the job
    while not ours() and time.monotonic() < deadline:
        time.sleep(0.1)
    [line] = ours()
    assert "ERRO" in line
    assert f'--target "{server.plugins / PLUGIN / "python-packages"}" "requests"' in line


def test_the_plugin_manager_installs_the_package_runs_it_and_uninstalls_every_trace(
    stash_server_factory, stash_version, python_envs, tmp_path
):
    """Stash's own Available Plugins route, through its package API: the source is a
    file:// URL (a plain path is refused), the package is what `stash-backup package`
    built from the wheel. Uninstalling removes the listed files, then the folder
    without recursing: our layout has no subfolder, so nothing stays."""
    server = stash_server_factory(stash_version, install_plugin=False)
    wheel_cli(python_envs, tmp_path, "package", "--output", str(tmp_path / "source"))
    url = (tmp_path / "source" / "index.yml").as_uri()
    with pytest.raises(Exception, match="unsupported protocol scheme"):
        server.graphql(
            "query($s: String!) { availablePackages(type: Plugin, source: $s) { package_id } }",
            {"s": str(tmp_path / "source" / "index.yml")},
        )
    available = server.graphql(
        "query($s: String!) { availablePackages(type: Plugin, source: $s) { package_id } }", {"s": url}
    )["availablePackages"]
    assert [p["package_id"] for p in available] == [PLUGIN]
    server.graphql(
        "mutation($s: [PackageSourceInput!]) { configureGeneral(input: {pluginPackageSources: $s}) "
        "{ pluginPackageSources { url } } }",
        {"s": [{"name": "local", "url": url, "local_path": "local"}]},
    )
    spec = {"p": [{"id": PLUGIN, "sourceURL": url}]}
    job = server.graphql("mutation($p: [PackageSpecInput!]!) { installPackages(type: Plugin, packages: $p) }", spec)
    assert server.wait_for_job(job["installPackages"])["status"] == "FINISHED"
    folder = server.plugins / "local" / PLUGIN
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["manifest", f"{PLUGIN}.yml", "stash_backup_plugin.pyz", "backups.js", "backups.css"]
    )
    run_every_task(server)
    assert not [p for p in folder.rglob("*") if p.is_dir()]  # no __pycache__ either
    job = server.graphql("mutation($p: [PackageSpecInput!]!) { uninstallPackages(type: Plugin, packages: $p) }", spec)
    assert server.wait_for_job(job["uninstallPackages"])["status"] == "FINISHED"
    assert not folder.exists(), sorted(str(p) for p in folder.rglob("*"))
    assert not server.graphql("{ plugins { id } }")["plugins"]
    assert archive_dir(server).is_dir()  # the backups are the user's: an uninstall keeps them


def test_stash_gives_its_api_key_to_a_session_cookie(stash_server_factory, stash_version):
    """What the plugin asks instead of reading config.yml: no key while Stash has no
    credentials; with them, the key, to a request carrying only the session cookie."""
    import requests
    from stash_backup_plugin.server.connection import Connection
    from stash_backup_plugin.server.graphql_client import StashClient

    server = stash_server_factory(stash_version, install_plugin=False)
    with StashClient(Connection(server.url)) as client:
        assert client.plugin_settings_and_api_key(PLUGIN) == ({}, None)
    key = server.enable_credentials()
    with requests.Session() as browser:
        browser.post(f"{server.url}/login", data={"username": "admin", "password": "s3cret-pass"}, timeout=30)
        cookie = browser.cookies["session"]
    with StashClient(Connection(server.url, session_cookie=cookie)) as client:
        assert client.plugin_settings_and_api_key(PLUGIN) == ({}, key)


def test_https_pins_the_certificate_named_by_ssl_cert_path(stash_server_factory, tmp_path):
    """config.yml's ssl_cert_path wins over stash.crt in the config folder (which the
    harness also writes, so pinning the wrong one fails); read without PyYAML."""
    tls = tmp_path / "my tls"
    tls.mkdir()
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=nas.example.org",
            "-keyout",
            str(tls / "key.pem"),
            "-out",
            str(tls / "cert.pem"),
            "-days",
            "3",
        ],
        check=True,
        capture_output=True,
    )
    server = stash_server_factory(
        NEW_VERSION, tls=True, ssl_cert_path=str(tls / "cert.pem"), ssl_key_path=str(tls / "key.pem")
    )
    assert (server.root / "stash.crt").read_bytes() != (tls / "cert.pem").read_bytes()
    seed_content(server)
    assert server.run_plugin_task(PLUGIN, "Download backup to archive")["status"] == "FINISHED"
    assert not plugin_errors(server)
    assert manifest(server)[0]["verified_ok"]


def logged(server, text: str, timeout: float = 5) -> list:
    """Stash's log lines holding `text`; it may log a plugin's answer after it ends the job."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in server.log_text().splitlines() if text in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_clone_in_the_plugins_folder_is_the_plugin(stash_server_factory, stash_version, python_envs):
    """The repository as a user clones it into Stash's plugins folder, on a Python with
    only requests: Stash loads plugin.yml (the ID is its name, "plugin") and no other
    file as a plugin; the first Backup answers the one-line fix, which puts gql into the
    clone's python-packages; then the task backs up. Stash then loads no .yml from
    python-packages either."""
    server = stash_server_factory(stash_version, install_plugin=False)
    clone = copy_of_checkout(server.plugins / "stash-backup")
    server.reload_plugins()
    plugins = server.graphql("{ plugins { id tasks { name } } }")["plugins"]
    assert [(p["id"], [t["name"] for t in p["tasks"]]) for p in plugins] == [("plugin", TASKS)]
    import requests

    for kind, path in (("javascript", "backups.js"), ("css", "backups.css")):  # the Backups page, from the package
        served = requests.get(f"{server.url}/plugin/plugin/{kind}", timeout=30)
        assert (
            served.status_code == 200
            and (clone / "stash_backup_plugin/plugin/ui" / path).read_bytes() in served.content
        )
    seed_content(server)
    assert server.run_plugin_task("plugin", "Backup database")["status"] == "FINISHED"
    [line] = logged(server, "No module named 'gql'")
    assert "ERRO" in line and f'--target "{clone / "python-packages"}" "gql[requests]>=3.5"' in line
    fix = line.split("Fix, inside Stash's container: " if "container" in line else "Fix: ")[1]
    subprocess.run(
        shlex.split(fix.split(" (Stash's Python has no pip")[0]),
        check=True,
        capture_output=True,
        timeout=600,
        env=clean_env(),
    )  # the user's fix, from PyPI
    server.reload_plugins()
    assert [p["id"] for p in server.graphql("{ plugins { id } }")["plugins"]] == ["plugin"]  # none from python-packages
    assert server.run_plugin_task("plugin", "Backup database")["status"] == "FINISHED"
    made = sorted(server.backups.glob("stash-go.sqlite.*"))
    [done] = logged(server, "[Plugin / Stash Backup] Stash backed up its database")
    assert len(made) == 1 and str(made[0]) in done
    assert not plugin_errors(server)
    assert not logged(server, "Error loading plugin", timeout=0)
