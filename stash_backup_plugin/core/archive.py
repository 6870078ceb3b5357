"""The local archive: a folder of verified backup files and a manifest (JSON) that
records for each its size, SHA-256, schema version, time and blob count. One run at
a time holds the archive's lock; it removes temp files a killed run left behind."""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

from .atomic import commit, make_folders, remove_stale_temps, storage_error, take_parent_owner, write_bytes_atomic
from .errors import StorageError, UsageError
from .naming import BackupName, is_temp_name, parse_backup_name, with_counter

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
    kind: str  # "sqlite" or "zip"
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

    @property
    def created_time(self) -> datetime:
        return datetime.fromisoformat(self.created)

    @classmethod
    def from_dict(cls, data: dict) -> "Entry":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Archive:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_NAME

    def path_of(self, entry: Entry) -> Path:
        return self.folder / entry.file

    @contextlib.contextmanager
    def locked(self) -> Iterator["Archive"]:
        """Hold the archive for this run; clean up what a killed run left."""
        try:
            make_folders(self.folder)
            lock = self.folder / LOCK_NAME
            created = not lock.exists()
            handle = open(lock, "a+b")
            if created:
                take_parent_owner(lock)
        except OSError as error:
            raise storage_error("use the archive folder", self.folder, error) from error
        with handle:
            _lock(handle, self.folder)
            remove_stale_temps(self.folder)
            yield self

    def entries(self) -> list[Entry]:
        """Entries, newest first."""
        if not self.manifest_path.exists():
            return []
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            entries = [Entry.from_dict(item) for item in data.get("entries", [])]
        except (ValueError, TypeError, AttributeError) as error:
            raise StorageError(f"{self.manifest_path} is damaged ({error}): move it aside and run verify to rebuild it") from error
        return sorted(entries, key=lambda e: e.created, reverse=True)

    def find(self, name: str) -> Optional[Entry]:
        return next((e for e in self.entries() if e.file == name), None)

    def unregistered_files(self) -> list[Path]:
        """Backup files in the folder that the manifest does not know (e.g. a run was
        killed between the rename and the manifest update)."""
        if not self.folder.is_dir():
            return []
        known = {e.file for e in self.entries()}
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
        self._save([e for e in self.entries() if e.file != entry.file] + [entry])
        return entry

    def _free_name(self, name: str) -> str:
        candidate, counter = name, 1
        while (self.folder / candidate).exists():
            counter += 1
            candidate = with_counter(name, counter)
        return candidate

    def record(self, entry: Entry) -> None:
        """Insert or replace an entry's record (after a re-verification)."""
        self._save([e for e in self.entries() if e.file != entry.file] + [entry])

    def remove(self, entry: Entry) -> None:
        # Forget it first: a crash in between leaves an unregistered file, never a
        # manifest entry pointing at nothing.
        self._save([e for e in self.entries() if e.file != entry.file])
        try:
            self.path_of(entry).unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            raise storage_error("remove", self.path_of(entry), error) from error

    def _save(self, entries: list[Entry]) -> None:
        ordered = sorted(entries, key=lambda e: e.created, reverse=True)
        payload = {"format": FORMAT, "entries": [asdict(e) for e in ordered]}
        write_bytes_atomic(self.manifest_path, (json.dumps(payload, indent=2) + "\n").encode())


def _lock(handle, folder: Path) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: msvcrt locks the first byte instead
        import msvcrt
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
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
