"""The archive's copy on a remote, through rclone. Same layout as the local store, so
that a pulled backup is a stored backup again and `rclone copy` of the remote folder is
an archive too:

    <remote>/blobs/<aa>/<bb>/<md5>        each image once
    <remote>/packs/<aa>/<id>.pack, .idx   each database page once
    <remote>/snapshots/<name>.pages       a backup's page list (or <name>.gz: a whole database)
    <remote>/backups/<name>.record        what a backup consists of (core/record.py)
    <remote>/offsite-manifest.json        the backups the remote holds: written last
    <remote>/pending/<host>.<machine>.<pid>.json  a push or prune at work (the remote's lock)

Everything is sent and fetched with rclone's checks (size always; MD5 where both sides
have it) and listed through `lsjson`. Standard library only."""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..core.archive import utc_now
from ..core.atomic import discard
from ..core.errors import RemoteError, UsageError
from ..core.faults import crash_point
from ..core.naming import TEMP_MARKER
from ..core.processes import dead_here, identity
from . import manifest as manifests
from .manifest import BLOBS, PENDING, Manifest
from .plan import RemoteBlob, blob_checksum
from .rclone import Outcome, Progress, Rclone, join

SORT_RUN = 100_000  # listing entries sorted in memory at once
MARKER_STALE_SECONDS = 48 * 3600  # a push that died on another machine
TEMP_TAG = TEMP_MARKER  # our temp names, on the remote as in the archive (core/naming.py)
# A lock marker is `pending/<host>.<pid>.json` (held() writes it); nothing else in
# pending/ is one. An upload cut short leaves rclone's partial file beside it on SFTP
# or a local remote: `<name>.<8 hex digits>.partial` (fs/operations/copy.go: ".%08x"
# + --partial-suffix), or one of our temp names: a leftover, never a lock.
_MARKER_NAME = re.compile(r"^" + re.escape(PENDING) + r"/[^/]+\.\d+\.json$")
_UPLOAD_LEFTOVER = re.compile(r"\.[0-9a-f]{8}\.partial$|" + re.escape(TEMP_TAG))


def is_marker_name(relative: str) -> bool:
    return bool(_MARKER_NAME.match(relative))


def is_upload_leftover(relative: str) -> bool:
    """An upload that did not finish (rclone's .partial, or our temp name): by its name."""
    return bool(_UPLOAD_LEFTOVER.search(relative))


@dataclass
class Listing:
    blobs: Iterator[RemoteBlob]  # sorted by checksum; read once
    strays: list[str]  # files under blobs/ that are no blob (an interrupted upload's .partial)
    files: dict[str, int]  # every other file: relative path -> size

    def under(self, folder: str) -> dict[str, int]:
        return {path: size for path, size in self.files.items() if path.startswith(folder + "/")}


@dataclass
class Marker:
    file: str
    host: str
    pid: int
    started: float
    action: str
    machine: str = ""  # processes.machine_id of its writer; "" from older versions (host alone)

    def stale(self, now: float) -> bool:
        """Two days old, or provably a dead run of this machine (never one that only
        shares the host name: a container's, or an older version's marker)."""
        return now - self.started > MARKER_STALE_SECONDS or dead_here(self.machine, self.pid)


