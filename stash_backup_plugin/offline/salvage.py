"""Recover what can be read from a damaged ("database disk image is malformed")
database into a new file. The original is never opened for writing: we work on a
private copy. Standard library only (sqlite3's `.recover` is used when the sqlite3
program is installed)."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.atomic import commit, discard, make_folders, take_parent_owner, temp_path_in
from ..core.errors import RestoreRefused, StorageError, UsageError
from ..core.sqlite_check import open_read_only, private_copy, quote_identifier


@dataclass
class SalvageReport:
    method: str
    output: Path
    rows: dict[str, tuple[Optional[int], Optional[int]]] = field(default_factory=dict)  # table -> (original, copy)


def salvage(database: Path, output: Path) -> SalvageReport:
    if not database.is_file():
        raise UsageError(f"{database} does not exist")
    if output.exists():
        raise RestoreRefused(f"{output} already exists: choose a new --output file (it is never overwritten)")
    if output.resolve() == database.resolve():
        raise UsageError("--output must be a new file, not the damaged database")
    make_folders(output.parent)
    with private_copy(database, output.parent) as private:
        temp = temp_path_in(output.parent, output.name)
        discard(temp)  # sqlite3 creates the file itself
        try:
            method = _recover_with_cli(private, temp) if shutil.which("sqlite3") else None
            if method is None:
                method = _copy_table_by_table(private, temp)
            _check_output(temp)
            take_parent_owner(temp)  # sqlite3 made it: it is ours, not the folder owner's
            commit(temp, output)
        finally:
            discard(temp)
        report = SalvageReport(method, output)
        for table in sorted(set(_tables(private)) | set(_tables(output))):
            report.rows[table] = (_count(private, table), _count(output, table))
    return report


def _recover_with_cli(source: Path, target: Path) -> Optional[str]:
    recovered = subprocess.run(["sqlite3", str(source), ".recover"], capture_output=True)
    if recovered.returncode != 0 or not recovered.stdout:
        return None  # .recover itself gave up on this damage: the table-by-table copy tries
    loaded = subprocess.run(["sqlite3", str(target)], input=recovered.stdout, capture_output=True)
    if loaded.returncode != 0 and not target.exists():
        return None
    return "sqlite3 .recover"


def _copy_table_by_table(source: Path, target: Path) -> str:
    """Best effort: the schema, then each table's rows up to the first unreadable
    page, then the indexes (those that the recovered rows allow)."""
    with open_read_only(source) as damaged, contextlib.closing(sqlite3.connect(target)) as out:
        objects = _schema_objects(damaged)
        for kind, name, sql in objects:
            if kind == "table":
                with contextlib.suppress(sqlite3.DatabaseError):
                    out.execute(sql)
                    _copy_rows(damaged, out, name)
                    out.commit()
        for kind, _name, sql in objects:
            if kind != "table":
                with contextlib.suppress(sqlite3.DatabaseError):
                    out.execute(sql)
                    out.commit()
    return "table-by-table copy"


def _schema_objects(damaged: sqlite3.Connection) -> list:
    try:
        return damaged.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite_%' ORDER BY type = 'table' DESC"
        ).fetchall()
    except sqlite3.DatabaseError as error:
        raise StorageError(f"the database's schema itself is unreadable ({error}): nothing can be copied") from error


def _copy_rows(damaged: sqlite3.Connection, out: sqlite3.Connection, table: str) -> None:
    """Rows in rowid order; past an unreadable page, jump ahead (1, 2, 4, ... rowids)
    until reading works again, so one bad page costs only its own rows."""
    quoted = quote_identifier(table)
    last, skip = None, 1
    while True:
        where, args = ("WHERE rowid > ?", (last,)) if last is not None else ("", ())
        try:
            cursor = damaged.execute(f"SELECT rowid, * FROM {quoted} {where} ORDER BY rowid", args)
        except sqlite3.DatabaseError:
            return  # no rowid (or the table is unreadable from its root)
        try:
            for row in cursor:
                last, skip = row[0], 1
                out.execute(f"INSERT OR IGNORE INTO {quoted} VALUES ({','.join('?' * (len(row) - 1))})", row[1:])
            return
        except sqlite3.DatabaseError:
            if skip > 1 << 40:
                return
            last, skip = (last or 0) + skip, skip * 2


def _check_output(path: Path) -> None:
    if not path.exists():
        raise StorageError("nothing could be recovered from the database")
    with open_read_only(path) as check:
        result = check.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise StorageError(f"the recovered copy fails quick_check ({result})")


def _tables(path: Path) -> list[str]:
    try:
        with open_read_only(path) as connection:
            return [
                r[0]
                for r in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                )
            ]
    except sqlite3.DatabaseError:
        return []


def _count(path: Path, table: str) -> Optional[int]:
    quoted = quote_identifier(table)
    try:
        with open_read_only(path) as connection:
            return connection.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
    except sqlite3.DatabaseError:
        return None
