"""The database swap, journaled so that a run killed at any point (kill -9) is
finished or rolled back by the next run, and one stopped by an error is rolled back
at once. Nothing is ever lost.

At no instant may the database path hold a file beside a -wal or -journal that is
not its own (SQLite would replay those pages into it), nor a file without the -wal
that holds part of its data; and a file moving or being renamed cannot carry its
side files along in the same instant. So first SQLite folds the -wal into the
database file, as it does whenever the last connection closes (`settle`): the file
then holds all its committed data alone. It is kept aside by a hard link (so its
path never goes missing: a Stash started meanwhile would create a fresh, empty
database there), and the incoming file replaces it with one os.replace, under
SQLite's exclusive lock. A Stash that starts at any instant, also after a kill,
finds the old database, the new one, or "database is locked". Files are told apart
by inode, so recovery knows exactly which file is which. Standard library only."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from ..core.atomic import atomic_output, commit, discard, fsync_dir, make_folders, remove_stale_temps, staged_file
from ..core.errors import RestoreRefused, StorageError
from ..core.faults import crash_point
from ..core.sqlite_check import SIDE_SUFFIXES, has_sqlite_header
from .liveness import DB_LOCK_LENGTH, DB_LOCK_START, SHM_DMS_BYTE, lock_holder

ALL_SUFFIXES = ("",) + SIDE_SUFFIXES
DATA_SUFFIXES = ("-wal", "-journal")  # side files that can hold committed data; -shm never does
JOURNAL_SUFFIX = ".stash-restore-journal"
RECORD_NAME = "restore-record.json"


def journal_path(database: Path) -> Path:
    return database.with_name(database.name + JOURNAL_SUFFIX)


def inode(path: Path) -> Optional[int]:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


def holds_data(path: Path) -> bool:
    """A -wal or -journal with bytes in it: part of its database's content may live there."""
    try:
        return os.lstat(path).st_size > 0
    except FileNotFoundError:
        return False


@dataclass
class Journal:
    kind: str  # "restore" or "undo"
    database: str
    aside: str
    current: dict[str, int] = field(default_factory=dict)  # suffix -> inode before the swap
    incoming: dict[str, list] = field(default_factory=dict)  # suffix -> [path, inode]
    source: str = ""  # the backup, or the aside folder being undone
    started: str = ""
    # inode, size and mtime of the database before the swap: if it changed after a
    # crash, something (Stash) wrote to it, and putting its old -wal back would mix them.
    fingerprint: list = field(default_factory=list)

    @property
    def database_path(self) -> Path:
        return Path(self.database)

    @property
    def aside_path(self) -> Path:
        return Path(self.aside)

    def save(self) -> None:
        _write_json(journal_path(self.database_path), asdict(self), "journal")

    @classmethod
    def load(cls, database: Path) -> Optional["Journal"]:
        path = journal_path(database)
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            raise StorageError(
                f"{path} is damaged ({error}): inspect it and the folders stash-restore-* beside the database by hand"
            ) from error

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal_path(self.database_path))
        fsync_dir(self.database_path.parent)


def _write_json(path: Path, data: dict, step: str) -> None:
    with atomic_output(path) as (handle, _):
        handle.write(json.dumps(data, indent=2).encode())
        crash_point(f"{step}-temp")


# --- SQLite-compatible exclusive lock ------------------------------------------------


@contextlib.contextmanager
def sqlite_exclusive_lock(path: Path) -> Iterator[int]:
    """Hold the byte-range locks SQLite takes for an exclusive lock, through our own
    file descriptor: any SQLite (Stash) that opens the file meanwhile gets "database
    is locked" instead of seeing a half-done restore. The lock follows the inode
    across renames. Nothing else in this process may open and close the same file
    while it is held (POSIX drops all of a process's locks on any close)."""
    if os.name == "nt":
        yield -1
        return
    import fcntl

    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, DB_LOCK_LENGTH, DB_LOCK_START, os.SEEK_SET)
        except OSError:
            raise RestoreRefused(
                f"{path} is open in another process (Stash?): stop Stash, then run this again. Nothing was changed"
            ) from None
        yield fd
    finally:
        os.close(fd)


# --- settling: the database file alone holds its data ----------------------------------


def side_path(database: Path, suffix: str) -> Path:
    return Path(f"{database}{suffix}")


