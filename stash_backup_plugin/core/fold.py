"""A stored backup made before page snapshots (issue 21) folded into pages: its gzip
snapshot reassembled (SHA-256 checked), its pages stored as a new backup's are, its
page list committed and checked, its record rewritten to name the list (same blobs,
same database), and only then the gzip file removed.

Crash safety: the run holds a pending marker (the packs it writes are spared by
garbage collection until the record names them); until the record is rewritten the
gzip snapshot is the backup's database and the page list an unused file; after it,
a leftover gzip file is removed by the next fold. Standard library only."""

from __future__ import annotations

import os

from . import page_store
from . import record as records
from .atomic import discard, fsync_dir, make_folders
from .errors import VerificationError
from .faults import crash_point
from .hashing import Discard
from .naming import TEMP_MARKER
from .pages import CODEC as PAGES
from .snapshot import LEVEL
from .store import SNAPSHOTS, Store


def gzip_backups(store: Store) -> list[str]:
    """Backups whose database is still a gzip snapshot, and those a killed fold left
    with their gzip file beside their page list."""
    return [
        name
        for name in store.record_names()
        if store.header(name).snapshot.codec != PAGES or store.snapshot_path(name).exists()
    ]


def fold(store: Store, name: str) -> records.Header:
    """Fold one backup's gzip snapshot into pages (see the module); returns its new header."""
    with store.pending(name):
        header = store.header(name)
        if header.snapshot.codec != PAGES:
            header = _fold(store, header)
        discard(store.snapshot_path(name))
        fsync_dir(store.folder / SNAPSHOTS)
        return header


def _fold(store: Store, header: records.Header) -> records.Header:
    make_folders(store.incoming)
    database = store.incoming / f"{header.name}.fold{TEMP_MARKER}{os.getpid()}"
    try:
        with open(database, "w+b") as out:
            store.read_snapshot(header, out)  # its size and SHA-256 checked against the record
        written = page_store.write_pages(store.folder, store.incoming, database, LEVEL)
    finally:
        discard(database)
    if (written.digest.size, written.digest.sha256) != (header.snapshot.size, header.snapshot.sha256):
        raise VerificationError(f"{header.name}: its pages do not make the recorded database: nothing was changed")
    list_path = store.page_list_path(header.name)
    page_store.commit_page_list(list_path, written.listing)
    crash_point("fold-list")
    folded = records.Header(**{**vars(header)})
    folded.snapshot = records.Snapshot(
        list_path.relative_to(store.folder).as_posix(),
        written.digest.size,
        written.digest.sha256,
        len(written.listing),
        PAGES,
        written.new_pack_bytes,
    )
    store.read_snapshot(folded, Discard())  # read back whole before the record names it
    records.rewrite_header(store.record_path(header.name), folded)  # the same images and settings
    crash_point("fold-record")
    return folded
