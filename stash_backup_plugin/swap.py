"""The database swap, journaled so that a run killed at any point (kill -9) is
finished or rolled back by the next run, and nothing is ever lost.

The current database moves into an aside folder *together with* its -wal, -shm and
-journal (a stale -wal left beside a new database is replayed into it). The database
file is hard-linked rather than moved, so its path never goes missing: a Stash
started meanwhile cannot create a fresh empty database there. The incoming file
replaces it with one os.replace. Files are told apart by inode, so recovery knows
exactly which file is which. Standard library only."""
from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from .atomic import fsync_dir, make_folders, write_bytes_atomic
from .errors import RestoreRefused, StorageError
from .sqlite_check import SIDE_SUFFIXES
from .stash_process import DB_LOCK_LENGTH, DB_LOCK_START

ALL_SUFFIXES = ("",) + SIDE_SUFFIXES
JOURNAL_SUFFIX = ".stash-restore-journal"
RECORD_NAME = "restore-record.json"
CRASH_ENV = "STASH_RESTORE_CRASH_AT"


def crash_point(step: str) -> None:
    """Test hook: die exactly here, as kill -9 would, when the environment says so."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def journal_path(database: Path) -> Path:
    return database.with_name(database.name + JOURNAL_SUFFIX)


def inode(path: Path) -> Optional[int]:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


@dataclass
class Journal:
    kind: str  # "restore" or "undo"
    database: str
    aside: str
    current: dict[str, int] = field(default_factory=dict)  # suffix -> inode before the swap
    incoming: dict[str, list] = field(default_factory=dict)  # suffix -> [path, inode]
    source: str = ""  # the backup, or the aside folder being undone
    started: str = ""
    # size and mtime of the database before the swap: if it changed after a crash,
    # something (Stash) wrote to it and an automatic roll back could lose that.
    fingerprint: list = field(default_factory=list)

    @property
    def database_path(self) -> Path:
        return Path(self.database)

    @property
    def aside_path(self) -> Path:
        return Path(self.aside)

    def save(self) -> None:
        write_bytes_atomic(journal_path(self.database_path), json.dumps(asdict(self), indent=2).encode())

    @classmethod
    def load(cls, database: Path) -> Optional["Journal"]:
        path = journal_path(database)
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            raise StorageError(f"{path} is damaged ({error}): inspect it and the folders "
                               f"stash-restore-* beside the database by hand") from error

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal_path(self.database_path))
        fsync_dir(self.database_path.parent)


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
            raise RestoreRefused(f"{path} is open in another process (Stash?): stop Stash, then run this again") from None
        yield fd
    finally:
        os.close(fd)


# --- the swap ---------------------------------------------------------------------------

def side_path(database: Path, suffix: str) -> Path:
    return Path(f"{database}{suffix}")


def fingerprint(path: Path) -> list:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return []
    return [info.st_ino, info.st_size, info.st_mtime_ns]


def current_inodes(database: Path) -> dict[str, int]:
    return {suffix: ino for suffix in ALL_SUFFIXES if (ino := inode(side_path(database, suffix))) is not None}


def perform(journal: Journal) -> None:
    """Move the current files aside and put the incoming ones in place."""
    database, aside = journal.database_path, journal.aside_path
    make_folders(aside)
    fsync_dir(database.parent)
    crash_point("aside-created")
    incoming_db = Path(journal.incoming[""][0])
    with sqlite_exclusive_lock(incoming_db), _lock_current(database):
        _move_current_aside(journal)
        crash_point("moved-aside")
        for suffix, (path, _) in journal.incoming.items():
            if suffix:
                os.replace(path, side_path(database, suffix))
        os.replace(incoming_db, database)
        fsync_dir(database.parent)
        fsync_dir(aside)
        crash_point("placed")
        _finish(journal)


@contextlib.contextmanager
def _lock_current(database: Path):
    if database.exists():
        with sqlite_exclusive_lock(database):
            yield
    else:
        yield


def _move_current_aside(journal: Journal) -> None:
    database, aside = journal.database_path, journal.aside_path
    for suffix, ino in journal.current.items():
        source, target = side_path(database, suffix), aside / f"{database.name}{suffix}"
        if inode(source) != ino or inode(target) == ino:
            continue  # already done by an earlier run
        if suffix == "":
            _link_or_copy_aside(source, target)
        else:
            os.replace(source, target)
        crash_point(f"aside{suffix or '-db'}")
    fsync_dir(aside)
    fsync_dir(database.parent)


def _link_or_copy_aside(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        # No hard links here (FAT, some network shares): move it; the path is empty
        # only until the os.replace that follows, and we hold its lock meanwhile.
        os.replace(source, target)


def _finish(journal: Journal) -> None:
    record = {"kind": journal.kind, "source": journal.source, "started": journal.started,
              "database": journal.database, "moved_aside": sorted(journal.current)}
    write_bytes_atomic(journal.aside_path / RECORD_NAME, json.dumps(record, indent=2).encode())
    journal.remove()


def placed(journal: Journal) -> bool:
    return inode(journal.database_path) == journal.incoming[""][1]


def recover(journal: Journal) -> tuple[bool, str]:
    """Finish a swap whose database was already replaced; otherwise roll it back.
    Returns (finished, what was done for the user)."""
    database, aside = journal.database_path, journal.aside_path
    now = fingerprint(database)
    if journal.fingerprint and now and now[0] == journal.fingerprint[0] and now != journal.fingerprint:
        raise RestoreRefused(f"an interrupted {journal.kind} left {database} half done, and the file changed since "
                             f"(did Stash run?). Not touching it: the previous files are in {aside}, the journal is "
                             f"{journal_path(database)}; stop Stash and sort them out by hand or ask for help")
    if placed(journal):
        for suffix in SIDE_SUFFIXES:  # none of the old side files may stay beside it
            source, target = side_path(database, suffix), aside / f"{database.name}{suffix}"
            if suffix in journal.current and inode(source) == journal.current[suffix]:
                os.replace(source, target)
        fsync_dir(database.parent)
        _finish(journal)
        return True, f"finished an interrupted {journal.kind}: {database} is in place, the old files are in {aside}"
    for suffix, (path, ino) in journal.incoming.items():
        here = side_path(database, suffix)
        if suffix and inode(here) == ino:
            os.replace(here, path)
    for suffix, ino in journal.current.items():
        here, kept = side_path(database, suffix), aside / f"{database.name}{suffix}"
        if inode(here) is None and inode(kept) == ino:
            os.replace(kept, here)
        elif inode(here) == ino and inode(kept) == ino:
            os.unlink(kept)  # our own extra hard link; the file stays where it was
    fsync_dir(database.parent)
    with contextlib.suppress(OSError):
        aside.rmdir()  # only when empty: nothing in it is ever deleted
    journal.remove()
    return False, f"rolled back an interrupted {journal.kind}: {database} is as it was before"
