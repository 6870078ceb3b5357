"""The store's parts: the record format, the snapshot codec, blobs added durably."""

import gzip
import hashlib
import io
import os
import zlib

import pytest

from stash_backup_plugin.core import record, snapshot
from stash_backup_plugin.core.errors import VerificationError
from stash_backup_plugin.core.store import Store, commit_snapshot, write_snapshot
from tests.support.processes import gone_pid


def header(blobs, name="stash-go.sqlite.85.20261126_030000"):
    return record.Header(
        name=name,
        created="2026-11-26T03:00:00",
        schema_version=85,
        database_member="stash-go.sqlite",
        snapshot=record.Snapshot(f"snapshots/{name}.gz", 1000, "ab" * 32, 300),
        blob_count=len(blobs),
        blob_bytes=sum(s for _, s in blobs),
        new_blobs=1,
        new_blob_bytes=7,
        source="filesystem",
        added_at="2026-11-26T03:00:05+00:00",
    )


BLOBS = [("0" * 32, 5), ("1" * 31 + "f", 7), ("a" * 32, 9)]


# --- record -----------------------------------------------------------------------------


def test_record_lines_are_golden():
    lines = list(record.encode(header(BLOBS), iter(BLOBS)))
    assert lines[1:] == [f"{'0' * 32} 5\n", f"{'1' * 31}f 7\n", f"{'a' * 32} 9\n", "end 3 21\n"]
    assert record.Header.from_json(lines[0]) == header(BLOBS)
    assert list(record.decode_blobs(lines[1:], "r")) == BLOBS


def test_record_refuses_to_lie():
    with pytest.raises(ValueError, match="not sorted"):
        list(record.encode(header(BLOBS), [BLOBS[1], BLOBS[0], BLOBS[2]]))
    with pytest.raises(ValueError, match="header says"):
        list(record.encode(header(BLOBS), BLOBS[:2]))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda lines: lines[:-1], "without its end line"),
        (lambda lines: lines[:2] + lines[3:], "unexpected line"),  # a blob missing: the end line does not add up
        (lambda lines: [lines[1], lines[0]] + lines[2:], "out of order"),
        (lambda lines: lines[:1] + ["zz\n"] + lines[1:], "unexpected line"),
    ],
)
def test_a_damaged_blob_list_never_passes_for_a_whole_one(damage, message):
    lines = list(record.encode(header(BLOBS), BLOBS))[1:]
    with pytest.raises(VerificationError, match=message):
        list(record.decode_blobs(damage(lines), "r"))


def test_record_file_roundtrip_and_truncation(tmp_path):
    store = Store(tmp_path)
    store.write_record(header(BLOBS), BLOBS)
    assert store.record_names() == ["stash-go.sqlite.85.20261126_030000"]
    assert store.header("stash-go.sqlite.85.20261126_030000").new_bytes == 307
    with store.blob_list("stash-go.sqlite.85.20261126_030000") as blobs:
        assert list(blobs) == BLOBS
    path = store.record_path("stash-go.sqlite.85.20261126_030000")
    path.write_bytes(path.read_bytes()[:-12])  # gzip trailer and some data cut off
    with pytest.raises(VerificationError):
        with store.blob_list("stash-go.sqlite.85.20261126_030000") as blobs:
            list(blobs)


def test_referenced_merges_records_in_order(tmp_path):
    store = Store(tmp_path)
    store.write_record(header(BLOBS, "a.85.20261126_030000"), BLOBS)
    other = [("0" * 32, 5), ("b" * 32, 1)]
    store.write_record(header(other, "a.85.20261127_030000"), other)
    assert list(store.referenced(store.record_names())) == ["0" * 32, "0" * 32, "1" * 31 + "f", "a" * 32, "b" * 32]


# --- snapshot codec ---------------------------------------------------------------------


def test_snapshot_is_plain_gzip_in_several_members():
    data = os.urandom(1000) * 9000  # 9 MB: several members
    out = io.BytesIO()
    digest = snapshot.compress(io.BytesIO(data), out, threads=2)
    assert digest.size == len(data) and digest.sha256 == hashlib.sha256(data).hexdigest()
    assert gzip.decompress(out.getvalue()) == data  # any gzip reader reads it
    back = io.BytesIO()
    assert snapshot.decompress(io.BytesIO(out.getvalue()), back).sha256 == digest.sha256
    assert back.getvalue() == data


def test_empty_snapshot_roundtrips():
    out = io.BytesIO()
    snapshot.compress(io.BytesIO(b""), out)
    assert snapshot.decompress(io.BytesIO(out.getvalue()), io.BytesIO()).size == 0


