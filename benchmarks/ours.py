"""Our side of each benchmark, run as its own process (so its peak RSS is its own):

python -m benchmarks.ours fetch URL DEST_FOLDER
python -m benchmarks.ours verify DATABASE quick|full
python -m benchmarks.ours pack BLOBS_DIR DATABASE OUT_ZIP
python -m benchmarks.ours unpack ZIP BLOBS_DIR
python -m benchmarks.ours store DATABASE BLOBS_DIR ARCHIVE NAME
python -m benchmarks.ours pathmap DATABASE OLD=NEW...
python -m benchmarks.ours pathmap-preview DATABASE OLD=NEW...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def fetch(url: str, dest: str) -> None:
    from stash_backup_plugin.core.atomic import commit
    from stash_backup_plugin.server.connection import Connection
    from stash_backup_plugin.server.download import download
    from stash_backup_plugin.server.http_session import new_session

    base = url.split("/downloads/")[0] if "/downloads/" in url else url.rsplit("/", 1)[0]
    name = url.rsplit("/", 1)[1]
    with new_session(Connection(base)) as session:
        result = download(session, url, Path(dest), name)
    commit(result.temp_path, Path(dest) / name)


def verify(database: str, level: str) -> None:
    from stash_backup_plugin.core.sqlite_check import check_database

    check_database(Path(database), level)


def pack(blobs_dir: str, database: str, out: str) -> None:
    from stash_backup_plugin.core.backup_zip import write_full_backup

    blobs = Path(blobs_dir)
    files = sorted((p.name, p) for p in blobs.glob("??/??/*"))
    with open(out, "wb") as handle:
        write_full_backup(handle, Path(database), "stash-go.sqlite", files)
        handle.flush()
        os.fsync(handle.fileno())


def unpack(zip_path: str, blobs_dir: str) -> None:
    from stash_backup_plugin.offline import restore
    from stash_backup_plugin.core.reporting import Reporter

    inspection = restore.read_backup(Path(zip_path))
    target = restore.Target(Path(blobs_dir).parent / "unused.sqlite", Path(blobs_dir))
    everything = restore._Selection()
    for index, (_, size) in enumerate(inspection.blobs()):
        everything.add(index, size)
    restore._extract_blobs(Path(zip_path), inspection, everything, target, Path(blobs_dir).parent / "aside", Reporter())


def store(database: str, blobs_dir: str, archive: str, name: str) -> None:
    """A stored backup from a database file and Stash's blobs folder, as the nightly
    download does once the database has arrived (the plugin path)."""
    from stash_backup_plugin.core import stored
    from stash_backup_plugin.core.archive import Archive
    from stash_backup_plugin.core.reporting import Reporter
    from stash_backup_plugin.core.verify import file_digest

    with Archive(Path(archive)).locked() as held:
        new = stored.checked_backup(
            name, Path(database), file_digest(Path(database)), "quick", includes_blobs=True, source="filesystem"
        )
        stored.store_backup(held.store, new, stored.FolderSource([Path(blobs_dir)]), Reporter())


def pathmap(database: str, *mappings: str) -> None:
    """What stash-restore --map-path does to the staged copy: the rewrite, then quick_check."""
    from stash_backup_plugin.core.sqlite_check import check_database
    from stash_backup_plugin.offline.pathmap import parse_mappings
    from stash_backup_plugin.offline.pathmap_db import rewrite_database

    rewrite_database(Path(database), parse_mappings(mappings))
    check_database(Path(database), "quick", blob_references=False)


def pathmap_preview(database: str, *mappings: str) -> None:
    """The dry run's part of --map-path: counts per mapping and the uncovered folders."""
    from stash_backup_plugin.offline.pathmap import parse_mappings
    from stash_backup_plugin.offline.pathmap_db import preview_database

    preview_database(Path(database), parse_mappings(mappings))


COMMANDS = {
    "fetch": fetch,
    "verify": verify,
    "pack": pack,
    "unpack": unpack,
    "store": store,
    "pathmap": pathmap,
    "pathmap-preview": pathmap_preview,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
