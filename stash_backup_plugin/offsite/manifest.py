"""The remote's manifest: which backups the remote holds. It is the remote's commit
point: a backup counts there only once the manifest lists it, and the manifest lists it
only after its snapshot, every blob it refers to and its record were uploaded and
checked (size, and MD5 where rclone compares it). It is replaced whole, from the
remote's point of view atomically (uploaded under a temp name, then moved).

    {"format": 1, "updated": ..., "backups": [{"name": ..., "record": {...}, "snapshot": {...}, ...}]}

Each backup names its record with the record's size and MD5, so a damaged or replaced
record is noticed before its blob list is believed. Pure logic: no I/O."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..core.errors import VerificationError
from ..core.record import Header, record_name
from ..core.page_store import PACKS  # noqa: F401  the archive's layout
from ..core.pages import INDEX_SUFFIX, LIST_SUFFIX, PACK_SUFFIX
from ..core.store import BLOBS, PENDING, RECORDS, SNAPSHOT_SUFFIX, SNAPSHOTS  # noqa: F401  the archive's layout

FORMAT = 1
NAME = "offsite-manifest.json"


@dataclass
class RemoteFile:
    file: str  # relative to the remote's folder
    size: int
    md5: str = ""


@dataclass
class RemoteBackup:
    name: str
    created: str
    schema_version: int
    record: RemoteFile
    snapshot: RemoteFile  # the gzip snapshot or the page list, as stored (size = stored size)
    database_size: int
    database_sha256: str
    blob_count: int
    blob_bytes: int
    missing_blobs: int = 0
    includes_blobs: bool = True
    pushed_at: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> "RemoteBackup":
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values["record"], values["snapshot"] = RemoteFile(**data["record"]), RemoteFile(**data["snapshot"])
        return cls(**values)


@dataclass
class Manifest:
    backups: list[RemoteBackup] = field(default_factory=list)
    updated: str = ""

    def find(self, name: str) -> Optional[RemoteBackup]:
        bare = name[:-4] if name.endswith(".zip") else name
        return next((b for b in self.backups if b.name == bare), None)

    def names(self) -> list[str]:
        return [b.name for b in self.backups]

    def with_backups(self, added: list[RemoteBackup], updated: str) -> "Manifest":
        names = {b.name for b in added}
        return Manifest([b for b in self.backups if b.name not in names] + added, updated)

    def without(self, names: set[str], updated: str) -> "Manifest":
        return Manifest([b for b in self.backups if b.name not in names], updated)


def encode(manifest: Manifest) -> bytes:
    ordered = sorted(manifest.backups, key=lambda b: (b.created, b.name))
    payload = {"format": FORMAT, "updated": manifest.updated, "backups": [asdict(b) for b in ordered]}
    return (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode("utf-8")


def decode(data: bytes, where: str) -> Manifest:
    try:
        payload = json.loads(data.decode("utf-8"))
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"unknown format {payload.get('format') if isinstance(payload, dict) else payload!r}")
        return Manifest(
            [RemoteBackup.from_dict(item) for item in payload.get("backups", [])], str(payload.get("updated", ""))
        )
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as error:
        raise VerificationError(
            f"{where} is damaged ({error}): nothing was changed; run offsite verify, or push to a new remote folder"
        ) from None


def record_file(name: str) -> str:
    """Where a backup's record is, relative to the remote's folder (as in the archive)."""
    return f"{RECORDS}/{record_name(name)}"


def snapshot_file(name: str) -> str:
    """A gzip snapshot (backups made before page snapshots)."""
    return f"{SNAPSHOTS}/{name}{SNAPSHOT_SUFFIX}"


def page_list_file(name: str) -> str:
    return f"{SNAPSHOTS}/{name}{LIST_SUFFIX}"


def snapshot_files(name: str) -> tuple[str, str]:
    """Where a backup's database may be: its gzip snapshot or its page list."""
    return snapshot_file(name), page_list_file(name)


def pack_files(pack: str) -> tuple[str, str]:
    """A pack and its index, relative to the remote's folder (as in the archive)."""
    folder = f"{PACKS}/{pack[:2]}/{pack}"
    return folder + PACK_SUFFIX, folder + INDEX_SUFFIX


def backup_from_header(header: Header, record_size: int, record_md5: str, pushed_at: str) -> RemoteBackup:
    return RemoteBackup(
        name=header.name,
        created=header.created,
        schema_version=header.schema_version,
        record=RemoteFile(record_file(header.name), record_size, record_md5),
        snapshot=RemoteFile(header.snapshot.file, header.snapshot.stored_size),
        database_size=header.snapshot.size,
        database_sha256=header.snapshot.sha256,
        blob_count=header.blob_count,
        blob_bytes=header.blob_bytes,
        missing_blobs=header.missing_blobs,
        includes_blobs=header.includes_blobs,
        pushed_at=pushed_at,
    )
