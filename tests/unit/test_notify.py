"""Notifications: a failed backup and an overdue one reach the user through Apprise
(its json:// scheme, posting to a real local HTTP receiver) and through a plain
webhook without Apprise; the secrets in those URLs appear in no output and no file."""

import base64
import hashlib
import json
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.support.harness import run_cli
from stash_backup_plugin.server.notify import describe_url

from tests.support.notify_receiver import Receiver

SECRET = "n0tify-s3cret-t0ken"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe is closed


def old_verified_archive(folder: Path, age: timedelta) -> None:
    """An archive whose only (verified) backup was added `age` ago: only its manifest
    matters to the status, so no backup file is needed."""
    added = (datetime.now(timezone.utc) - age).replace(microsecond=0)
    entry = {
        "file": "stash-go.sqlite.85.20260101_030000.zip",
        "size": 1234,
        "sha256": "0" * 64,
        "schema_version": 85,
        "created": "2026-01-01T03:00:00",
        "kind": "zip",
        "added_at": added.isoformat(),
        "verified_at": added.isoformat(),
        "verified_level": "quick",
        "verified_ok": True,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "entries": [entry]}))


def fingerprint(url: str) -> str:
    """What a user computes to tell which URL a message names: `printf %s URL | sha256sum`."""
    return hashlib.sha256(url.encode()).hexdigest()[:8]


