"""A stopped 'Stash install' on disk for restore tests: config.yml, a WAL database with
committed data still in its -wal, blobs on the filesystem, and backups of it."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.stash_server.server import free_port
from tests.support.stashlike import make_database, make_full_backup, names_in, vacuum_copy, write_blobs


@dataclass
class Install:
    root: Path
    config: Path
    database: Path
    blobs: Path
    backup_plain: Path
    backup_zip: Path
    images: dict

    def names(self) -> list[str]:
        return names_in(self.database)


def make_install(root: Path, schema: int = 75) -> Install:
    root.mkdir(parents=True, exist_ok=True)
    database, blobs = root / "stash-go.sqlite", root / "blobs"
    images = make_database(database, schema=schema)
    write_blobs(blobs, images)
    backups = root / "backups"
    backups.mkdir()
    plain = vacuum_copy(database, backups / f"stash-go.sqlite.{schema}.20261126_180102")
    full = make_full_backup(backups / f"stash-go.sqlite.{schema}.20261126_180103.zip", plain, images)
    add_performer_in_wal(database, "added-after-backup")
    config = root / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": str(database),
                "blobs_path": str(blobs),
                "blobs_storage": "FILESYSTEM",
                "backup_directory_path": str(backups),
                "host": "127.0.0.1",
                "port": free_port(),
            }
        )
    )
    return Install(root, config, database, blobs, plain, full, images)


def add_performer_in_wal(database: Path, name: str) -> None:
    """Commit a row and leave it in the -wal only (no checkpoint): data that a
    careless restore, moving only the main file, would lose."""
    connection = sqlite3.connect(database)
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute("INSERT INTO performers (name) VALUES (?)", (name,))
    connection.commit()
    # Close without checkpointing: copy the files before SQLite tidies up on close.
    wal = Path(f"{database}-wal").read_bytes()
    shm = Path(f"{database}-shm").read_bytes()
    main = database.read_bytes()
    connection.close()
    database.write_bytes(main)
    Path(f"{database}-wal").write_bytes(wal)
    Path(f"{database}-shm").write_bytes(shm)
