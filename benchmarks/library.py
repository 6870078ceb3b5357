"""A Stash-shaped library for the archive benchmarks: Stash v0.31's own empty database
(its real schema, made by starting the pinned server once) filled with scenes, files,
fingerprints, galleries of images, performers, studios and tags, and a blobs folder of
MD5-named image files that the rows refer to. `night()` changes it as a night of use
does: about 1 % new blobs (new scenes with covers, some replaced covers) and 0.5 % of
the rows changed.

Rows are generated, not random bytes: paths, titles and hex fingerprints compress the
way a real library's do. Cached under ~/.cache/stash-backup/bench by size."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from benchmarks.data import CACHE, SIZE_MIX

WORDS = (
    "the a of and in on at with blue red night summer city house beach party secret office garden "
    "studio session morning evening weekend holiday hotel pool kitchen classic special edition part "
    "scene behind story first last new old big little wild sweet golden silver private live"
).split()
CODECS = [("h264", "mp4"), ("hevc", "mkv"), ("h264", "mov"), ("vp9", "webm")]
NOW = "2026-11-26T03:00:00Z"


@dataclass
class Library:
    root: Path
    database: Path
    blobs: Path

    def blob_count(self) -> int:
        return sum(1 for _ in self.blobs.glob("??/??/*"))


def empty_stash_database() -> Path:
    """Stash v0.31.1's freshly created database (schema 85), made once by the real server."""
    path = CACHE / "empty-stash-v0.31.1.sqlite"
    if path.exists():
        return path
    from tests.support.stash_server.build import NEW_VERSION, build
    from tests.support.stash_server.server import StashServer

    with tempfile.TemporaryDirectory(prefix="empty-stash-") as folder:
        server = StashServer(build(NEW_VERSION), Path(folder) / "stash", NEW_VERSION)
        server.start()
        server.stop()
        CACHE.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(server.database, path.with_suffix(".partial"))
    path.with_suffix(".partial").replace(path)
    return path


def library(database_bytes: int, blob_count: int) -> Library:
    """A cached library of about `database_bytes` and `blob_count` blobs (pristine:
    copy it before changing it, see `working_copy`)."""
    root = CACHE / f"library-{database_bytes >> 20}MiB-{blob_count}"
    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        _build(root, database_bytes, blob_count)
        done.write_text("ok")
    return Library(root, root / "stash-go.sqlite", root / "blobs")


def files_library(files: int, per_folder: int = 25) -> Path:
    """A cached Stash v0.31 database holding `files` video files, `per_folder` to a
    folder, in a tree under /data/media/videos (studio/year/title), each folder with
    its parent's id as Stash's scan records them: the rows --map-path rewrites."""
    path = CACHE / f"files-{files}-{per_folder}.sqlite"
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    shutil.copyfile(empty_stash_database(), partial)
    rng = random.Random(files)
    with _open(partial) as db:
        filler = _Filler(db, rng, CACHE / "unused-blobs")
        for made in range(0, files, per_folder):
            folder = filler.folder_tree(
                f"/data/media/videos/studio-{made // 2000}/{2010 + made // 100 % 17}/"
                f"{filler.words(2, 5).title()} {made}"
            )
            for index in range(min(per_folder, files - made)):
                filler._file(
                    folder, f"{filler.words(2, 6).title()} {index} [1080p].mp4", rng.randint(100 << 20, 4 << 30)
                )
            if made % 20000 == 0:
                db.commit()
    partial.replace(path)
    return path


