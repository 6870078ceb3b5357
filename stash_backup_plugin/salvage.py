"""Recover what can be read from a damaged ("database disk image is malformed")
database into a new file. The original is never opened for writing: we work on a
private copy. Standard library only (sqlite3's `.recover` is used when the sqlite3
program is installed)."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .atomic import commit, discard, scratch_folder, temp_path_in
from .errors import RestoreRefused, StorageError, UsageError


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
    output.parent.mkdir(parents=True, exist_ok=True)
    with scratch_folder(output.parent) as work:
        private = work / database.name
        shutil.copyfile(database, private)
        for suffix in ("-wal", "-journal"):
            side = Path(f"{database}{suffix}")
            if side.exists():
                shutil.copyfile(side, Path(f"{private}{suffix}"))
        temp = temp_path_in(output.parent, output.name)
        discard(temp)  # sqlite3 creates the file itself
        try:
            method = _recover_with_cli(private, temp) if shutil.which("sqlite3") else None
            if method is None:
                method = _copy_table_by_table(private, temp)
            _check_output(temp)
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
        return None
    loaded = subprocess.run(["sqlite3", str(target)], input=recovered.stdout, capture_output=True)
    if loaded.returncode != 0 and not target.exists():
        return None
    return "sqlite3 .recover"


def _copy_table_by_table(source: Path, target: Path) -> str:
    """Best effort: the schema, then each table's readable rows, row by row where a
    bulk copy fails."""
    with sqlite3.connect(target) as out:
        out.execute("ATTACH DATABASE ? AS damaged", (f"file:{source}?mode=ro",))
        objects = out.execute("SELECT type, name, sql FROM damaged.sqlite_master WHERE sql IS NOT NULL "
                              "AND name NOT LIKE 'sqlite_%' ORDER BY type = 'table' DESC").fetchall()
        for kind, name, sql in objects:
            if kind == "table":
                try:
                    out.execute(sql)
                except sqlite3.DatabaseError:
                    continue
                _copy_rows(out, name)
        for kind, name, sql in objects:
            if kind != "table":
                try:
                    out.execute(sql)
                except sqlite3.DatabaseError:
                    pass
        out.commit()
        out.execute("DETACH DATABASE damaged")
    return "table-by-table copy"


def _copy_rows(out: sqlite3.Connection, table: str) -> None:
    quoted = '"' + table.replace('"', '""') + '"'
    try:
        out.execute(f"INSERT INTO main.{quoted} SELECT * FROM damaged.{quoted}")
        return
    except sqlite3.DatabaseError:
        pass
    try:
        cursor = out.execute(f"SELECT * FROM damaged.{quoted}")
        while True:
            try:
                row = cursor.fetchone()
            except sqlite3.DatabaseError:
                break
            if row is None:
                break
            placeholders = ",".join("?" * len(row))
            try:
                out.execute(f"INSERT OR IGNORE INTO main.{quoted} VALUES ({placeholders})", row)
            except sqlite3.DatabaseError:
                continue
    except sqlite3.DatabaseError:
        pass


def _check_output(path: Path) -> None:
    if not path.exists():
        raise StorageError("nothing could be recovered from the database")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as check:
        result = check.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise StorageError(f"the recovered copy fails quick_check ({result})")


def _tables(path: Path) -> list[str]:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            return [r[0] for r in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    except sqlite3.DatabaseError:
        return []


def _count(path: Path, table: str) -> Optional[int]:
    quoted = '"' + table.replace('"', '""') + '"'
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            return connection.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
    except sqlite3.DatabaseError:
        return None