def settle(database: Path) -> bool:
    """Let SQLite fold a -wal into the database file (or roll back a hot -journal), as
    it does when the last connection closes; it then removes the -wal and -shm. The
    content does not change. False when SQLite cannot open the file (its header is
    damaged): Stash cannot open it either, with or without the side files that are
    left, and those move aside as they are. Call it before taking our locks: closing
    SQLite's own descriptor would drop them."""
    if not any(holds_data(side_path(database, s)) for s in DATA_SUFFIXES):
        return True
    if not has_sqlite_header(database):
        return False  # SQLite would still fold the -wal into it on closing: keep them as they are
    try:
        with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error as error:
        if _is_busy(error):
            raise RestoreRefused(
                f"{database} is in use ({error}): stop Stash, then run this again. Nothing was changed"
            ) from None
        return False
    return True


def _is_busy(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
    return "locked" in str(error) or "busy" in str(error)


def _refuse_unsettled(database: Path, settled: bool) -> None:
    """Checked under our lock, before anything is written: a -wal that still holds data
    after SQLite settled the file, or an -shm someone holds, means a live connection."""
    shm = side_path(database, "-shm")
    if os.name != "nt" and shm.exists() and lock_holder(shm, SHM_DMS_BYTE, 1) is not None:
        raise RestoreRefused(
            f"{database} is open in another process (Stash?): stop Stash, then run this again. Nothing was changed"
        )
    if settled and any(holds_data(side_path(database, s)) for s in DATA_SUFFIXES):
        raise RestoreRefused(
            f"SQLite could not fold the -wal into {database} (is Stash running?): stop Stash, then "
            "run this again. Nothing was changed"
        )


# --- the swap ---------------------------------------------------------------------------


def fingerprint(path: Path) -> list:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return []
    return [info.st_ino, info.st_size, info.st_mtime_ns]


def current_inodes(database: Path) -> dict[str, int]:
    return {suffix: ino for suffix in ALL_SUFFIXES if (ino := inode(side_path(database, suffix))) is not None}


def swap_database_in(journal: Journal) -> str:
    """Keep the current database aside and put the incoming one in place. The journal
    comes without `current` and `fingerprint`: they are taken under the locks, and the
    journal is written only once the locks are held, so a refusal leaves nothing behind.
    Returns what the database is now; on an error, rolls back (or finishes) at once and
    raises a StorageError that says so."""
    database, incoming = journal.database_path, Path(journal.incoming[""][0])
    if not settle(incoming):
        raise RestoreRefused(
            f"{incoming} cannot be opened by SQLite: not putting it in place "
            "(stash-restore --salvage can recover what is readable). Nothing was changed"
        )
    settled = settle(database)
    crash_point("settled")
    with sqlite_exclusive_lock(incoming), _lock_current(database):
        _refuse_unsettled(database, settled)
        journal.current, journal.fingerprint = current_inodes(database), fingerprint(database)
        journal.incoming = {"": [str(incoming), inode(incoming)]}
        try:
            journal.save()
            crash_point("journal-saved")
            _swap(journal)
        except BaseException as error:
            _recover_at_once(journal, error)
    return f"{database} is now {_new_state(journal)}"


def _recover_at_once(journal: Journal, error: BaseException) -> None:
    try:
        _, state = finish_or_roll_back(journal)
    except Exception as failure:
        raise StorageError(
            f"the {journal.kind} stopped ({error}) and could not be rolled back ({failure}): run the "
            f"same command again to finish or roll it back"
        ) from error
    if not isinstance(error, Exception):
        raise error  # Ctrl-C: the state is whole again; the CLI says it was interrupted
    raise StorageError(f"the {journal.kind} stopped ({error}); {state}") from error


@contextlib.contextmanager
def _lock_current(database: Path):
    if database.exists():
        with sqlite_exclusive_lock(database):
            yield
    else:
        yield


def _swap(journal: Journal) -> None:
    database, aside = journal.database_path, journal.aside_path
    make_folders(aside)
    fsync_dir(database.parent)
    crash_point("aside-created")
    _keep_current_aside(journal)
    os.replace(journal.incoming[""][0], database)
    fsync_dir(database.parent)
    fsync_dir(aside)
    crash_point("placed")
    _finish(journal)


def _keep_current_aside(journal: Journal) -> None:
    """The database first (a link: it stays in place), then whatever side files are
    left: settled, they hold no data (an -shm, an empty -wal); unsettled (SQLite could
    not open the file), they move as they are, with the database still in place."""
    database, aside = journal.database_path, journal.aside_path
    for suffix, ino in journal.current.items():
        source, target = side_path(database, suffix), aside / f"{database.name}{suffix}"
        if inode(source) != ino or inode(target) == ino:
            continue  # already done by an earlier run
        if suffix == "":
            _link_or_copy(source, target)
        else:
            os.replace(source, target)
        crash_point(f"aside{suffix or '-db'}")
    fsync_dir(aside)
    fsync_dir(database.parent)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        # No hard links here (FAT, some network shares): copy it; moving it would leave
        # its path empty for a moment, and a Stash started then creates an empty database.
        with staged_file(target.parent, target.name) as (handle, temp):
            with open(source, "rb") as original:
                shutil.copyfileobj(original, handle, 4 * 1024 * 1024)
        commit(temp, target)


def _finish(journal: Journal) -> None:
    aside = journal.aside_path
    record = {
        "kind": journal.kind,
        "source": journal.source,
        "started": journal.started,
        "database": journal.database,
        "moved_aside": sorted(journal.current),
    }
    _write_json(aside / RECORD_NAME, record, "record")
    crash_point("recorded")
    remove_stale_temps(aside, lock_excludes_makers=True)  # a killed run's partial record or copy
    if journal.kind == "undo":
        _retire(Path(journal.source))
    journal.remove()


def _retire(source: Path) -> None:
    """An aside folder whose database went back is marked used, before the journal goes:
    a rerun then never takes it for a restore still to undo (undo toggles)."""
    record = source / RECORD_NAME
    if record.exists():
        os.replace(record, source / f"{RECORD_NAME}.undone")
        fsync_dir(source)


def incoming_is_in_place(journal: Journal) -> bool:
    return inode(journal.database_path) == journal.incoming[""][1]


def finish_or_roll_back(journal: Journal) -> tuple[bool, str]:
    """Finish a swap whose database was already replaced; otherwise roll it back.
    Returns (finished, what the database is now, for the user)."""
    database, aside = journal.database_path, journal.aside_path
    if incoming_is_in_place(journal):
        for suffix in SIDE_SUFFIXES:  # journals of older versions: none of the old side files may stay
            source, target = side_path(database, suffix), aside / f"{database.name}{suffix}"
            if suffix in journal.current and inode(source) == journal.current[suffix]:
                os.replace(source, target)
        fsync_dir(database.parent)
        _finish(journal)
        return True, f"finished the interrupted {journal.kind}: {database} is now {_new_state(journal)}"
    _refuse_mixing(journal)
    for suffix, (path, ino) in journal.incoming.items():  # journals of older versions placed these first
        here = side_path(database, suffix)
        if suffix and inode(here) == ino:
            os.replace(here, path)
    for suffix, ino in journal.current.items():
        _put_back(database, suffix, ino, aside / f"{database.name}{suffix}")
    fsync_dir(database.parent)
    remove_stale_temps(aside, lock_excludes_makers=True)  # a partial copy of the database
    with contextlib.suppress(OSError):
        aside.rmdir()  # only when empty: nothing in it is ever deleted
    journal.remove()
    return False, f"rolled back the interrupted {journal.kind}: {database} is the database from before it, unchanged"


def _new_state(journal: Journal) -> str:
    if journal.kind == "undo":
        return f"the database from {journal.source}; the one it replaced is in {journal.aside}"
    kept = f"; the previous one is in {journal.aside}" if "" in journal.current else ""
    return f"the restored backup {Path(journal.source).name}{kept}"


def _put_back(database: Path, suffix: str, ino: int, kept: Path) -> None:
    here = side_path(database, suffix)
    if suffix == "" and inode(here) == ino:
        discard(kept)  # our own hard link (or copy): the file never left its place
    elif inode(kept) != ino:
        return
    elif inode(here) is None:
        os.replace(kept, here)
    elif not (suffix in DATA_SUFFIXES and holds_data(kept)):
        discard(kept)  # an -shm or empty -wal: SQLite made new ones since; these hold nothing


def _refuse_mixing(journal: Journal) -> None:
    """Rolling back puts the side files that moved aside back beside the database: not
    when the database changed since (something wrote to it without them), nor over new
    ones that hold data."""
    database, aside = journal.database_path, journal.aside_path
    now = fingerprint(database)
    changed = bool(journal.fingerprint and now and now != journal.fingerprint)
    for suffix, ino in journal.current.items():
        kept, here = aside / f"{database.name}{suffix}", side_path(database, suffix)
        with_data = suffix in DATA_SUFFIXES and inode(kept) == ino and holds_data(kept)
        if with_data and (changed or holds_data(here)) or (suffix == "" and now and now[0] != ino):
            raise RestoreRefused(
                f"an interrupted {journal.kind} left {database} half done, and the file changed since (did Stash "
                f"run?). Not touching it: the previous files are in {aside}, the journal is "
                f"{journal_path(database)}; stop Stash and sort them out by hand or ask for help"
            )
