"""The stash-backup CLI against real Stash servers, with and without credentials."""

import hashlib
import json
import socket
import zipfile

import pytest

from tests.support.stash_server.build import NEW_VERSION, OLD_VERSION
from tests.support.stash_server.server import seed_content

from tests.support.harness import run_cli

pytestmark = pytest.mark.e2e


def cli(server, *args, api_key=None, dest=None):
    extra = ["--url", server.url] + (["--api-key", api_key] if api_key else [])
    if dest is not None:
        extra += ["--dest", str(dest)]
    return run_cli(*args, *extra)


def test_download_list_verify_prune_with_an_api_key(stash_server_factory, stash_version, tmp_path):
    server = stash_server_factory(stash_version)
    seed_content(server)
    key = server.enable_credentials()
    dest = tmp_path / "archive"
    outputs = []
    for _ in range(2):
        result = cli(server, "download", "--json", api_key=key, dest=dest)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
        entry = json.loads(result.stdout)
        assert entry["verified_ok"] and entry["blob_count"] == 6 and entry["kind"] == "stored"
    listing = cli(server, "list", "--json", dest=dest)
    assert len(json.loads(listing.stdout)) == 2
    verify = cli(server, "verify", "--full-check", dest=dest)
    assert verify.returncode == 0 and "2 good, 0 bad" in verify.stderr
    prune = cli(server, "prune", "--keep-last", "1", "--json", dest=dest)
    decisions = json.loads(prune.stdout)
    assert [d["keep"] for d in decisions] == [True, False]
    assert len(json.loads(cli(server, "list", "--json", dest=dest).stdout)) == 1
    outputs += [
        listing.stdout,
        verify.stderr,
        prune.stdout,
        prune.stderr,
        server.log_text(),
        json.dumps(server.logs()),
        (dest / "manifest.json").read_text(),
    ]
    assert not any(key in text for text in outputs)


def backup_files(server):
    """Backups in Stash's backup folder (its anonymised database is not one)."""
    return sorted(p.name for p in server.backups.glob("stash-go.sqlite.*") if ".anonymous." not in p.name)


def test_backup_command_on_the_server_and_keep_last_there(stash_server_factory, stash_version):
    """Stash never removes its backups: --keep-last counts and removes only those this
    command made, unless --include-others (never the anonymised database)."""
    import time

    server = stash_server_factory(stash_version, install_plugin=False)
    seed_content(server)
    result = cli(server, "backup")
    assert result.returncode == 0, result.stderr
    [first] = backup_files(server)
    before_migration = server.backups / "stash-go.sqlite.72.20250101_000000"  # as Stash makes before a migration
    before_migration.write_bytes((server.backups / first).read_bytes() if not first.endswith(".zip") else b"x")
    anonymised = server.backups / "stash-go.sqlite.anonymous.85.20250102_000000"
    anonymised.write_bytes(b"scrambled")
    for _ in range(2):
        time.sleep(1.05)  # backup names carry seconds
        assert cli(server, "backup", "--keep-last", "2").returncode == 0
    ours = [n for n in backup_files(server) if n != before_migration.name]
    assert len(ours) == 2 and first not in ours and before_migration.exists() and anonymised.exists()
    time.sleep(1.05)
    result = cli(server, "backup", "--keep-last", "1", "--include-others")
    assert result.returncode == 0 and "removed" in result.stderr, result.stderr
    assert len(backup_files(server)) == 1 and not before_migration.exists() and anonymised.exists()


def test_without_a_key_on_a_server_with_credentials_is_a_one_line_401(stash_server_factory, tmp_path):
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    server.enable_credentials()
    for key in (None, "not-the-key"):
        result = cli(server, "download", api_key=key, dest=tmp_path / "a")
        assert result.returncode == 1
        assert "refused" in result.stderr and "API key" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        if key:
            assert key not in result.stderr
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").glob("stash-go*"))


