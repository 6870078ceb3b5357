"""Archives as older versions left them: a stored backup whose database is a whole
gzip snapshot (`snapshots/<name>.gz`, before page snapshots, issue 21)."""

import io

from stash_backup_plugin.core import record as records
from stash_backup_plugin.core.atomic import discard
from stash_backup_plugin.core.store import Store, commit_snapshot, write_snapshot


def gzip_snapshot(store: Store, name: str) -> records.Header:
    """Turn a stored backup into one made before page snapshots: its database as a gzip
    snapshot, its record naming it; its page list removed (its packs are left for
    garbage collection, as a migrated archive's would be)."""
    store.incoming.mkdir(parents=True, exist_ok=True)
    database = store.incoming / f"{name}.sqlite"
    database.write_bytes(database_of(store, name))
    try:
        return replace_database(store, name, database)
    finally:
        discard(database)


def replace_database(store: Store, name: str, database) -> records.Header:
    """The backup's database replaced by `database` (a gzip snapshot), its record made to match."""
    header = store.header(name)
    temp, digest = write_snapshot(store, name, database)
    path = commit_snapshot(store, name, temp)
    old = store.folder / header.snapshot.file
    header.snapshot = records.Snapshot(
        path.relative_to(store.folder).as_posix(), digest.size, digest.sha256, path.stat().st_size
    )
    records.rewrite_header(store.record_path(name), header)
    if old != path:
        discard(old)
    return header


def database_of(store: Store, name: str) -> bytes:
    out = io.BytesIO()
    store.read_snapshot(store.header(name), out)
    return out.getvalue()
