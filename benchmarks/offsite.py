"""Off-site copies against a real S3 server (SeaweedFS on 127.0.0.1), side by side with
rclone itself:

- first push of an archive (a Stash-shaped library stored once) vs `rclone copy` of the
  same archive folder to the same server (goal: <= 1.1x);
- a nightly push after one night of changes (benchmarks/library.night: ~1 % new blobs):
  the bytes the server received, counted by a TCP proxy in front of it, against the
  night's new data (goal: <= 1.05x), and its time vs `rclone copy` of only the new files;
- our process's peak memory (RSS, the Python process; rclone is separate) as the number
  of blobs grows: it should stay flat.

    python benchmarks/run.py --only offsite [--quick]"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

from benchmarks import library
from benchmarks.harness import Comparison, Sample, run_measured

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
MiB = 1 << 20
# Our CLI in-process, then its own peak RSS (GNU time's would be rclone's when larger).
RSS_WRAPPER = (
    "import os, resource, sys\n"
    "from stash_backup_plugin.cli.commands import main\n"
    "code = main(sys.argv[2:])\n"
    "open(os.environ['BENCH_RSS_FILE'], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def _archive_from(lib: library.Library, archive: Path, name: str) -> None:
    """Store the library's current database and blobs as one more backup (the plugin's path)."""
    sys.path.insert(0, str(REPO))
    from stash_backup_plugin.core import stored
    from stash_backup_plugin.core.reporting import Reporter
    from stash_backup_plugin.core.store import Store
    from stash_backup_plugin.core.verify import file_digest

    copy = archive.parent / f"{name}.sqlite"
    import sqlite3

    connection = sqlite3.connect(lib.database)
    connection.execute("VACUUM INTO ?", (str(copy),))
    connection.close()
    new = stored.checked_backup(name, copy, file_digest(copy), "quick", includes_blobs=True, source="filesystem")
    stored.store_backup(Store(archive), new, stored.FolderSource([lib.blobs]), Reporter())
    copy.unlink()


def _ours(config: Path, remote: str, archive: Path, rss_file: Path) -> tuple[Sample, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO), RCLONE_CONFIG=str(config), BENCH_RSS_FILE=str(rss_file))
    sample = run_measured(
        [PY, "-c", RSS_WRAPPER, "x", "offsite", "push", "-q", "--remote", remote, "--dest", str(archive)], env=env
    )
    return sample, int(rss_file.read_text()) * 1024


def _rclone(config: Path, *args: str) -> Sample:
    return run_measured(["rclone", "--config", str(config), *args])


def _bucket(config: Path) -> str:
    name = "b-" + uuid.uuid4().hex[:10]
    subprocess.run(["rclone", "--config", str(config), "mkdir", f"sw:{name}"], check=True, capture_output=True)
    return name


def bench_offsite(sizes: list[tuple[int, int]], runs: int, work: Path) -> list[Comparison]:
    sys.path.insert(0, str(REPO))
    from tests.support.offsite_servers import SeaweedFS

    server = SeaweedFS(work / "seaweedfs").start()
    config = work / "rclone.conf"
    results: list[Comparison] = []
    try:
        config.write_text(server.config("sw"))
        for database_bytes, blob_count in sizes:
            results += _bench_size(server, config, database_bytes, blob_count, runs, work)
    finally:
        server.stop()
    return results


def _bench_size(server, config: Path, database_bytes: int, blob_count: int, runs: int, work: Path) -> list[Comparison]:
    label = f"{database_bytes // MiB} MiB+{blob_count // 1000 or blob_count}{'k' if blob_count >= 1000 else ''}"
    lib = library.working_copy(library.library(database_bytes, blob_count), work / f"lib-{blob_count}")
    archive = work / f"archive-{blob_count}" / "archive"
    shutil.rmtree(archive.parent, ignore_errors=True)
    archive.parent.mkdir(parents=True)
    _archive_from(lib, archive, "stash-go.sqlite.85.20261126_030000")
    size = sum(p.stat().st_size for p in archive.rglob("*") if p.is_file())

    first = Comparison("offsite first push", label, payload_bytes=size, reference_name="rclone copy")
    rss = []
    for trial in range(runs):
        order = ["ours", "ref"] if trial % 2 else ["ref", "ours"]
        for which in order:
            bucket = _bucket(config)
            if which == "ours":
                sample, peak = _ours(config, f"sw:{bucket}/stash", archive, work / "rss")
                first.ours.append(Sample(sample.seconds, peak))
                rss.append(peak)
            else:
                first.reference.append(
                    _rclone(config, "copy", "--exclude", ".stash-backup.lock", str(archive), f"sw:{bucket}/copy")
                )
    print(first.row(), flush=True)

    # One night: change the library, store the night's backup.
    before = {p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file()}
    library.night(lib, 1)
    _archive_from(lib, archive, "stash-go.sqlite.85.20261127_030000")
    new_files = sorted(
        p.relative_to(archive).as_posix()
        for p in archive.rglob("*")
        if p.is_file()
        and p.relative_to(archive).as_posix() not in before
        and not p.name.startswith(".")
        and "pending" not in p.parts
    )
    new_bytes = sum((archive / f).stat().st_size for f in new_files)
    listing = work / "new-files.txt"
    listing.write_text("".join(f + "\n" for f in new_files))

    nightly = Comparison("offsite nightly push", label, payload_bytes=new_bytes, reference_name="rclone copy new")
    for trial in range(runs):
        order = ["ours", "ref"] if trial % 2 else ["ref", "ours"]
        for which in order:
            night_bucket = _bucket(config)
            if which == "ours":
                _seed_first_backup(config, night_bucket, archive, new_files, work)
                sample, peak = _ours(config, f"sw:{night_bucket}/stash", archive, work / "rss")
                nightly.ours.append(Sample(sample.seconds, peak))
            else:
                nightly.reference.append(
                    _rclone(
                        config,
                        "copy",
                        "--files-from-raw",
                        str(listing),
                        "--no-traverse",
                        str(archive),
                        f"sw:{night_bucket}/copy",
                    )
                )
    print(nightly.row(), flush=True)
    # What the server receives, counted apart: the proxy (Python) would slow the timed runs.
    from tests.support.offsite_servers import CountingProxy

    proxy = CountingProxy(server.ports["s3"])
    counted = work / "counted.conf"
    counted.write_text(server.config("sw").replace(f":{server.ports['s3']}", f":{proxy.port}"))
    night_bucket = _bucket(config)
    _seed_first_backup(config, night_bucket, archive, new_files, work)
    _ours(counted, f"sw:{night_bucket}/stash", archive, work / "rss")
    sent = [proxy.received]
    proxy.close()
    ratio = statistics.median(sent) / new_bytes
    print(
        f"offsite nightly push {label}: server received {statistics.median(sent):,} bytes for {new_bytes:,} bytes of "
        f"new data ({len(new_files)} new files): {ratio:.3f}x (target <= 1.05x) {'met' if ratio <= 1.05 else 'MISSED'}",
        flush=True,
    )
    print(f"offsite first push {label}: our peak RSS {max(rss) / MiB:.1f} MiB ({blob_count} blobs)", flush=True)
    return [first, nightly]


def _seed_first_backup(config: Path, bucket: str, archive: Path, new_files: list[str], work: Path) -> None:
    """A remote as our push leaves it after night 0: everything but the night's files,
    with the manifest naming the first backup (a push of a copy without them)."""
    seed = work / "seed-archive"
    shutil.rmtree(seed, ignore_errors=True)
    shutil.copytree(archive, seed, copy_function=os.link, ignore=shutil.ignore_patterns(".stash-backup.lock"))
    for relative in new_files:
        (seed / relative).unlink()
    env = dict(os.environ, PYTHONPATH=str(REPO), RCLONE_CONFIG=str(config))
    subprocess.run(
        [
            PY,
            "-m",
            "stash_backup_plugin",
            "offsite",
            "push",
            "-q",
            "--remote",
            f"sw:{bucket}/stash",
            "--dest",
            str(seed),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    shutil.rmtree(seed)
