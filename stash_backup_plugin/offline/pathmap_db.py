"""The SQL of --map-path, all of it: read a Stash database's folders, and rewrite
their paths in one transaction. Only `folders.path` (and, schema 84+, the moved
roots' `folders.basename`) holds a library path: files are a basename in a folder,
galleries point at a folder or a zip file, captions are basenames (checked against
Stash v0.28.1's schema 72 and v0.31.1's schema 85)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterator

from ..core.atomic import fsync_file
from ..core.errors import RestoreRefused, VerificationError
from ..core.faults import crash_point
from ..core.sqlite_check import SIDE_SUFFIXES, open_unchanged
from .pathmap import PathMapping, Preview, basename, mapping_for, preview

FOLDERS_AND_FILE_COUNTS = """
    SELECT folders.path, (SELECT count(*) FROM files WHERE files.parent_folder_id = folders.id)
    FROM folders"""
FOLDER_PATHS = "SELECT id, path FROM folders"
FOLDER_COLUMNS = "SELECT name FROM pragma_table_info('folders')"
# Phase one parks every moving folder on a path no real one has (a NUL first), so
# that phase two never meets a unique-index clash with a row not yet moved (SQLite
# checks uniqueness row by row): `/a=/b` together with `/b=/a` works.
PARK = "UPDATE folders SET path = char(0) || 'stash-restore-map-path-' || id {basename} WHERE id = ?"
MOVE = "UPDATE folders SET path = ? {basename} WHERE id = ?"


def preview_database(database: Path, mappings: list[PathMapping]) -> Preview:
    """What the rewrite would do to `database`, read without changing it."""
    try:
        with open_unchanged(database) as connection:
            return preview(connection.execute(FOLDERS_AND_FILE_COUNTS), mappings)
    except sqlite3.DatabaseError as error:
        raise VerificationError(f"cannot read the folders of {database}: {error}") from error


def rewrite_database(database: Path, mappings: list[PathMapping]) -> int:
    """Rewrite the covered folders' paths in `database` (a private temp copy) in one
    transaction; fsync it; return the number of folders moved. A clash the preview
    could not see (the unique basename index) rolls everything back."""
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            moved = _rewrite(connection, mappings)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    except sqlite3.IntegrityError as error:
        raise RestoreRefused(f"the mapped paths clash in the database ({error}): nothing was changed") from error
    except sqlite3.DatabaseError as error:
        raise VerificationError(f"cannot rewrite the folders of {database}: {error}") from error
    finally:
        connection.close()
    leftovers = [s for s in SIDE_SUFFIXES if Path(f"{database}{s}").exists()]
    if leftovers:  # committed data would live there, not in the file that is swapped in
        raise VerificationError(f"{database}{leftovers[0]} was left after the rewrite: not putting it in place")
    fsync_file(database)
    return moved


def _rewrite(connection: sqlite3.Connection, mappings: list[PathMapping]) -> int:
    has_basename = "basename" in {row[0] for row in connection.execute(FOLDER_COLUMNS)}
    moves = list(_moves(connection.execute(FOLDER_PATHS).fetchall(), mappings, has_basename))
    basename_park = ", basename = char(0) || id" if has_basename else ""
    basename_move = ", basename = ?" if has_basename else ""
    connection.executemany(PARK.format(basename=basename_park), [(move[-1],) for move in moves])
    crash_point("paths-parked")  # a kill here leaves the temp copy with a hot journal: both are temp files
    connection.executemany(MOVE.format(basename=basename_move), moves)
    return len(moves)


def _moves(rows: list[tuple[int, str]], mappings: list[PathMapping], has_basename: bool) -> Iterator[tuple]:
    """(new path[, new basename], id) of each covered folder. A moved folder keeps its
    own basename, except the OLD folder itself, which takes NEW's last name."""
    for folder_id, path in rows:
        mapping = mapping_for(path, mappings)
        if mapping is None:
            continue
        new = mapping.rewrite(path)
        if has_basename:
            yield new, basename(new), folder_id
        else:
            yield new, folder_id