class RemoteArchive:
    def __init__(self, rclone: Rclone, spec: str):
        spec = (spec or "").strip()
        if not spec:
            raise UsageError(
                "no remote given: pass --remote REMOTE:path (a remote from rclone config), or set STASH_BACKUP_REMOTE"
            )
        self.location = rclone.prepare(spec)  # as rclone reads it, its secrets moved out
        self.rclone, self.spec = rclone, str(self.location)
        self.display = rclone.redact(spec)
        self._hashes: Optional[bool] = None
        self._info: Optional[dict] = None

    def encrypts(self) -> bool:
        """An rclone crypt remote: what it stores is encrypted and authenticated with a
        key the user keeps."""
        return self.rclone.backend(self.location) == "crypt"

    def unauthenticated_note(self) -> str:
        """A line for the user when nothing proves that what the remote holds is what
        we sent: only rclone crypt authenticates (a key the user keeps); a bucket
        writer can replace a backup on any other remote with a consistent fake."""
        if self.encrypts():
            return ""
        return (
            f"note: {self.display} is not an rclone crypt remote: nothing authenticates what it holds, so anyone "
            "who can write there can replace a backup with a consistent fake; use a crypt remote to rule that out"
        )

    def path(self, relative: str = "") -> str:
        return join(self.spec, relative)

    def session(self):
        """One rclone daemon for a job's small operations (rclone.py)."""
        return self.rclone.session()

    # --- reading --------------------------------------------------------------------------
    def top_files(self) -> dict[str, int]:
        """The files directly in the remote folder (the first call to a remote: an
        unknown remote or refused credentials stop here)."""
        with self.rclone.lsjson(self.path(), recursive=False, on_missing=self._missing_folder, small=True) as items:
            return {item["Path"]: int(item.get("Size", -1)) for item in items}

    def _features(self) -> dict:
        if self._info is None:
            self._info = {} if self.location.is_local else self.rclone.features(self.location.root)
        return self._info

    def _missing_folder(self) -> None:
        """On a bucket-based remote (S3) a new folder lists as empty: only a missing
        bucket is "not found". A typo in a bucket's name must not start a new archive."""
        if (self._features().get("Features") or {}).get("BucketBased"):
            raise RemoteError(
                f"cannot use {self.display}: the bucket does not exist: create it "
                "(rclone mkdir REMOTE:bucket) or fix its name"
            )

    def read_manifest(self) -> Manifest:
        if manifests.NAME not in self.top_files():
            return Manifest()
        data = self.rclone.read(self.spec, manifests.NAME)
        return manifests.decode(data, f"{self.display}/{manifests.NAME}")

    def files(self, folder: str) -> dict[str, int]:
        """relative path -> size of every file under a small folder (snapshots, backups, pending)."""
        with self.rclone.lsjson(self.path(folder), small=True) as items:
            return {f"{folder}/{item['Path']}": int(item.get("Size", -1)) for item in items}

    def has_cheap_md5(self) -> bool:
        """Does a listing carry each object's MD5 at no extra cost (S3: the ETag)?"""
        if self._hashes is None:
            info = self._features()
            slow = (info.get("Features") or {}).get("SlowHash", True)
            self._hashes = "md5" in (info.get("Hashes") or []) and not slow
        return self._hashes

    @contextlib.contextmanager
    def listing(self, scratch: Path, hashes: bool = False) -> Iterator["Listing"]:
        """Everything on the remote in one listing (on S3 a few requests per thousand
        objects): the blobs sorted by checksum (an external sort in `scratch`: listings
        come in no promised order), the stray files under blobs/, and every other file."""
        strays: list[str] = []
        others: dict[str, int] = {}
        runs = []
        with self.rclone.lsjson(self.path(), hashes=hashes, on_missing=self._missing_folder) as items:
            batch: list[tuple[str, int, str]] = []
            for item in items:
                path = item["Path"]
                if not path.startswith(BLOBS + "/"):
                    others[path] = int(item.get("Size", -1))
                    continue
                checksum = blob_checksum(path[len(BLOBS) + 1 :])
                if checksum is None:
                    strays.append(path)
                    continue
                md5 = ((item.get("Hashes") or {}).get("md5") or "").lower()
                batch.append((checksum, int(item.get("Size", -1)), md5))
                if len(batch) >= SORT_RUN:
                    runs.append(_write_run(scratch, len(runs), batch))
                    batch = []
            if batch or not runs:
                runs.append(_write_run(scratch, len(runs), batch))
        with contextlib.ExitStack() as stack:
            streams = [_read_run(stack.enter_context(open(run, encoding="ascii"))) for run in runs]
            yield Listing(heapq.merge(*streams, key=lambda b: b.checksum), strays, others)
        for run in runs:
            discard(run)

    # --- writing --------------------------------------------------------------------------
    def send(self, local_root: Path, listing: Path, action: str, progress: Progress = None) -> Outcome:
        """Copy the files named in `listing` (relative paths, one a line) from the
        local archive to the same paths on the remote. The listing says they are
        missing there, so the remote is not asked again file by file."""
        outcome = self.rclone.run(
            [
                "copy",
                "--files-from-raw",
                str(listing),
                "--no-traverse",
                "--no-check-dest",
                str(local_root),
                self.path(),
            ],
            progress=progress,
            stats=True,
        )
        self.rclone.check(outcome, action, self.display)
        return outcome

    def fetch(self, listing: Path, local_root: Path, action: str, progress: Progress = None) -> Outcome:
        outcome = self.rclone.run(
            [
                "copy",
                "--files-from-raw",
                str(listing),
                "--no-traverse",
                "--no-check-dest",
                self.path(),
                str(local_root),
            ],
            progress=progress,
            stats=True,
        )
        self.rclone.check(outcome, action, self.display)
        return outcome

    def fetch_file(self, relative: str, target: Path) -> None:
        self.rclone.download(self.spec, relative, target)

    def send_small(self, local_root: Path, relatives: list[str], listing: Path, action: str) -> tuple[int, set[str]]:
        """A few small files (the backups' records): a request each to the daemon, else
        one copy. Returns (bytes sent, the paths copied)."""
        if not self.rclone.in_session():
            listing.write_text("".join(f + "\n" for f in relatives))
            outcome = self.send(local_root, listing, action)
            return outcome.bytes, set(outcome.transferred)
        sent = 0
        for relative in relatives:
            self.rclone.check(self.rclone.upload(local_root / relative, self.spec, relative), action, self.display)
            sent += (local_root / relative).stat().st_size
        return sent, set(relatives)

    def delete(self, listing: Path) -> Outcome:
        outcome = self.rclone.run(["delete", "--files-from-raw", str(listing), self.path()])
        self.rclone.check(outcome, "delete from", self.display)
        return outcome

    def put_bytes(self, relative: str, data: bytes, scratch: Path) -> None:
        """A small file, whole or not at all: uploaded under a temp name beside it, then
        moved into place on the remote (a rename, or a server-side copy: the object
        appears complete under its name either way)."""
        local = scratch / (Path(relative).name + ".upload")
        local.write_bytes(data)
        temp = f"{relative}{TEMP_TAG}{socket.gethostname()}-{os.getpid()}"
        try:
            self.rclone.check(self.rclone.upload(local, self.spec, temp), "upload to", self.display)
            crash_point(f"offsite-temp-{Path(relative).name}")
            self.rclone.check(self.rclone.move(self.spec, temp, relative), "move into place on", self.display)
        finally:
            discard(local)

    def write_manifest(self, manifest: Manifest, scratch: Path) -> None:
        """Replace the manifest, then read it back: the commit is proven, not assumed."""
        data = manifests.encode(manifest)
        self.put_bytes(manifests.NAME, data, scratch)
        if hashlib.sha256(self.rclone.read(self.spec, manifests.NAME)).digest() != hashlib.sha256(data).digest():
            raise RemoteError(
                f"the manifest on {self.display} does not read back as written: another run may be "
                "writing there; run offsite verify"
            )

    # --- the remote's lock ------------------------------------------------------------------
    def pending(self, skip: str = "") -> tuple[list[Marker], dict[str, float]]:
        """The lock markers in pending/ (but `skip`), and every other file there (a
        leftover: never a lock) with its modification time."""
        found, leftovers = [], {}
        with self.rclone.lsjson(self.path(PENDING), small=True, modtimes=True) as items:
            listed = {f"{PENDING}/{item['Path']}": _modified(item.get("ModTime")) for item in items}
        for relative, modified in listed.items():
            if relative == skip:
                continue
            if not is_marker_name(relative):
                leftovers[relative] = modified
                continue
            try:
                data = json.loads(self.rclone.read(self.spec, relative))
                found.append(
                    Marker(
                        relative,
                        str(data["host"]),
                        int(data["pid"]),
                        float(data["started"]),
                        str(data.get("action", "")),
                        str(data.get("machine") or ""),
                    )
                )
            except (RemoteError, ValueError, KeyError, TypeError):
                # Counts as live, from when it was written: it is stale two days later.
                found.append(Marker(relative, "?", 0, min(modified, time.time()), "unreadable"))
        return found, leftovers

    def markers(self, skip: str = "") -> list[Marker]:
        return self.pending(skip)[0]

    def _clear_leftovers(self, leftovers: dict[str, float], now: float, report: Callable[[str], None]) -> None:
        """Remove the uploads cut short long ago (no marker upload takes two days: its
        age proves it is no run's); name the other files, which are left alone."""
        for relative, modified in sorted(leftovers.items()):
            if is_upload_leftover(relative) and now - modified > MARKER_STALE_SECONDS:
                self._remove(relative)
                report(f"removed {self.display}/{relative}: an upload interrupted two days ago or more")
            else:
                report(f"ignored {self.display}/{relative}: not a lock marker")

    @contextlib.contextmanager
    def held(self, action: str, scratch: Path, report: Callable[[str], None]) -> Iterator[None]:
        """Mark the remote as in use for this run, then look at the other marks: refuse
        when another live run marked it; remove marks of runs that died (on this machine,
        or two days ago). Two runs that mark at once both refuse: fail closed."""
        me = identity()  # the machine in the name too: two containers named alike may share a pid
        mine = f"{PENDING}/{me['host']}.{me['machine']}.{me['pid']}.json"
        body = {**me, "started": time.time(), "action": action, "at": utc_now()}
        local = scratch / "marker.json"
        local.write_text(json.dumps(body))
        # No temp name needed: an unreadable marker counts as a live one.
        self.rclone.check(self.rclone.upload(local, self.spec, mine), "mark", self.display)
        try:
            now = time.time()
            others = []
            markers, leftovers = self.pending(skip=mine)
            self._clear_leftovers(leftovers, now, report)
            for marker in markers:
                if marker.stale(now):
                    self._remove(marker.file)
                    report(f"removed the marker of an interrupted {marker.action or 'run'} from {marker.host}")
                else:
                    others.append(marker)
            if others:
                other = others[0]
                raise UsageError(
                    f"another stash-backup {other.action or 'run'} from {other.host} (pid {other.pid}) "
                    f"is using {self.display} since {time.strftime('%Y-%m-%d %H:%M', time.localtime(other.started))}: "
                    f"wait for it; if it died, remove {self.display}/{other.file} (or wait two days)"
                )
            yield
        finally:
            # Best effort: a marker left behind (the remote went away) is this machine's,
            # and the next run here removes it once this process is gone.
            with contextlib.suppress(RemoteError):
                self._remove(mine)

    def _remove(self, relative: str) -> None:
        self.rclone.check(self.rclone.delete_file(self.spec, relative), "delete from", self.display)


def _write_run(scratch: Path, index: int, batch: list[tuple[str, int, str]]) -> Path:
    batch.sort()
    path = scratch / f"listing-{index}.txt"
    with open(path, "w", encoding="ascii") as out:
        for checksum, size, md5 in batch:
            out.write(f"{checksum} {size} {md5 or '-'}\n")
    return path


def _read_run(lines) -> Iterator[RemoteBlob]:
    for line in lines:
        checksum, size, md5 = line.split()
        yield RemoteBlob(checksum, int(size), "" if md5 == "-" else md5)


def _modified(stamp: object) -> float:
    """A listing's ModTime (RFC 3339, nanoseconds) as a POSIX time; now when unreadable."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", str(stamp or "")).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return time.time()