@pytest.mark.parametrize("cut", [1, 10, 5000])
def test_truncated_or_damaged_snapshot_is_refused(cut):
    data = os.urandom(100) * 50000
    out = io.BytesIO()
    snapshot.compress(io.BytesIO(data), out)
    packed = out.getvalue()
    with pytest.raises(VerificationError):
        snapshot.decompress(io.BytesIO(packed[:-cut]), io.BytesIO())
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(VerificationError):
        snapshot.decompress(io.BytesIO(bytes(flipped)), io.BytesIO())
    with pytest.raises(VerificationError):
        snapshot.decompress(io.BytesIO(packed + b"garbage"), io.BytesIO())


def test_snapshot_written_and_committed(tmp_path):
    database = tmp_path / "db.sqlite"
    database.write_bytes(b"SQLite format 3\x00" + b"x" * 100000)
    store = Store(tmp_path / "archive")
    temp, digest = write_snapshot(store, "n.85.20261126_030000", database)
    assert temp.parent == store.incoming and not store.snapshot_names()
    final = commit_snapshot(store, "n.85.20261126_030000", temp)
    assert store.snapshot_names() == ["n.85.20261126_030000"] and not temp.exists()
    assert zlib.decompress(final.read_bytes(), 31) == database.read_bytes()
    assert digest.sha256 == hashlib.sha256(database.read_bytes()).hexdigest()


# --- blobs ------------------------------------------------------------------------------


def test_blob_writer_adds_checked_blobs_and_lists_them_sorted(tmp_path):
    store = Store(tmp_path)
    contents = [os.urandom(100 + n) for n in range(20)]
    with store.blob_writer(batch=7) as writer:
        for data in contents:
            assert writer.add(hashlib.md5(data).hexdigest(), io.BytesIO(data)) == len(data)
        assert writer.add("0" * 32, io.BytesIO(b"not matching")) is None  # refused, nothing kept
    listed = list(store.stored_blobs())
    assert [b.checksum for b in listed] == sorted(hashlib.md5(d).hexdigest() for d in contents)
    assert all(store.blob_path(b.checksum).read_bytes() for b in listed)
    assert not list(store.incoming.iterdir())
    assert store.blob_size("0" * 32) is None


def test_a_failed_run_leaves_nothing_under_a_blob_name(tmp_path):
    store = Store(tmp_path)
    data = b"image"
    with pytest.raises(RuntimeError):
        with store.blob_writer(batch=100) as writer:
            writer.add(hashlib.md5(data).hexdigest(), io.BytesIO(data))
            raise RuntimeError("killed")
    assert list(store.stored_blobs()) == [] and not list(store.incoming.iterdir())


def test_a_batch_that_fails_to_commit_on_its_thread_fails_the_run_and_leaves_no_copy(tmp_path, monkeypatch):
    """Batches are committed on a thread of their own while the next is copied: a
    failure there (the disk full at the rename) is raised in the run, the blobs
    committed before it stay whole, and no copy is left in incoming/."""
    import errno

    from stash_backup_plugin.core import store as store_module
    from stash_backup_plugin.core.errors import StorageError

    store = Store(tmp_path)
    contents = [os.urandom(200 + n) for n in range(12)]
    real_replace, renamed = os.replace, []

    def replace(source, target):
        if len(renamed) == 6:  # the second batch, half way
            raise OSError(errno.ENOSPC, "No space left on device")
        renamed.append(target)
        real_replace(source, target)

    monkeypatch.setattr(store_module.os, "replace", replace)
    with pytest.raises(StorageError, match="disk is full"):
        with store.blob_writer(batch=4) as writer:
            for data in contents:
                writer.add(hashlib.md5(data).hexdigest(), io.BytesIO(data))
    assert len(renamed) == 6 and not list(store.incoming.iterdir())
    for blob in store.stored_blobs():
        data = store.blob_path(blob.checksum).read_bytes()
        assert hashlib.md5(data).hexdigest() == blob.checksum


def test_pending_marker_and_cleanup_of_a_dead_run(tmp_path):
    store = Store(tmp_path)
    with store.pending("x.85.20261126_030000"):
        assert store.protect_since() is not None
        assert store.clean_after_killed_runs() == []  # our own process is alive
    assert store.protect_since() is None
    dead = tmp_path / "pending" / "y.json"
    dead.write_text('{"name": "y", "pid": 999999999, "host": "%s", "started": 1}' % __import__("socket").gethostname())
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "leftover").write_bytes(b"x")
    removed = store.clean_after_killed_runs()
    assert not dead.exists() and not (tmp_path / "incoming" / "leftover").exists() and len(removed) == 2


