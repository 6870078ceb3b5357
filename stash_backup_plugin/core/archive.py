"""The local archive. New backups are stored backups (store.py: images once, a
compressed database per backup, a record each); backups made before that are
per-backup files (a zip or a plain sqlite file) listed in a manifest (JSON) with
size, SHA-256, schema version, time and blob count. Both kinds are listed, verified,
pruned and restored alike; the manifest also keeps the last verification of each
stored backup. One run at a time holds the archive's lock; it removes temp files a
killed run left behind."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

from .atomic import (
    commit,
    make_folders,
    open_lock_file,
    remove_stale_temps,
    storage_error,
    take_parent_owner,
    write_bytes_atomic,
)
from .errors import StorageError, UsageError, VerificationError
from .naming import BackupName, in_order_of_making, is_temp_name, parse_backup_name, with_counter
from .record import Header
from .page_store import stored_packs
from .store import Store

STORED = "stored"  # Entry.kind of a backup in the store
MANIFEST_NAME = "manifest.json"
# The plugin's default archive, beside Stash's config.yml; stash-restore looks there too.
DEFAULT_FOLDER_NAME = "stash-backup-archive"
ARCHIVE_FOLDER_SETTING = "archiveFolder"  # the plugin's setting that moves the archive elsewhere
LOCK_NAME = ".stash-backup.lock"
FORMAT = 1


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def backup_files(folder: Optional[Path]) -> list[tuple[Path, BackupName]]:
    """The Stash backups in a folder (Stash's backup folder, an archive), oldest name
    first: files named as Stash names backups, never our temps nor Stash's anonymised
    database. One definition, so that every listing agrees."""
    if not folder or not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        parsed = None if is_temp_name(path.name) else parse_backup_name(path.name)
        if parsed and path.is_file():
            found.append((path, parsed))
    return found


@dataclass
class Entry:
    file: str
    size: int
    sha256: str
    schema_version: int
    created: str  # the backup's own time (Stash names it in the server's local time)
    kind: str  # "stored", or an older per-backup file: "sqlite" or "zip"
    blob_count: int = 0
    includes_blobs: bool = False
    blobs_not_included: int = 0
    source: str = ""  # "server-zip", "plugin-zip", "database"
    server_version: str = ""
    added_at: str = field(default_factory=utc_now)
    verified_at: str = ""
    verified_level: str = ""
    verified_ok: bool = False
    verify_error: str = ""
    new_bytes: int = 0  # stored backups: what this one added to the archive (its snapshot, its new blobs)
    migrated_from: str = ""  # stored backups imported from an old file by migrate
    # The last restore drill (jobs/drill.py): {"at", "ok", "seconds", "stash_version", "migrated", "differences", ...}
    drill: dict = field(default_factory=dict)
    salvaged: bool = False  # recovered from a damaged database (record.Header.salvaged): never verified-ok
    pre_upgrade: str = ""  # Stash's pre-migration backup, adopted: "<from>→<to>" (record.Header.pre_upgrade)
    settings_files: int = 0  # Stash's settings files the backup holds (record.Header.settings)

    @property
    def is_stored(self) -> bool:
        return self.kind == STORED

    @property
    def created_time(self) -> datetime:
        """When the backup was made (of two in one second, the `-N` one the later)."""
        return in_order_of_making(datetime.fromisoformat(self.created), self.file)

    @classmethod
    def from_dict(cls, data: dict) -> "Entry":
        """An entry as read from the manifest (a file anyone may have edited): every
        field of its type, the name a plain file name, the time a time. Raises
        ValueError naming the first field that is not."""
        if not isinstance(data, dict):
            raise ValueError(f"an entry is {type(data).__name__}, not an object")
        known = {f.name: f for f in fields(cls)}
        missing = [f.name for f in known.values() if f.name not in data and _required(f)]
        if missing:
            raise ValueError(f"{missing[0]} is missing")
        for name, value in data.items():
            kind = str(known[name].type) if name in known else ""  # a string: annotations are postponed
            if kind and not _of_type(value, kind):
                raise ValueError(f"{name} is {json.dumps(value)[:40]}, not {_TYPE_WORDS[kind]}")
        entry = cls(**{k: v for k, v in data.items() if k in known})
        if entry.file in ("", ".", "..") or "/" in entry.file or "\\" in entry.file:
            raise ValueError(f"file {entry.file!r} is not a file name in the archive folder")
        try:
            entry.created_time  # noqa: B018 (parsed for its error: a created that is no time)
        except ValueError:
            raise ValueError(f"created {entry.created!r} is not a time") from None
        return entry


def _label(raw) -> str:
    name = raw.get("file") if isinstance(raw, dict) else None
    return repr(name[:120]) if isinstance(name, str) and name else "without a file name"


_TYPE_WORDS = {"str": "text", "int": "a whole number", "bool": "true or false", "dict": "an object"}


def _of_type(value, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "dict": dict}[kind])


def _required(spec) -> bool:
    from dataclasses import MISSING

    return spec.default is MISSING and spec.default_factory is MISSING


@dataclass
class Usage:
    blobs: int = 0
    blob_bytes: int = 0
    snapshot_bytes: int = 0
    record_bytes: int = 0
    old_bytes: int = 0  # per-backup zips and sqlite files from before the store

    @property
    def total(self) -> int:
        return self.blob_bytes + self.snapshot_bytes + self.record_bytes + self.old_bytes


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class Archive:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        # Manifest entries that could not be read: kept in the file as they are (a rewrite
        # never drops them), skipped otherwise, each named by `manifest_problems`.
        self._damaged: list[tuple[dict, str]] = []

    @property
    def manifest_problems(self) -> list[str]:
        """One line per damaged manifest entry: which one, what is wrong, what to do."""
        return [
            f"{self.manifest_path}: the entry {_label(raw)} is damaged ({reason}): skipped; fix or remove "
            "it (verify registers a backup file it no longer names)"
            for raw, reason in self._damaged
        ]

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @property
    def store(self) -> Store:
        return Store(self.folder)

    def path_of(self, entry: Entry) -> Path:
        """The file that is the backup: a stored backup's record, or the old file."""
        return self.store.record_path(entry.file) if entry.is_stored else self.folder / entry.file

    @contextlib.contextmanager
    def locked(self) -> Iterator["Archive"]:
        """Hold the archive for this run; clean up what a killed run left."""
        try:
            make_folders(self.folder)
            close_to_others(self.folder)
            lock = self.folder / LOCK_NAME
            created = not lock.exists()
            handle = open_lock_file(lock)
            if created:
                take_parent_owner(lock)
        except OSError as error:
            raise storage_error("use the archive folder", self.folder, error) from error
        with handle:
            _lock(handle, self.folder)
            remove_stale_temps(self.folder)
            self.store.clean_after_killed_runs()
            yield self

    @contextlib.contextmanager
    def reading(self, create_lock: bool = True) -> Iterator["Archive"]:
        """Read the archive (a restore) while no run changes it: a shared hold on the
        same lock, so a prune waits for the restore and the restore for a running
        prune. Cleans nothing; on read-only media it cannot lock, and nothing can change."""
        handle = None
        # The lock file is made if missing (unless asked not to: a dry run), so a later run sees the hold.
        for mode in ("a+b", "rb") if create_lock else ("rb",):
            try:
                handle = open_lock_file(self.folder / LOCK_NAME, mode)
                break
            except OSError:
                continue
        if handle is None:
            yield self
            return
        with handle:
            try:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except ImportError:
                pass  # Windows: the exclusive byte lock of locked() is not shared
            except OSError:
                raise UsageError(f"a stash-backup run is using {self.folder}: wait for it to finish") from None
            yield self

    def entries(self) -> list[Entry]:
        """Every backup, newest first: the stored ones (their records are the truth;
        the manifest adds their last verification) and the older per-backup files."""
        recorded = self._manifest_entries()
        checks = {e.file: e for e in recorded if e.is_stored}
        stored = self._stored_entries(checks)
        # An old file whose import into the store was cut short (record written, file
        # not yet removed) is the same backup: listed once, as the stored one.
        superseded = {e.migrated_from for e in stored if e.migrated_from}
        entries = [e for e in recorded if not e.is_stored and e.file not in superseded] + stored
        return sorted(entries, key=lambda e: e.created, reverse=True)

    def file_entries(self) -> list[Entry]:
        """The older per-backup files the manifest records (also any already imported)."""
        return [e for e in self._manifest_entries() if not e.is_stored]

    def superseded_files(self) -> list[Entry]:
        """Old files already imported into the store (migrate removes them)."""
        imported = {e.migrated_from for e in self._stored_entries({}) if e.migrated_from}
        return [e for e in self._manifest_entries() if not e.is_stored and e.file in imported]

    def _manifest_entries(self) -> list[Entry]:
        """The manifest's readable entries; a damaged one is skipped and remembered
        (manifest_problems), so the rest of the archive still lists and verifies."""
        self._damaged = []
        if not self.manifest_path.exists():
            return []
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            items = data.get("entries", [])
            if not isinstance(items, list):
                raise TypeError("its entries are not a list")
        except (ValueError, TypeError, AttributeError) as error:
            raise StorageError(
                f"{self.manifest_path} is damaged ({error}): move it aside and run verify to rebuild it"
            ) from error
        entries = []
        for item in items:
            try:
                entries.append(Entry.from_dict(item))
            except ValueError as error:
                self._damaged.append((item, str(error)))
        return entries

    def _stored_entries(self, checks: dict[str, Entry]) -> list[Entry]:
        entries = []
        for name in self.store.record_names():
            try:
                entry = entry_from_header(self.store.header(name))
            except VerificationError as error:  # listed, and failed: verify says what is wrong
                entry = Entry(
                    name, 0, "", 0, _created_from(name), STORED, verified_at=utc_now(), verify_error=str(error)
                )
            check = checks.get(name)
            if check:
                entry.drill = check.drill
            if check and check.verified_at:
                entry.verified_at, entry.verified_level = check.verified_at, check.verified_level
                entry.verified_ok, entry.verify_error = check.verified_ok and entry.verified_ok, check.verify_error
            entries.append(entry)
        return entries

    def usage(self) -> "Usage":
        """What the archive takes on disk, by kind."""
        usage = Usage()
        for blob in self.store.stored_blobs():
            usage.blobs += 1
            usage.blob_bytes += blob.size
        for name in self.store.snapshot_names():
            usage.snapshot_bytes += _size(self.store.snapshot_path(name)) + _size(self.store.page_list_path(name))
        usage.snapshot_bytes += sum(pack.size for pack in stored_packs(self.store.folder))
        for name in self.store.record_names():
            usage.record_bytes += _size(self.store.record_path(name))
        for entry in self._manifest_entries():
            if not entry.is_stored:
                usage.old_bytes += _size(self.folder / entry.file)
        return usage

    def find(self, name: str) -> Optional[Entry]:
        return next((e for e in self.entries() if e.file == name), None)

    def unregistered_files(self) -> list[Path]:
        """Backup files in the folder that the manifest does not know (e.g. a run was
        killed between the rename and the manifest update)."""
        if not self.folder.is_dir():
            return []
        known = {e.file for e in self._manifest_entries()}
        return [path for path, _ in backup_files(self.folder) if path.name not in known]

    def newest_verified(self) -> Optional[Entry]:
        return next((e for e in self.entries() if e.verified_ok), None)

    def add(self, temp_path: Path, entry: Entry) -> Entry:
        """Move a verified temp file to its final name and record it. Two backups
        made in the same second get distinct names; nothing is overwritten."""
        entry.file = self._free_name(entry.file)
        final = self.path_of(entry)
        try:
            commit(temp_path, final)
        except OSError as error:
            raise storage_error("store", final, error) from error
        self._save([e for e in self._manifest_entries() if e.file != entry.file] + [entry])
        return entry

    def _free_name(self, name: str) -> str:
        candidate, counter = name, 1
        while self._taken(candidate):
            counter += 1
            candidate = with_counter(name, counter)
        return candidate

    def free_stored_name(self, name: str) -> str:
        """A name for a new stored backup that no backup of either kind has."""
        return self._free_name(name[:-4] if name.endswith(".zip") else name)

    def _taken(self, name: str) -> bool:
        bare = name[:-4] if name.endswith(".zip") else name
        return any(
            p.exists()
            for p in (
                self.folder / bare,
                self.folder / f"{bare}.zip",
                self.store.record_path(bare),
                self.store.snapshot_path(bare),
                self.store.page_list_path(bare),
            )
        )

    def record(self, entry: Entry) -> None:
        """Insert or replace an entry's record (after a re-verification)."""
        self._save([e for e in self._manifest_entries() if e.file != entry.file] + [entry])

    def record_drill(self, name: str, result: dict) -> None:
        """Keep a drill's outcome beside the backup (the caller holds the lock)."""
        entry = self.find(name)
        if entry:
            entry.drill = result
            self.record(entry)

    def remove(self, entry: Entry) -> None:
        """Forget a backup. A stored one loses its record (its data goes at the next
        garbage collection); an old file is forgotten first, then deleted: a crash in
        between leaves an unregistered file, never an entry pointing at nothing."""
        if entry.is_stored:
            self.store.forget(entry.file)
            self._save([e for e in self._manifest_entries() if e.file != entry.file])
            return
        self._save([e for e in self._manifest_entries() if e.file != entry.file])
        try:
            self.path_of(entry).unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            raise storage_error("remove", self.path_of(entry), error) from error

    def _save(self, entries: list[Entry]) -> None:
        recorded = set(self.store.record_names())
        entries = [e for e in entries if not e.is_stored or e.file in recorded]  # forgotten ones go too
        ordered = sorted(entries, key=lambda e: e.created, reverse=True)
        named = {e.file for e in ordered}
        # A damaged entry stays as it was, until a good one for the same file replaces it.
        kept = [raw for raw, _ in self._damaged if not (isinstance(raw, dict) and raw.get("file") in named)]
        payload = {"format": FORMAT, "entries": [asdict(e) for e in ordered] + kept}
        write_bytes_atomic(self.manifest_path, (json.dumps(payload, indent=2) + "\n").encode())


def close_to_others(folder: Path) -> None:
    """Older versions made the archive folder 0755 and its files 0644: any local user
    could read every snapshot, and flock the lock file. The first run under the lock
    closes the archive folder (0700): what is inside is then out of other users' reach,
    whatever its own modes, without touching each of a million blobs; what is written
    from then on is private. A folder already closed to others is the owner's choice
    (0750 shares it with the group) and is left as it is."""
    if stat.S_IMODE(os.stat(folder).st_mode) & 0o007:
        os.chmod(folder, 0o700)


def _lock(handle, folder: Path) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: msvcrt locks the first byte instead
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]  # Windows only
        except OSError:
            raise UsageError(f"another stash-backup run is using {folder}: wait for it to finish") from None
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UsageError(f"another stash-backup run is using {folder}: wait for it to finish") from None


