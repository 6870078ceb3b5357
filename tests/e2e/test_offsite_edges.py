"""Off-site edges against real servers (issue 19): a remote string in every form rclone
takes reaches the right place; no secret of it reaches a process's command line; a
bucket someone else writes cannot make a pull write outside its folder; an upload of
a lock marker cut short is no lock."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from stash_backup_plugin.offsite.rclone import Rclone
from stash_backup_plugin.offsite.remote import RemoteArchive

from tests.support.harness import run_cli
from tests.support.offsite_fixtures import bucket, local_archive, seaweed, sshd, write_config  # noqa: F401  (sshd: by name)
from tests.support.offsite_servers import ACCESS_KEY, SECRET_KEY, make_bucket

# Every test here starts a real server (SeaweedFS or sshd): -m "not e2e" leaves them out.
pytestmark = pytest.mark.e2e


def _rclone_recording_cmdlines(tmp_path: Path) -> tuple[Path, Path]:
    """An rclone that records its own /proc/<pid>/cmdline (what `ps` shows every
    user), then becomes the real rclone with the same arguments."""
    log = tmp_path / "cmdlines.txt"
    wrapper = tmp_path / "rclone-recorded"
    wrapper.write_text(
        f"#!/bin/sh\ntr '\\000' ' ' < /proc/$$/cmdline >> {log}\necho >> {log}\nexec {shutil.which('rclone')} \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper, log


def _forms(seaweed, name: str, tmp_path: Path) -> dict[str, tuple[str, str]]:
    """form -> (remote string, where to look for the result in plain rclone terms)."""
    keys = f"access_key_id={ACCESS_KEY},secret_access_key={SECRET_KEY}"
    return {
        "name:path": (f"sw:{name}/plain", f"sw:{name}/plain"),
        "name,options:path": (f"nokeys,{keys}:{name}/named", f"sw:{name}/named"),
        ":backend,options:path": (
            f":s3,provider=SeaweedFS,{keys},endpoint='{seaweed.endpoint}':{name}/fly",
            f"sw:{name}/fly",
        ),
        ":local:path": (f":local:{tmp_path / 'by-local-backend'}", str(tmp_path / "by-local-backend")),
        "local folder": (str(tmp_path / "plain-folder"), str(tmp_path / "plain-folder")),
    }


@pytest.mark.parametrize("daemon", ["rcd", "processes"])
@pytest.mark.parametrize(
    "form", ["name:path", "name,options:path", ":backend,options:path", ":local:path", "local folder"]
)
def test_a_push_to_each_form_of_remote_lands_there_and_no_secret_is_on_a_command_line(
    form, daemon, seaweed, tmp_path, local_archive
):
    name = "t-" + uuid.uuid4().hex[:12]
    config = write_config(tmp_path / "rclone.conf", seaweed=seaweed)
    with open(config, "a") as extra:  # the same server, its keys given only in the remote string
        extra.write(f"[nokeys]\ntype = s3\nprovider = SeaweedFS\nendpoint = {seaweed.endpoint}\n\n")
    make_bucket(config, f"sw:{name}")
    spec, plainly = _forms(seaweed, name, tmp_path)[form]
    wrapper, log = _rclone_recording_cmdlines(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    local_archive.backup()
    env = {
        "RCLONE_CONFIG": str(config),
        "STASH_BACKUP_REMOTE": spec,
        "STASH_BACKUP_RCLONE": str(wrapper),
        "STASH_BACKUP_RCLONE_RCD": "1" if daemon == "rcd" else "0",
    }

    push = run_cli("offsite", "push", "--dest", str(local_archive.folder), env=env, cwd=cwd)
    assert push.returncode == 0 and "Pushed 1 backup(s)" in push.stderr, push.stderr
    assert list(cwd.iterdir()) == []  # nothing written into the current folder
    cmdlines = log.read_text()
    assert cmdlines.count("\n") >= 3 and (" rcd " in cmdlines) == (daemon == "rcd"), cmdlines
    assert SECRET_KEY not in cmdlines and ACCESS_KEY not in cmdlines, cmdlines
    output = push.stdout + push.stderr
    assert SECRET_KEY not in output and ACCESS_KEY not in output, output

    there = RemoteArchive(Rclone(config), plainly)
    assert len(there.read_manifest().backups) == 1  # manifest, records and blobs all went to the same place
    assert len(there.files("blobs")) == 4 and len(there.files("backups")) == 1
    check = run_cli("offsite", "verify", "--dest", str(tmp_path / "v"), env=env, cwd=cwd)
    assert check.returncode == 0 and "1 good, 0 bad" in check.stderr, check.stderr
    assert "is not an rclone crypt remote" in check.stderr and check.stderr.count("not an rclone crypt") == 1


# --- a bucket written by someone else --------------------------------------------------------


def _gz_lines(data: bytes) -> list[str]:
    return gzip.decompress(data).decode("ascii").splitlines(keepends=True)


def _plant(rclone: Rclone, spec: str, relative: str, data: bytes, scratch: Path) -> None:
    scratch.mkdir(exist_ok=True)
    local = scratch / uuid.uuid4().hex
    local.write_bytes(data)
    rclone.check(rclone.run(["copyto", str(local), f"{spec}/{relative}"]), "plant", relative)


def _outside(victim: Path) -> str:
    """`victim`'s path as a relative one that climbs out of wherever it is joined."""
    return "../" * 16 + str(victim)[1:]