def test_temps_a_killed_run_left_where_it_writes_in_place_go_once_their_maker_is_gone(tmp_path):
    """A record, a page list, a marker: each is written beside its final name. A run
    killed mid-write leaves a temp there, which no listing shows and nothing else removes."""
    from stash_backup_plugin.core.naming import TEMP_MARKER
    from stash_backup_plugin.core.processes import machine_id

    store = Store(tmp_path)
    dead, live = [], []
    for folder in ("backups", "snapshots", "pending"):
        (tmp_path / folder).mkdir()
        for pid, kept in ((gone_pid(), dead), (os.getpid(), live)):
            temp = tmp_path / folder / f".x.85.20261126_030000.json{TEMP_MARKER}{pid}.{machine_id()}-abc"
            temp.write_bytes(b"partial")
            kept.append(temp)
    assert sorted(store.clean_after_killed_runs()) == sorted(dead)
    assert all(p.exists() for p in live) and not any(p.exists() for p in dead)
    assert store.record_names() == [] and store.pending_markers() == []


def test_what_the_store_creates_takes_the_archive_folders_owner(tmp_path):
    """The plugin (Stash's user) and a CLI run as root share the archive: blobs,
    their folders and snapshots get the archive folder's owner, as liveness's
    take_parent_owner does for every file we create."""
    archive = tmp_path / "archive"
    archive.mkdir()
    owner = (4321, 4321) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(archive, *owner)
    store = Store(archive)
    data = b"image bytes"
    with store.blob_writer() as writer:
        writer.add(hashlib.md5(data).hexdigest(), io.BytesIO(data))
    database = tmp_path / "db"
    database.write_bytes(b"x" * 1000)
    commit_snapshot(store, "n.85.20261126_030000", write_snapshot(store, "n.85.20261126_030000", database)[0])
    made = [p for p in archive.rglob("*")]
    assert made and all((p.stat().st_uid, p.stat().st_gid) == owner for p in made), [
        (str(p), p.stat().st_uid) for p in made if (p.stat().st_uid, p.stat().st_gid) != owner
    ]


# --- pending markers of another machine that shares our host name ----------------------------

CONTAINER_RUN = """
import os, sys, time
with open("/proc/sys/kernel/ns_last_pid", "w") as last:  # the run's pid: one that is free on the host
    last.write(str(int(sys.argv[2]) - 1))
child = os.fork()
if child == 0:
    from stash_backup_plugin.core.store import Store
    with Store(sys.argv[1]).pending("stash-go.sqlite.85.20261126_030000"):
        print(os.getpid(), flush=True)
        time.sleep(120)
    os._exit(0)
os.waitpid(child, 0)
"""


def test_a_live_run_in_a_container_with_our_host_name_keeps_its_marker(tmp_path):
    """A real run in its own PID namespace (as in a container named like the host, same
    boot) marks the store; its pid does not exist out here. The cleanup here must not
    take it for a dead run of ours: that would let a prune collect what it is adding."""
    import subprocess
    import sys
    from pathlib import Path

    pid = gone_pid()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    run = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", CONTAINER_RUN, str(tmp_path), str(pid)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert run.stdout.readline().strip() == str(pid)
        assert not os.path.exists(f"/proc/{pid}")  # out here that pid names no process
        store = Store(tmp_path)
        [marker] = store.pending_markers()
        assert marker["host"] == __import__("socket").gethostname() and marker["pid"] == pid
        assert store.clean_after_killed_runs() == [] and len(store.pending_markers()) == 1
        assert store.protect_since() is not None
    finally:
        run.kill()
        run.wait()


def test_only_a_marker_of_this_machine_counts_as_dead_here(tmp_path):
    """Same host name, another machine id (another boot or PID namespace), or an older
    marker with the host name alone: kept. This machine's, of a pid that is gone: removed."""
    import json
    import socket
    import time
    from stash_backup_plugin.core.processes import machine_id
    from stash_backup_plugin.offsite.remote import Marker

    store = Store(tmp_path)
    (tmp_path / "pending").mkdir()
    dead, now, host = gone_pid(), time.time(), socket.gethostname()
    markers = {"container": {"machine": "0badf00d"}, "older": {}, "ours": {"machine": machine_id()}}
    for name, extra in markers.items():
        (tmp_path / "pending" / f"{name}.json").write_text(
            json.dumps({"name": name, "pid": dead, "host": host, "started": now, **extra})
        )
    removed = store.clean_after_killed_runs()
    assert [p.name for p in removed] == ["ours.json"]
    assert sorted(m["name"] for m in store.pending_markers()) == ["container", "older"]
    assert not Marker("pending/c.json", host, dead, now, "push", "0badf00d").stale(now)
    assert not Marker("pending/o.json", host, dead, now, "push").stale(now)
    assert Marker("pending/m.json", host, dead, now, "push", machine_id()).stale(now)
    assert Marker("pending/old.json", "elsewhere", 1, now - 49 * 3600, "push").stale(now)


def test_a_zombie_is_not_alive():
    """A child that exited and waits to be reaped runs nothing (a killed drill's Stash
    is one until init reaps it): its pid file protects nothing."""
    import subprocess
    import sys
    import time

    from stash_backup_plugin.core.processes import alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert alive(child.pid) is False  # exited, not yet reaped (we have not waited)
    assert child.wait() == 0
    assert alive(os.getpid()) is True
