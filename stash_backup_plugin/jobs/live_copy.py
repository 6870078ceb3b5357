"""The database for `download` straight from Stash's live file, where it is readable
here (the plugin, a CLI on Stash's host): SQLite's online backup of the running
database (core/sqlite_check.copy_live) instead of asking Stash for its `VACUUM INTO`
and downloading it. Stash is spared the rewrite, nothing crosses HTTP, and pages that
did not change stay byte-identical, so the archive stores only what changed (Stash's
`VACUUM INTO` rewrites every page after the first resized row).

A path is no proof: a stale database left at the same path (Stash moved into Docker,
say) would be backed up every night while the real one changes. So the copy is used
only when it holds the very library the server reports (core/library.Fingerprint:
its counts and each kind's newest edit); otherwise Stash's own backup is used, and a
file that is not the server's is named.

The question costs Stash about a second on a 1 GiB library, so a first copy is asked
about only after it: on a quiet night, the common case, it holds what the server
reports. Only a copy that differs (an edit during it, or another file) leads to copies
asked about before and after, as many as before this shortcut: a library edited
without pause still gets a copy made between two answers an instant apart."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Optional

from ..core import library
from ..core.atomic import discard, temp_path_in
from ..core.bounded import one_line
from ..core.errors import ServerError, VerificationError
from ..core.faults import crash_point
from ..core.reporting import Reporter
from ..core.sqlite_check import copy_live, open_unchanged, schema_version
from ..server.api import Downloaded, ServerInfo, StashAPI

SOURCE = "live-file"  # record.Header.source of a backup copied from the live file
ATTEMPTS = 3  # copies asked about before and after; then Stash's backup is used
FALLBACK = "Stash's own backup is used instead"
_AGAIN = object()  # an attempt's outcome: the library changed while it was copied


def live_database_path(info: ServerInfo) -> Optional[Path]:
    """The server's database file when this process can read it; else None."""
    if not info.database_path:
        return None
    path = Path(info.database_path)
    if path.is_absolute() and path.is_file() and os.access(path, os.R_OK) and _side_files_safe(path):
        return path
    return None


def _side_files_safe(database: Path) -> bool:
    """Whether a read-only connection can do no harm beside the database. Where the
    -wal or -shm is missing (an idle Stash closes its files) SQLite creates them; made
    by another user, Stash could not write them and would fail. Root is safe (SQLite
    gives root's side files the database's owner), and so is the database's owner."""
    if all(Path(f"{database}{suffix}").exists() for suffix in ("-wal", "-shm")):
        return True
    if not hasattr(os, "geteuid"):
        return False
    return os.geteuid() in (0, database.stat().st_uid)


def copy_live_database(
    client: StashAPI, info: ServerInfo, database: Path, folder: Path, report: Reporter
) -> Optional[tuple[Downloaded, str]]:
    """A consistent copy of the server's live `database` (live_database_path) in a temp
    file in `folder`, with the name Stash would give its backup; None (said why) when
    Stash's own backup must be used."""
    report.progress(0.0, "copying the live database")
    for bracketed in (False,) + (True,) * ATTEMPTS:
        temp = temp_path_in(folder, database.name)
        try:
            outcome = _attempt(client, info, database, temp, report, bracketed)
        except BaseException:
            discard(temp)
            raise
        if outcome is None or outcome is _AGAIN:
            discard(temp)
        if outcome is not _AGAIN:
            return outcome
    report.info(f"the library changed during each of {ATTEMPTS + 1} copies of the live database: {FALLBACK}")
    return None


def _attempt(client: StashAPI, info: ServerInfo, database: Path, temp: Path, report: Reporter, bracketed: bool):
    """One copy into `temp`, then a question to the server, and one before it too when
    `bracketed`: the copy and its name, None (said why) when Stash's backup must be
    used, or _AGAIN. A copy holding the library the server reports before or after it
    is a committed state of the server's database; equal answers around a copy that
    differs from both name a file that is not the server's."""
    before = _fingerprint(client, report) if bracketed else None
    if bracketed and before is None:
        return None
    try:
        schema, copied = _copy(database, temp)
    except (sqlite3.Error, OSError, VerificationError) as error:
        report.info(f"the live database {database} cannot be copied here ({one_line(str(error))}): {FALLBACK}")
        return None
    crash_point("live-copied")
    if schema != info.schema_version:  # the schema alone tells: no question needed
        return _not_the_servers(database, f"schema {schema}, Stash reports {info.schema_version}", report)
    after = _fingerprint(client, report)
    if after is None:
        return None
    if any(not library.differences(answer, copied) for answer in (before, after) if answer is not None):
        name = f"{database.name}.{schema}.{datetime.now():%Y%m%d_%H%M%S}"
        return Downloaded(temp, temp.stat().st_size, "", 0), name  # hashed as the store reads it
    if before is None or before != after:
        return _AGAIN
    # a quiet library, and still another one: not the server's file
    return _not_the_servers(database, library.differences(after, copied)[0], report)


def _not_the_servers(database: Path, difference: str, report: Reporter) -> None:
    report.warning(f"{database} is not the database this Stash serves ({difference}): {FALLBACK}")
    return None


def _fingerprint(client: StashAPI, report: Reporter) -> Optional[library.Fingerprint]:
    """What the server says its library holds; None (said why) when it cannot say: its
    own queries failing, on a damaged database say, leave it to Stash's backup."""
    try:
        return client.library_fingerprint()
    except ServerError as error:
        report.info(f"Stash could not describe its library ({one_line(str(error), 160)}): {FALLBACK}")
        return None


def _copy(database: Path, temp: Path) -> tuple[int, library.Fingerprint]:
    copy_live(database, temp)
    with open_unchanged(temp) as connection:
        return schema_version(connection, temp), library.of_database(connection)
