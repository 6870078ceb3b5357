"""`stash-backup export`: one backup as a self-contained zip in Stash v0.31's layout,
or its database alone (FILE.sqlite, or FILE.gz compressed) for Stash's manual restore."""

from __future__ import annotations

import os
from pathlib import Path

from ..core import stored
from ..core.archive import Archive, Entry
from ..core.errors import UsageError
from ..core.reporting import Reporter, human_size
from ..core.sqlite_check import QUICK
from ..core.verify import verify_backup


def export_backup(archive: Archive, name: str, output: Path, report: Reporter) -> Path:
    """One backup as a self-contained zip in Stash v0.31's layout (for another machine,
    or Stash's own manual restore). Holds the archive's lock: no collection runs
    while the backup's blobs are being read."""
    if output.exists():
        raise UsageError(f"{output} already exists: choose another --output (nothing is overwritten)")
    with archive.locked():
        entry = archive.find(name) or archive.find(name + ".zip") or archive.find(name.removesuffix(".zip"))
        if entry is None:
            raise UsageError(f"no backup named {name!r} in {archive.folder}: see stash-backup list")
        if entry.is_stored and output.suffix in (".sqlite", ".gz"):
            stored.export_database(archive.store, entry.file, output, report)
        elif entry.is_stored:
            stored.export_zip(archive.store, entry.file, output, report)
        elif entry.kind == "zip":
            _copy_verified(archive.path_of(entry), entry, output, report)
        else:
            raise UsageError(f"{entry.file} is a plain database file already: copy {archive.path_of(entry)} as it is")
    report.info(f"exported {entry.file} to {output} ({human_size(output.stat().st_size)}), verified")
    return output


def _copy_verified(source: Path, entry: Entry, output: Path, report: Reporter) -> None:
    from ..core.atomic import atomic_output, make_folders, private_mode
    from ..core.hashing import copy_and_hash

    make_folders(output.parent)
    with atomic_output(output) as (handle, temp), open(source, "rb") as original:
        copy_and_hash(original, handle)
        handle.flush()
        verify_backup(
            temp,
            QUICK,
            expected_size=entry.size,
            expected_sha256=entry.sha256,
            progress=report.bytes_progress("verifying the copy"),
        )
        os.chmod(temp, private_mode(output.parent))  # the whole library: private as the archive
