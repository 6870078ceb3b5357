"""What the jobs need from a Stash server, and nothing else: four calls. StashClient
(gql + requests) is the real one; tests can pass any object with these methods, as
Litestream's ReplicaClient lets its tests do. Standard library only, so that a
command that never talks to Stash never imports the HTTP stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..core.library import Fingerprint

try:
    from typing import Protocol
except ImportError:  # pragma: no cover - Python 3.7
    Protocol = object  # type: ignore


@dataclass(frozen=True)
class ServerInfo:
    version: Optional[str]
    schema_version: Optional[int]
    database_path: Optional[str]
    backup_directory: Optional[str]
    blobs_path: Optional[str]
    blobs_storage: Optional[str]
    supports_include_blobs: bool
    # developer_options.extra_blob_paths (v0.31): more folders Stash reads blobs from,
    # found in its config.yml when that file is readable here.
    extra_blob_paths: tuple = ()
    config_path: Optional[str] = None  # Stash's config.yml, as Stash sees it
    # The other paths Stash's config names (settings.sources_for's keys): generated, cache, ...
    setting_paths: dict = field(default_factory=dict)

    @property
    def blobs_on_filesystem(self) -> bool:
        return (self.blobs_storage or "").upper() == "FILESYSTEM"


UNKNOWN_SERVER = ServerInfo(None, None, None, None, None, None, False)


@dataclass
class Downloaded:
    """A fetched backup in a temp file beside its final place: the caller verifies it,
    then commits or discards it."""

    temp_path: Path
    size: int
    sha256: str  # "": not hashed yet (a local copy: the store hashes it as it reads it)
    resumes: int


class StashAPI(Protocol):
    def server_info(self) -> ServerInfo:
        """Version, schema, paths and blob storage; whether `includeBlobs` exists."""

    def backup_database(self, download: bool, include_blobs: Optional[bool] = None) -> Optional[str]:
        """Run `backupDatabase`; the download link when `download` is true."""

    def library_fingerprint(self) -> Fingerprint:
        """What the server's library holds (core/library.py): its counts and newest edits."""

    def fetch_backup(
        self,
        link: str,
        folder: Path,
        final_name: str,
        progress: Optional[Callable[[int, Optional[int]], None]] = None,
        durable: bool = True,
    ) -> Downloaded:
        """Fetch a download link into a temp file in `folder` (raises LinkExpiredError
        or DownloadError); not `durable`: the temp file is not fsynced (it is read,
        then discarded)."""