def working_copy(pristine: Library, where: Path) -> Library:
    """A copy to change night after night; blob files are hard links (never modified,
    only added and removed, as Stash does)."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    shutil.copyfile(pristine.database, where / "stash-go.sqlite")
    shutil.copytree(pristine.blobs, where / "blobs", copy_function=os.link)
    return Library(where, where / "stash-go.sqlite", where / "blobs")


def _build(root: Path, database_bytes: int, blob_count: int) -> None:
    database = root / "stash-go.sqlite"
    shutil.copyfile(empty_stash_database(), database)
    rng = random.Random(database_bytes ^ blob_count)
    with _open(database) as db:
        filler = _Filler(db, rng, root / "blobs")
        filler.people(max(20, blob_count // 12))
        filler.scenes(blob_count - filler.blobs_made)
        while database.stat().st_size < database_bytes:
            filler.gallery(rng.randint(40, 400))
            if filler.images % 20000 < 400:
                db.commit()
        db.commit()
    connection = sqlite3.connect(database)
    connection.execute("VACUUM")
    connection.close()


def night(lib: Library, number: int, new_blob_share: float = 0.01, changed_row_share: float = 0.005) -> None:
    """One night of use: new scenes with covers, a few covers replaced (their old
    blob removed, as Stash does), 0.5 % of scenes and images updated."""
    rng = random.Random(1000 + number)
    with _open(lib.database) as db:
        filler = _Filler(db, rng, lib.blobs)
        blobs = db.execute("SELECT count(*) FROM blobs").fetchone()[0]
        new = max(1, int(blobs * new_blob_share))
        replaced = new // 5
        filler.scenes(new - replaced)
        filler.replace_covers(replaced)
        for table in ("scenes", "images"):
            rows = db.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0
            ids = [
                (rng.random() * 100, NOW, rng.randint(1, rows)) for _ in range(max(1, int(rows * changed_row_share)))
            ]
            column = "play_duration" if table == "scenes" else "rating"
            db.executemany(f"UPDATE {table} SET {column} = ?, updated_at = ? WHERE id = ?", ids)
        db.commit()


class _open:
    def __init__(self, path: Path):
        self.connection = sqlite3.connect(path)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=OFF")

    def __enter__(self) -> sqlite3.Connection:
        return self.connection

    def __exit__(self, *exc) -> None:
        self.connection.commit()
        self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.connection.close()


class _Filler:
    def __init__(self, db: sqlite3.Connection, rng: random.Random, blobs: Path):
        self.db, self.rng, self.blobs = db, rng, blobs
        self.blobs_made = 0
        self.images = 0
        self.studios = [r[0] for r in db.execute("SELECT id FROM studios")]
        self.performers = [r[0] for r in db.execute("SELECT id FROM performers")]
        self.tags = [r[0] for r in db.execute("SELECT id FROM tags")]

    def words(self, low: int, high: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(low, high)))

    def blob(self) -> str:
        draw, acc, size = self.rng.random(), 0.0, 0
        for share, low, high in SIZE_MIX:
            acc += share
            if draw <= acc:
                size = self.rng.randint(low, high)
                break
        data = self.rng.randbytes(size) if hasattr(self.rng, "randbytes") else os.urandom(size)
        checksum = hashlib.md5(data).hexdigest()
        target = self.blobs / checksum[:2] / checksum[2:4] / checksum
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.db.execute("INSERT OR IGNORE INTO blobs (checksum, blob) VALUES (?, NULL)", (checksum,))
        self.blobs_made += 1
        return checksum

    def people(self, count: int) -> None:
        for index in range(max(3, count // 10)):
            self.studios.append(
                self.db.execute(
                    "INSERT INTO studios (name, created_at, updated_at, image_blob) VALUES (?, ?, ?, ?)",
                    (f"{self.words(1, 3).title()} Studio {index}", NOW, NOW, self.blob()),
                ).lastrowid
            )
        for index in range(max(3, count // 10)):
            self.tags.append(
                self.db.execute(
                    "INSERT INTO tags (name, created_at, updated_at, image_blob) VALUES (?, ?, ?, ?)",
                    (f"{self.words(1, 2)} {index}", NOW, NOW, self.blob() if index % 3 == 0 else None),
                ).lastrowid
            )
        for index in range(count - 2 * max(3, count // 10)):
            self.performers.append(
                self.db.execute(
                    "INSERT INTO performers (name, gender, country, created_at, updated_at, details, image_blob) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        f"{self.words(2, 2).title()} {index}",
                        self.rng.choice(["FEMALE", "MALE"]),
                        "US",
                        NOW,
                        NOW,
                        self.words(5, 30),
                        self.blob(),
                    ),
                ).lastrowid
            )

    def _folder(self, path: str) -> int:
        row = self.db.execute("SELECT id FROM folders WHERE path = ?", (path,)).fetchone()
        if row:
            return row[0]
        return self.db.execute(
            "INSERT INTO folders (basename, path, mod_time, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (os.path.basename(path), path, NOW, NOW, NOW),
        ).lastrowid

    def folder_tree(self, path: str) -> int:
        """A folder and its missing ancestors up to /data/media, each with its parent's id."""
        row = self.db.execute("SELECT id FROM folders WHERE path = ?", (path,)).fetchone()
        if row:
            return row[0]
        parent = None if path == "/data/media" else self.folder_tree(os.path.dirname(path))
        return self.db.execute(
            "INSERT INTO folders (basename, path, parent_folder_id, mod_time, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (os.path.basename(path), path, parent, NOW, NOW, NOW),
        ).lastrowid

    def _file(self, folder: int, basename: str, size: int) -> int:
        file_id = self.db.execute(
            "INSERT INTO files (basename, parent_folder_id, size, mod_time, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (basename, folder, size, NOW, NOW, NOW),
        ).lastrowid
        fingerprints = [("oshash", "%016x" % self.rng.getrandbits(64)), ("md5", "%032x" % self.rng.getrandbits(128))]
        self.db.executemany(
            "INSERT INTO files_fingerprints VALUES (?, ?, ?)", [(file_id, t, f) for t, f in fingerprints]
        )
        return file_id

    def scenes(self, count: int) -> None:
        for _ in range(count):
            studio = self.rng.choice(self.studios)
            title = self.words(3, 8).title()
            folder = self._folder(f"/data/media/videos/studio-{studio}/{self.rng.randint(2010, 2026)}")
            codec, ext = self.rng.choice(CODECS)
            file_id = self._file(
                folder,
                f"{title} [{self.rng.choice(['720p', '1080p', '2160p'])}].{ext}",
                self.rng.randint(100 << 20, 4 << 30),
            )
            self.db.execute(
                "INSERT INTO files_fingerprints VALUES (?, 'phash', ?)", (file_id, self.rng.getrandbits(63))
            )
            self.db.execute(
                "INSERT INTO video_files (file_id, duration, video_codec, format, audio_codec, width, height, "
                "frame_rate, bit_rate) VALUES (?, ?, ?, ?, 'aac', 1920, 1080, 29.97, ?)",
                (file_id, self.rng.random() * 3600, codec, ext, self.rng.randint(1000000, 20000000)),
            )
            scene = self.db.execute(
                "INSERT INTO scenes (title, details, date, rating, studio_id, created_at, updated_at, cover_blob) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    title,
                    self.words(10, 60) if self.rng.random() < 0.4 else None,
                    f"20{self.rng.randint(10, 26)}-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d}",
                    self.rng.choice([None, 20, 40, 60, 80, 100]),
                    studio,
                    NOW,
                    NOW,
                    self.blob(),
                ),
            ).lastrowid
            self.db.execute("INSERT INTO scenes_files VALUES (?, ?, 1)", (scene, file_id))
            self.db.executemany(
                "INSERT OR IGNORE INTO performers_scenes VALUES (?, ?)",
                [(p, scene) for p in self.rng.sample(self.performers, self.rng.randint(1, 3))],
            )
            self.db.executemany(
                "INSERT OR IGNORE INTO scenes_tags VALUES (?, ?)",
                [(scene, t) for t in self.rng.sample(self.tags, min(len(self.tags), self.rng.randint(2, 8)))],
            )
            self.db.execute(
                "INSERT INTO scene_urls VALUES (?, 0, ?)",
                (scene, f"https://www.example-studio-{studio}.com/scenes/{scene}/{title.lower().replace(' ', '-')}"),
            )
            if self.rng.random() < 0.3:
                self.db.execute(
                    "INSERT INTO scene_stash_ids (scene_id, endpoint, stash_id) VALUES (?, ?, ?)",
                    (scene, "https://stashdb.org/graphql", str(uuid.UUID(int=self.rng.getrandbits(128)))),
                )

    def replace_covers(self, count: int) -> None:
        """New covers for existing scenes; the old blob goes, as Stash deletes it."""
        top = self.db.execute("SELECT max(id) FROM scenes").fetchone()[0]
        for _ in range(count):
            scene = self.rng.randint(1, top)
            row = self.db.execute("SELECT cover_blob FROM scenes WHERE id = ?", (scene,)).fetchone()
            if not row or not row[0]:
                continue
            self.db.execute("UPDATE scenes SET cover_blob = ?, updated_at = ? WHERE id = ?", (self.blob(), NOW, scene))
            self.db.execute("DELETE FROM blobs WHERE checksum = ?", (row[0],))
            old = self.blobs / row[0][:2] / row[0][2:4] / row[0]
            old.unlink(missing_ok=True)

    def gallery(self, size: int) -> None:
        studio = self.rng.choice(self.studios)
        name = self.words(2, 5).title()
        path = f"/data/media/photos/studio-{studio}/{name}"
        folder = self._folder(path)
        if self.db.execute("SELECT 1 FROM galleries WHERE folder_id = ?", (folder,)).fetchone():
            folder = self._folder(f"{path} ({self.images})")  # a gallery per folder: the name came up twice
        gallery = self.db.execute(
            "INSERT INTO galleries (folder_id, title, studio_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (folder, name, studio, NOW, NOW),
        ).lastrowid
        for index in range(size):
            file_id = self._file(
                folder, f"{name.replace(' ', '_')}_{index:04d}.jpg", self.rng.randint(200 << 10, 8 << 20)
            )
            self.db.execute(
                "INSERT INTO image_files VALUES (?, 'jpeg', ?, ?)",
                (file_id, self.rng.choice([1920, 3000, 4000]), self.rng.choice([1080, 2000, 2667])),
            )
            image = self.db.execute(
                "INSERT INTO images (title, studio_id, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (None, studio, NOW, NOW),
            ).lastrowid
            self.db.execute("INSERT INTO images_files VALUES (?, ?, 1)", (image, file_id))
            self.db.execute("INSERT INTO galleries_images VALUES (?, ?, ?)", (gallery, image, index == 0))
            self.images += 1
