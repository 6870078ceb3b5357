"""Small Stash-shaped databases and backups for unit tests: the same tables the code
reads (schema_migrations, blobs, a table referring to blobs), no server needed."""

from __future__ import annotations

import hashlib
import sqlite3
import zipfile
from pathlib import Path


def make_database(
    path: Path, schema: int = 75, performers: int = 3, blobs_in_db: bool = False, wal: bool = True, dirty: bool = False
) -> dict[str, bytes]:
    """Create a database; returns checksum -> bytes of the blobs it refers to."""
    images = {}
    connection = sqlite3.connect(path)
    if wal:
        connection.execute("PRAGMA journal_mode=WAL")
    connection.executescript("""
        CREATE TABLE schema_migrations (version uint64, dirty bool);
        CREATE TABLE blobs (checksum varchar(255) NOT NULL PRIMARY KEY, blob blob);
        CREATE TABLE performers (id integer PRIMARY KEY, name text NOT NULL,
                                 image_blob varchar(255) REFERENCES blobs(checksum),
                                 updated_at datetime NOT NULL DEFAULT '2026-01-01T00:00:00Z');
        CREATE INDEX performers_name ON performers(name);
    """)
    connection.execute("INSERT INTO schema_migrations VALUES (?, ?)", (schema, dirty))
    for index in range(performers):
        data = f"image-{index}-{path.name}".encode() * 50
        checksum = hashlib.md5(data).hexdigest()
        images[checksum] = data
        connection.execute("INSERT INTO blobs VALUES (?, ?)", (checksum, data if blobs_in_db else None))
        connection.execute("INSERT INTO performers (name, image_blob) VALUES (?, ?)", (f"performer-{index}", checksum))
    connection.commit()
    connection.close()
    return images


def write_blobs(folder: Path, images: dict[str, bytes]) -> None:
    for checksum, data in images.items():
        target = folder / checksum[0:2] / checksum[2:4] / checksum
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def make_full_backup(
    zip_path: Path,
    database: Path,
    images: dict[str, bytes],
    member: str = "stash-go.sqlite",
    extra: dict[str, bytes] | None = None,
) -> Path:
    """A zip in Stash v0.31's layout (deflated, as Stash writes it)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(database, member)
        for checksum, data in images.items():
            archive.writestr(f"blobs/{checksum[0:2]}/{checksum[2:4]}/{checksum}", data)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return zip_path


def vacuum_copy(source: Path, target: Path) -> Path:
    """A backup as Stash makes one: VACUUM INTO, a single consistent file."""
    connection = sqlite3.connect(source)
    connection.execute("VACUUM INTO ?", (str(target),))
    connection.close()
    return target


def names_in(database: Path) -> list[str]:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return [row[0] for row in connection.execute("SELECT name FROM performers ORDER BY name")]
    finally:
        connection.close()


# Stash v0.31.1's own folders and files tables (schema 85), as its migrations make them.
LIBRARY_TABLES = """
CREATE TABLE IF NOT EXISTS "folders" (
  `id` integer not null primary key autoincrement,
  `basename` varchar(255) NOT NULL,
  `path` varchar(255) NOT NULL,
  `parent_folder_id` integer,
  `zip_file_id` integer REFERENCES `files`(`id`),
  `mod_time` datetime not null,
  `created_at` datetime not null,
  `updated_at` datetime not null,
  foreign key(`parent_folder_id`) references `folders`(`id`) on delete SET NULL
);
CREATE UNIQUE INDEX `index_folders_on_path_unique` on `folders` (`path`);
CREATE UNIQUE INDEX `index_folders_on_parent_folder_id_basename_unique` on `folders` (`parent_folder_id`, `basename`);
CREATE TABLE `files` (
  `id` integer not null primary key autoincrement,
  `basename` varchar(255) NOT NULL,
  `zip_file_id` integer,
  `parent_folder_id` integer not null,
  `size` integer NOT NULL,
  `mod_time` datetime not null,
  `created_at` datetime not null,
  `updated_at` datetime not null,
  foreign key(`parent_folder_id`) references `folders`(`id`),
  foreign key(`zip_file_id`) references `files`(`id`),
  CHECK (`basename` != '')
);
CREATE UNIQUE INDEX `index_files_on_parent_folder_id_basename_unique` on `files` (`parent_folder_id`, `basename`);
"""


def add_library(database: Path, folders: dict[str, int], separator: str = "/") -> None:
    """Folders (path -> number of files in it) as Stash's scan records them: each with
    its parent folder's id (a folder whose parent is not listed is a library root)."""
    connection = sqlite3.connect(database)
    connection.executescript(LIBRARY_TABLES)
    ids: dict[str, int] = {}
    now = "2026-11-26T03:00:00Z"
    for path in sorted(folders):
        parent, _, name = path.rpartition(separator)
        ids[path] = connection.execute(
            "INSERT INTO folders (basename, path, parent_folder_id, mod_time, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, path, ids.get(parent), now, now, now),
        ).lastrowid
        connection.executemany(
            "INSERT INTO files (basename, parent_folder_id, size, mod_time, created_at, updated_at) "
            "VALUES (?, ?, 1, ?, ?, ?)",
            [(f"video {n}.mp4", ids[path], now, now, now) for n in range(folders[path])],
        )
    connection.commit()
    connection.close()


def folder_paths(database: Path) -> dict[str, str]:
    """path -> basename of every folder."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return dict(connection.execute("SELECT path, basename FROM folders ORDER BY path"))
    finally:
        connection.close()