def entry_from_name(name: str) -> dict:
    """Fields that the backup's file name gives: schema version and creation time."""
    parsed = parse_backup_name(name)
    if not parsed:
        raise UsageError(f"{name!r} is not a Stash backup name (<db>.<schema>.<YYYYMMDD_HHMMSS>[.zip])")
    return {"schema_version": parsed.schema_version, "created": parsed.created.isoformat()}


def entry_from_header(header: Header) -> Entry:
    """A stored backup as the archive lists it, verified when it was made."""
    return Entry(
        file=header.name,
        size=header.snapshot.size + header.blob_bytes,
        sha256=header.snapshot.sha256,
        schema_version=header.schema_version,
        created=header.created or _created_from(header.name),
        kind=STORED,
        blob_count=header.blob_count,
        includes_blobs=header.includes_blobs,
        blobs_not_included=header.missing_blobs,
        source=header.source,
        server_version=header.server_version,
        added_at=header.added_at,
        verified_at=header.added_at,
        verified_level=header.verified_level,
        verified_ok=not header.salvaged,
        new_bytes=header.new_bytes,
        migrated_from=header.migrated_from,
        salvaged=header.salvaged,
        pre_upgrade=header.pre_upgrade,
        settings_files=int(header.settings.get("files", 0)),
    )


def _created_from(name: str) -> str:
    parsed = parse_backup_name(name)
    return parsed.created.isoformat() if parsed else "1970-01-01T00:00:00"
