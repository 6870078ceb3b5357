"""Benchmark inputs, made here and cached under ~/.cache/stash-backup/bench so a
second run starts at once."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
from pathlib import Path

CACHE = Path(os.environ.get("STASH_BACKUP_CACHE", Path.home() / ".cache" / "stash-backup")) / "bench"


def random_file(size: int) -> Path:
    path = CACHE / f"random-{size}.bin"
    if not path.exists() or path.stat().st_size != size:
        CACHE.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".partial")
        with open(temp, "wb") as handle:
            left = size
            while left:
                chunk = os.urandom(min(left, 8 << 20))
                handle.write(chunk)
                left -= len(chunk)
        temp.replace(path)
    return path


def stash_shaped_database(size: int) -> Path:
    """Many small indexed rows, like a real library's scenes/files/tags tables: the
    shape where integrity_check is slow. Marked as a Stash database (schema 75)."""
    path = CACHE / f"stash-shaped-{size}.sqlite"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".partial")
    temp.unlink(missing_ok=True)
    connection = sqlite3.connect(temp)
    connection.executescript("""
        PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
        CREATE TABLE schema_migrations (version uint64, dirty bool);
        INSERT INTO schema_migrations VALUES (75, 0);
        CREATE TABLE blobs (checksum varchar(255) NOT NULL PRIMARY KEY, blob blob);
        CREATE TABLE scenes (id integer PRIMARY KEY, title text, details text, date date, rating tinyint,
                             studio_id integer, organized boolean, created_at datetime, updated_at datetime);
        CREATE INDEX index_scenes_on_studio_id ON scenes(studio_id);
        CREATE INDEX index_scenes_on_date ON scenes(date);
        CREATE INDEX index_scenes_on_title ON scenes(title);
        CREATE TABLE scenes_tags (scene_id integer, tag_id integer, PRIMARY KEY (scene_id, tag_id));
        CREATE INDEX index_scenes_tags_on_tag_id ON scenes_tags(tag_id);
    """)
    rng = random.Random(42)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 10))) for _ in range(5000)]
    batch, next_id = 20000, 1
    while temp.stat().st_size < size:
        scenes = [
            (
                next_id + i,
                " ".join(rng.choices(words, k=5)),
                " ".join(rng.choices(words, k=12)),
                f"20{rng.randint(10, 26)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                rng.randint(0, 100),
                rng.randint(1, 3000),
                rng.random() < 0.5,
                "2026-01-01 00:00:00",
                "2026-01-01 00:00:00",
            )
            for i in range(batch)
        ]
        tags = [(next_id + i, rng.randint(1, 8000)) for i in range(batch) for _ in range(3)]
        connection.executemany("INSERT INTO scenes VALUES (?,?,?,?,?,?,?,?,?)", scenes)
        connection.executemany("INSERT OR IGNORE INTO scenes_tags VALUES (?,?)", tags)
        connection.commit()
        next_id += batch
    connection.close()
    temp.replace(path)
    return path


SIZE_MIX = [(0.5, 8 << 10, 32 << 10), (0.4, 32 << 10, 128 << 10), (0.1, 128 << 10, 512 << 10)]


def blob_folder(count: int) -> Path:
    """`count` blob files, named by MD5 like Stash's, sizes mixed: half small icons and
    thumbnails (8-32 KiB), 40 % 32-128 KiB images, 10 % 128-512 KiB covers."""
    folder = CACHE / f"blobs-{count}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    rng = random.Random(count)
    for _ in range(count):
        draw, acc = rng.random(), 0.0
        for share, low, high in SIZE_MIX:
            acc += share
            if draw <= acc:
                size = rng.randint(low, high)
                break
        data = os.urandom(size)
        checksum = hashlib.md5(data).hexdigest()
        target = folder / checksum[:2] / checksum[2:4] / checksum
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    marker.write_text("ok")
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