# attack -> (the record's header changes, the manifest's changes, the database replaced by a shell line)
HOSTILE = {
    "database member absolute": lambda victim, name: ({"database_member": str(victim / "planted")}, {}, True),
    "database member ../": lambda victim, name: ({"database_member": _outside(victim) + "/planted"}, {}, True),
    "backup name ../": lambda victim, name: (
        {"name": _outside(victim) + "/" + name},
        {"name": _outside(victim) + "/" + name},
        False,
    ),
    "record file ../": lambda victim, name: ({}, {"record_file": _outside(victim) + "/planted"}, False),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_a_hostile_bucket_cannot_make_a_pull_write_outside_its_folder(attack, bucket, tmp_path, local_archive):
    """Whoever can write the bucket writes a manifest and a record that are consistent
    with each other (the MD5s match) but name paths outside the pull's folder."""
    config, bucket_name = bucket
    spec = f"sw:{bucket_name}/stash"
    backup = local_archive.backup()
    env = {"RCLONE_CONFIG": str(config), "STASH_BACKUP_REMOTE": spec}
    assert run_cli("offsite", "push", "--dest", str(local_archive.folder), env=env).returncode == 0
    rclone = Rclone(config)
    manifest = json.loads(rclone.cat(f"{spec}/offsite-manifest.json"))
    entry = manifest["backups"][0]
    victim = tmp_path / "victim"
    victim.mkdir()
    header_change, manifest_change, shell = HOSTILE[attack](victim, backup.name)

    planting = tmp_path / "planting"
    lines = _gz_lines(rclone.cat(f"{spec}/{entry['record']['file']}"))
    header = json.loads(lines[0])
    header.update(header_change)
    record = gzip.compress((json.dumps(header) + "\n" + "".join(lines[1:])).encode("ascii"))
    _plant(rclone, spec, entry["record"]["file"], record, planting)
    entry["record"].update({"size": len(record), "md5": hashlib.md5(record).hexdigest()})
    if shell:
        shell_line = gzip.compress(b"echo planted by the bucket's writer\n")
        _plant(rclone, spec, entry["snapshot"]["file"], shell_line, planting)
        entry["snapshot"]["size"] = len(shell_line)
    entry["name"] = manifest_change.get("name", entry["name"])
    entry["record"]["file"] = manifest_change.get("record_file", entry["record"]["file"])
    _plant(rclone, spec, "offsite-manifest.json", json.dumps(manifest).encode(), planting)
    shutil.rmtree(planting)

    target = tmp_path / "pulled"
    pull = run_cli("offsite", "pull", entry["name"], "--to", str(target), env=env)
    output = pull.stdout + pull.stderr
    errors = [line for line in output.splitlines() if line.startswith("error")]
    assert pull.returncode not in (0, -9) and len(errors) == 1 and "Traceback" not in output, output
    assert list(victim.iterdir()) == [], output  # nothing planted outside --to
    kept = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()} if target.exists() else set()
    assert not [p for p in kept if p.split("/")[0] in ("snapshots", "backups", "blobs", "incoming")], kept


# --- the remote's lock ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sftp", "local"])
def test_a_lock_marker_whose_upload_was_cut_short_is_no_lock(kind, request, tmp_path, local_archive):
    """A push killed while SFTP uploads its marker leaves rclone's partial file,
    `pending/<host>.<pid>.json.<8 hex>.partial`, half written. It is no run's lock: later
    runs go on, name it, and remove it once its age proves no upload is behind it."""
    if kind == "sftp":
        server = request.getfixturevalue("sshd")
        folder = server.home / ("t-" + uuid.uuid4().hex[:10])
        config = write_config(tmp_path / "rclone.conf", sshd=server)
        spec = f"ssh:{folder}"
    else:
        folder = tmp_path / "remote-folder"
        config, spec = write_config(tmp_path / "rclone.conf"), str(folder)
    env = {"RCLONE_CONFIG": str(config), "STASH_BACKUP_REMOTE": spec}
    local_archive.backup()
    assert run_cli("offsite", "push", "--dest", str(local_archive.folder), env=env).returncode == 0
    partial = folder / "pending" / "otherhost.4242.json.1a2b3c4d.partial"
    partial.parent.mkdir(exist_ok=True)
    partial.write_text('{"host": "otherhost", "pi')  # the upload's first bytes

    local_archive.backup(new_images=1)
    push = run_cli("offsite", "push", "--dest", str(local_archive.folder), env=env)
    assert push.returncode == 0 and "Pushed 1 backup(s)" in push.stderr, push.stderr
    assert "otherhost.4242.json.1a2b3c4d.partial: not a lock marker" in push.stderr
    assert partial.exists()  # young: it may be an upload under way, and it blocks nothing
    prune = run_cli("offsite", "prune", "--keep-last", "5", "--dest", str(local_archive.folder), env=env)
    assert prune.returncode == 0, prune.stderr

    old = time.time() - 3 * 24 * 3600
    os.utime(partial, (old, old))
    again = run_cli("offsite", "push", "--dest", str(local_archive.folder), env=env)
    assert again.returncode == 0 and "an upload interrupted two days ago or more" in again.stderr, again.stderr
    assert not partial.exists()
    assert sorted(p.name for p in (folder / "pending").iterdir()) == []