def test_unreachable_server_is_a_one_line_error(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("download", "--url", f"http://127.0.0.1:{port}", "--dest", str(tmp_path / "a"))
    assert result.returncode == 1 and "cannot reach Stash" in result.stderr and "Traceback" not in result.stderr


def test_not_a_stash_server_is_a_one_line_error(tmp_path):
    from tests.support.fault_server import FaultServer

    with FaultServer(b"") as other:
        other.graphql = lambda body: {"errors": [{"message": 'Cannot query field "version"'}]}
        result = run_cli("download", "--url", other.url, "--dest", str(tmp_path / "a"))
    assert result.returncode == 1 and "Stash answered with an error" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_destination_is_a_one_line_error(stash_server_factory, tmp_path):
    server = stash_server_factory(OLD_VERSION, install_plugin=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli(server, "download", dest=blocker / "archive")
    assert result.returncode == 1 and "cannot use the archive folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_if_older_than_skips_a_recent_backup(stash_server_factory, tmp_path):
    server = stash_server_factory(OLD_VERSION, install_plugin=False, blobs_storage="DATABASE")
    dest = tmp_path / "archive"
    assert cli(server, "download", dest=dest).returncode == 0
    skipped = cli(server, "download", "--if-older-than", "1d", "--json", dest=dest)
    assert skipped.returncode == 0 and "younger than" in json.loads(skipped.stdout)["skipped"]
    assert len(list((dest / "backups").glob("stash-go.sqlite.*.record"))) == 1


def test_old_server_blobs_folder_not_readable_says_what_to_do(stash_server_factory, tmp_path):
    server = stash_server_factory(OLD_VERSION, install_plugin=False)
    seed_content(server)
    result = cli(server, "download", "--blobs-path", str(tmp_path / "nowhere"), dest=tmp_path / "a")
    assert result.returncode == 1 and "--no-blobs" in result.stderr
    no_blobs = cli(server, "download", "--no-blobs", "--json", dest=tmp_path / "a")
    assert no_blobs.returncode == 0 and json.loads(no_blobs.stdout)["includes_blobs"] is False


def test_export_writes_a_stash_zip_that_verify_checks(stash_server_factory, tmp_path):
    """export gives one self-contained zip in Stash v0.31's layout; verify PATH checks
    such a file and flags it once damaged."""
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    dest = tmp_path / "archive"
    entry = json.loads(cli(server, "download", "--json", dest=dest).stdout)
    path = tmp_path / "out" / "exported.zip"
    exported = run_cli("export", entry["file"], "--output", str(path), "--dest", str(dest))
    assert exported.returncode == 0, exported.stderr
    again = run_cli("export", entry["file"], "--output", str(path), "--dest", str(dest))
    assert again.returncode != 0 and "already exists" in again.stderr  # never overwritten
    good = run_cli("verify", str(path), "--json")
    assert good.returncode == 0 and json.loads(good.stdout)[0]["blob_count"] == 6
    with zipfile.ZipFile(path) as packed:
        assert hashlib.sha256(packed.read("stash-go.sqlite")).hexdigest() == entry["sha256"]
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    result = run_cli("verify", str(path), "--json")
    assert result.returncode == 1 and json.loads(result.stdout)[0]["ok"] is False
    missing = run_cli("export", "no-such-backup", "--output", str(tmp_path / "x.zip"), "--dest", str(dest))
    assert missing.returncode != 0 and "no backup named" in missing.stderr and "Traceback" not in missing.stderr


def test_download_link_with_an_external_host_is_fetched_from_our_url(stash_server_factory, tmp_path):
    """external_host makes Stash return links to a host we cannot reach (and must not
    send the key to): the CLI fetches the same path from the URL it was given."""
    server = stash_server_factory(NEW_VERSION, install_plugin=False, external_host="https://stash.invalid:4443")
    seed_content(server)
    link = server.graphql("mutation { backupDatabase(input: {download: true}) }")["backupDatabase"]
    assert link.startswith("https://stash.invalid:4443/downloads/")
    result = cli(server, "download", "--json", dest=tmp_path / "a")
    assert result.returncode == 0, result.stderr
