"""`snapshot --offline` of an unchanged stopped Stash (a Stash-shaped library,
benchmarks/library.py: database + N blobs on the filesystem) against what a user would
script before an upgrade: `sqlite3 db ".backup copy"` + `rsync -a --ignore-existing` of the
blobs folder. Both targets are filled once first, so every measured run is the "nothing
changed" case. Ours also checks the copy (quick_check) and passes its pages (hashed, all
already stored: nothing new is written); the
breakdown says which part dominates.

    python benchmarks/snapshot.py --size-mib 256 --blobs 10000 --runs 3"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import library  # noqa: E402
from benchmarks.harness import Comparison, compare, run_measured  # noqa: E402

MiB = 1 << 20
ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))


def _stopped_stash(lib: library.Library, folder: Path) -> Path:
    """A config.yml naming the (pristine, only read) library's database and blobs."""
    from tests.support.stash_server.server import free_port

    config = folder / "config.yml"
    config.write_text(
        f"database: {lib.database}\nblobs_path: {lib.blobs}\nblobs_storage: FILESYSTEM\n"
        f"backup_directory_path: {folder / 'backups'}\nport: {free_port()}\n"
    )
    return config


def bench_snapshot(database_bytes: int, blob_count: int, runs: int, work: Path) -> tuple[Comparison, list[str]]:
    lib = library.library(database_bytes, blob_count)
    config = _stopped_stash(lib, work)
    archive, copy = work / "snapshot-archive", work / "reference"
    (copy / "blobs").mkdir(parents=True)
    ours_command = [
        sys.executable,
        "-m",
        "stash_backup_plugin",
        "snapshot",
        "--offline",
        "--quiet",
        "--config",
        str(config),
        "--dest",
        str(archive),
    ]
    reference_command = [
        "sh",
        "-c",
        f"sqlite3 '{lib.database}' \".backup '{copy / 'stash-go.sqlite'}'\" && "
        f"rsync -a --ignore-existing '{lib.blobs}/' '{copy}/blobs/'",
    ]
    subprocess.run(ours_command, env=ENV, check=True)  # the first, full run of each: not measured
    subprocess.run(reference_command, check=True)
    size = f"{lib.database.stat().st_size // MiB} MiB + {blob_count} blobs"
    result = compare(
        "snapshot --offline, unchanged",
        size,
        "sqlite3 .backup+rsync",
        lambda: run_measured(reference_command),
        lambda: run_measured(ours_command, env=ENV),
        runs,
    )
    return result, _breakdown(lib, work)


def _breakdown(lib: library.Library, work: Path) -> list[str]:
    """The parts of an unchanged snapshot, timed one by one in this process."""
    from stash_backup_plugin.core.hashing import file_digest
    from stash_backup_plugin.core.page_store import write_pages
    from stash_backup_plugin.core.sqlite_check import QUICK, check_database, open_unchanged
    from stash_backup_plugin.core.stored import FolderSource
    from stash_backup_plugin.core.sqlite_check import filesystem_blob_references
    from stash_backup_plugin.core.store import Store

    store = Store(work / "snapshot-archive")
    copy = work / "breakdown.sqlite"
    parts = []

    def timed(label, action):
        started = time.perf_counter()
        action()
        parts.append((label, time.perf_counter() - started))

    def backup_api():
        with open_unchanged(lib.database) as source, sqlite3.connect(copy) as target:
            source.backup(target)

    timed("copy (SQLite backup API)", backup_api)
    timed("quick_check of the copy", lambda: check_database(copy, QUICK, blob_references=False))
    timed("SHA-256 of the copy", lambda: file_digest(copy))
    # the archive holds every page already (the measured runs stored them): hash and look up only
    timed("page pass (beside the blobs)", lambda: write_pages(store.folder, store.incoming, copy))
    source = FolderSource([lib.blobs])
    timed(
        "blob walk (all present: stat only)",
        lambda: [store.blob_size(c) or source.size(c) for c in filesystem_blob_references(copy)],
    )
    copy.unlink()
    return ["  " + "  ".join(f"{label} {seconds:.2f}s" for label, seconds in parts)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--blobs", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as folder:
        result, lines = bench_snapshot(args.size_mib * MiB, args.blobs, args.runs, Path(folder))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