def everything_written(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_a_failed_backup_is_reported_through_apprise_json(tmp_path):
    archive = tmp_path / "archive"
    with Receiver() as receiver:
        url = f"json://stash:{SECRET}@127.0.0.1:{receiver.port}/hook"
        result = run_cli(
            "download", "--url", f"http://127.0.0.1:{closed_port()}", "--dest", str(archive), "--notify", url
        )
        requests = receiver.wait_for(1)
    assert result.returncode == 1
    assert len(requests) == 1, result.stderr
    sent = requests[0]
    assert sent["json"]["type"] == "failure"
    assert "Stash backup failed" in sent["json"]["title"]
    assert "cannot" in sent["json"]["message"].lower() or "connect" in sent["json"]["message"].lower()
    assert "What to do" in sent["json"]["message"]
    # Apprise sent our credentials from the URL: it really used the URL we gave.
    assert sent["headers"]["Authorization"] == "Basic " + base64.b64encode(f"stash:{SECRET}".encode()).decode()
    assert SECRET not in result.stderr + result.stdout
    assert SECRET not in everything_written(archive)
    status = json.loads((archive / "status.json").read_text())
    assert status["jobs"]["download"]["last_failure"]
    assert f"json://… (fingerprint {fingerprint(url)})" in result.stderr  # named by scheme and fingerprint only


def test_an_overdue_backup_is_reported_once_per_spell(tmp_path):
    archive = tmp_path / "archive"
    old_verified_archive(archive, timedelta(days=3))
    with Receiver() as receiver:
        url = f"json://127.0.0.1:{receiver.port}/overdue?token={SECRET}"
        first = run_cli("status", "--dest", str(archive), "--max-age", "1d", "--notify", url)
        second = run_cli("status", "--dest", str(archive), "--max-age", "1d", "--notify", url)
        requests = receiver.wait_for(1)
    assert first.returncode == 1 and second.returncode == 1, first.stderr
    assert "overdue" in first.stderr
    assert len(requests) == 1, "the second check of the same overdue spell must not notify again"
    assert requests[0]["json"]["type"] == "warning"
    assert "3 d old" in requests[0]["json"]["message"]
    assert SECRET not in first.stderr + first.stdout + second.stderr


def test_a_fresh_backup_is_not_overdue(tmp_path):
    archive = tmp_path / "archive"
    old_verified_archive(archive, timedelta(hours=2))
    with Receiver() as receiver:
        result = run_cli(
            "status", "--dest", str(archive), "--max-age", "1d", "--notify", f"json://127.0.0.1:{receiver.port}/x"
        )
    assert result.returncode == 0, result.stderr
    assert receiver.requests == []


def test_the_plain_webhook_works_without_apprise(tmp_path):
    # An `apprise` that cannot be imported: the webhook must not need it.
    shim = tmp_path / "no-apprise" / "apprise"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('apprise is not installed here')\n")
    archive = tmp_path / "archive"
    with Receiver() as receiver:
        url = f"http://127.0.0.1:{receiver.port}/webhook?key={SECRET}"
        result = run_cli(
            "download",
            "--url",
            f"http://127.0.0.1:{closed_port()}",
            "--dest",
            str(archive),
            "--notify",
            url,
            env={"PYTHONPATH": str(shim.parent)},
        )
        requests = receiver.wait_for(1)
    assert result.returncode == 1
    assert len(requests) == 1, result.stderr
    assert requests[0]["path"] == f"/webhook?key={SECRET}"
    assert requests[0]["json"]["type"] == "failure" and requests[0]["json"]["source"] == "stash-backup"
    assert SECRET not in result.stderr + result.stdout


def test_an_apprise_url_without_apprise_says_how_to_install_it(tmp_path):
    shim = tmp_path / "no-apprise" / "apprise"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('apprise is not installed here')\n")
    result = run_cli(
        "status",
        "--dest",
        str(tmp_path / "empty"),
        "--notify",
        f"ntfy://{SECRET}@127.0.0.1/topic",
        env={"PYTHONPATH": str(shim.parent)},
    )
    assert result.returncode == 1  # no backup at all: overdue
    assert "pip install 'stash-backup[notify]'" in result.stderr
    assert SECRET not in result.stderr


@pytest.mark.parametrize("status", [500])
def test_a_failing_endpoint_is_a_warning_and_never_leaks_the_url(tmp_path, status):
    with Receiver(status=status) as receiver:
        url = f"json://user:{SECRET}@127.0.0.1:{receiver.port}/down"
        result = run_cli("status", "--dest", str(tmp_path / "empty"), "--notify", url)
        receiver.wait_for(1)
    assert f"warning: notification to json://… (fingerprint {fingerprint(url)}) failed" in result.stderr
    assert SECRET not in result.stderr + result.stdout


# Pushover's URL is pover://<user key>@<application token>: the host part *is* the token,
# so "scheme and host" named it. Prowl's is prowl://<api key>.
PUSHOVER_USER = "uQiRzpo4DXghDmr9QzzfQu27cmVRsG"
PUSHOVER_TOKEN = "azGDORePK8gMaC0QOYAMyEEuzJnyUi"


def test_a_pushover_url_is_named_by_fingerprint_through_the_real_apprise(tmp_path):
    archive = tmp_path / "archive"
    url = f"pover://{PUSHOVER_USER}@{PUSHOVER_TOKEN}"
    # No backup: overdue. Apprise really sends (api.pushover.net, not reachable from the tests: a failure).
    result = run_cli("status", "--dest", str(archive), "--notify", url)
    assert result.returncode == 1
    assert (
        f"warning: notification to pover://… (fingerprint {fingerprint(url)}) failed: "
        "the service did not accept the message" in result.stderr
    ), result.stderr
    shown = result.stderr + result.stdout + (everything_written(archive) if archive.exists() else "")
    for secret in (PUSHOVER_TOKEN, PUSHOVER_USER, PUSHOVER_TOKEN[:8], PUSHOVER_USER[:8]):
        assert secret.lower() not in shown.lower()  # a host name is shown lower-cased


def test_an_apprise_that_raises_is_a_warning_that_names_no_part_of_the_url(tmp_path):
    # An Apprise whose plugin raises with the token in its message (as requests' errors quote URLs).
    shim = tmp_path / "raising-apprise" / "apprise"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "class NotifyType:\n    FAILURE = 'failure'\n    WARNING = 'warning'\n"
        "class Apprise:\n    def add(self, url):\n        self.url = url\n        return True\n"
        "    def notify(self, **kwargs):\n"
        "        raise ConnectionError('cannot reach ' + self.url.split('@')[1] + '/1/messages.json')\n"
    )
    url = f"pover://{PUSHOVER_USER}@{PUSHOVER_TOKEN}"
    result = run_cli(
        "status", "--dest", str(tmp_path / "archive"), "--notify", url, env={"PYTHONPATH": str(shim.parent)}
    )
    assert result.returncode == 1  # overdue, as without notifications: the notification did not fail the run
    assert (
        f"warning: notification to pover://… (fingerprint {fingerprint(url)}) failed: "
        "Apprise failed (ConnectionError)" in result.stderr
    ), result.stderr
    assert PUSHOVER_TOKEN not in result.stderr + result.stdout


def test_a_webhook_is_named_by_fingerprint_and_still_delivered(tmp_path):
    archive = tmp_path / "archive"
    with Receiver() as receiver:
        url = f"http://127.0.0.1:{receiver.port}/hook/{SECRET}"
        result = run_cli("status", "--dest", str(archive), "--notify", url)
        requests = receiver.wait_for(1)
    assert requests[0]["path"] == f"/hook/{SECRET}"
    assert f"notification sent to http://… (fingerprint {fingerprint(url)})" in result.stderr, result.stderr
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "url",
    [
        "prowl://0123456789abcdef0123456789abcdef01234567",
        "pover://user-key@app-token",
        "json://user:password@hook.example/path?token=query",
        "https://hook.example:8443/t0ken?key=value",
        "not a url at all",
        "://no-scheme",
        "x" * 40 + "://host",
    ],
)
def test_describe_url_shows_the_scheme_and_a_fingerprint_of_the_whole_url_only(url):
    scheme, _, rest = url.partition("://")
    shown = describe_url(url)
    assert shown.endswith(f"://… (fingerprint {fingerprint(url)})")
    assert shown.split("://")[0] in (scheme, "?")
    assert rest not in shown or not rest
    for part in ("0123456789abcdef", "user", "app-token", "password", "hook.example", "t0ken", "value", "query"):
        assert part not in shown
