"""Off-site jobs: push the archive's backups to a remote, verify the remote, apply
retention there, pull one backup back into a local archive.

Crash safety is the local store's (store.py), on the remote: data first, each backup's
record next, the manifest (the remote's commit point) last; forgetting writes the
manifest first and deletes afterwards; collection deletes only what no listed backup
refers to, while no other run holds the remote. A run killed anywhere leaves at worst
unlisted objects: the next push reuses those that are whole and the next prune
removes the rest. Every job holds the local archive's lock too."""

from __future__ import annotations

import contextlib
import heapq
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator, Optional

from ..core import record as records
from ..core.archive import Archive, Entry, utc_now
from ..core.atomic import atomic_output, discard, fsync_dir, make_folders, own_like_folder, private_mode, scratch_folder
from ..core.errors import RemoteError, UsageError, VerificationError
from ..core.naming import blob_member_name, in_order_of_making, parse_backup_name
from ..core.reporting import Reporter, human_size
from ..core.retention import Decision, Policy, plan_retention
from ..core.snapshot import decompress
from ..core.sqlite_check import check_database
from ..core.faults import crash_point
from ..core.hashing import Discard, copy_and_hash, file_digest
from ..core import page_store
from ..core.pages import CODEC as PAGES, LIST_SUFFIX, PageList
from ..core.store import Store, commit_snapshot
from ..core.store_plan import plan_gc
from ..core.stored import ReadData
from ..offsite.manifest import (
    BLOBS,
    PACKS,
    PENDING,
    RECORDS,
    SNAPSHOT_SUFFIX,
    SNAPSHOTS,
    Manifest,
    RemoteBackup,
    backup_from_header,
    pack_files,
    record_file,
    snapshot_files,
)
from ..offsite.plan import RemoteBlob, problems as blob_problems, to_send
from ..offsite.remote import TEMP_TAG, RemoteArchive
from .retention import retention_hold

FETCH_BATCH_BYTES = 256 * 1024 * 1024  # verify --read-data downloads at most this much at a time


# --- push ------------------------------------------------------------------------------------


@dataclass
class PushResult:
    pushed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (backup, why it was not pushed)
    already: int = 0  # backups the remote held before
    blobs_sent: int = 0
    bytes_sent: int = 0
    retention: Optional["RemoteRetention"] = None

    def line(self, remote: str) -> str:
        if not self.pushed:
            text = f"{remote} is up to date: it holds {self.already} backup(s)"
        else:
            text = (
                f"Pushed {len(self.pushed)} backup(s) to {remote} ({self.blobs_sent} new blob(s), "
                f"{human_size(self.bytes_sent)} sent); it holds {self.already + len(self.pushed)} backup(s)"
            )
        return text + (f"; {len(self.skipped)} not pushed" if self.skipped else "")


def choose_pushes(entries: list[Entry], manifest: Manifest) -> tuple[list[Entry], list[tuple[str, str]], int]:
    """Which local backups go to the remote: stored ones that verified good and that the
    remote does not list. Pure. Returns (to push, skipped with reasons, already there)."""
    todo, skipped, already = [], [], 0
    for entry in sorted(entries, key=lambda e: e.created):
        there = manifest.find(entry.file)
        if there and there.database_sha256 == entry.sha256:
            already += 1
        elif there:
            skipped.append((entry.file, "the remote holds another backup under this name"))
        elif not entry.is_stored:
            skipped.append((entry.file, "an older per-backup file: run stash-backup migrate --apply first"))
        elif not entry.verified_ok:
            skipped.append((entry.file, f"it failed verification ({entry.verify_error or 'not verified'})"))
        else:
            todo.append(entry)
    return todo, skipped, already


def push(
    archive: Archive,
    remote: RemoteArchive,
    report: Reporter,
    policy: Optional[Policy] = None,
    with_settings: bool = False,
) -> PushResult:
    """Send what the remote lacks of the archive's good backups, then (with `policy`)
    apply retention on the remote. Stash's settings (config.yml's API key, password
    hash and session keys among them) go only to a crypt remote, or when asked."""
    with archive.locked(), scratch_folder(archive.folder, ".offsite") as scratch, remote.session():
        manifest = remote.read_manifest()
        todo, skipped, already = choose_pushes(archive.entries(), manifest)
        result = PushResult(skipped=skipped, already=already)
        for name, why in skipped:
            report.warning(f"not pushed: {name}: {why}")
        # Held even with nothing to send: it clears what an interrupted run of ours left.
        with remote.held("push", scratch, report.info):
            if todo:
                carry = with_settings or remote.encrypts()
                _send_backups(archive, remote, manifest, todo, scratch, result, report.phase(0.0, 0.9), carry)
            report.info(result.line(remote.display))
            if policy and not policy.is_empty():
                result.retention = _retention(archive, remote, policy, False, scratch, report.phase(0.9, 1.0))
        report.progress(1.0)
        return result


def _send_backups(
    archive: Archive,
    remote: RemoteArchive,
    manifest: Manifest,
    todo: list[Entry],
    scratch: Path,
    result: PushResult,
    report: Reporter,
    carry_settings: bool,
) -> None:
    store = archive.store
    headers = [store.header(entry.file) for entry in todo]
    names = [header.name for header in headers]
    records_root = (
        archive.folder if carry_settings else _records_without_settings(store, headers, scratch, remote, report)
    )
    listing = scratch / "send.txt"
    sent_snapshots = []
    with open(listing, "w", encoding="utf-8") as out, contextlib.ExitStack() as stack:
        there = stack.enter_context(remote.listing(scratch, hashes=remote.has_cheap_md5()))
        lists = [stack.enter_context(records.BlobList(records_root / record_file(name))) for name in names]
        for checksum, _size in to_send(heapq.merge(*lists), there.blobs):
            out.write(blob_member_name(checksum) + "\n")
            result.blobs_sent += 1
        for relative in _packs_to_send(store, headers, there.files):
            out.write(relative + "\n")
            sent_snapshots.append(relative)
        for header in headers:
            if there.files.get(header.snapshot.file) != header.snapshot.stored_size:
                out.write(header.snapshot.file + "\n")
                sent_snapshots.append(header.snapshot.file)
    report.info(f"sending {result.blobs_sent} blob(s) and the databases of {len(names)} backup(s) to {remote.display}")
    sent = remote.send(archive.folder, listing, "copy the archive to", _progress(report.phase(0.0, 0.9), "sending"))
    crash_point("offsite-data-sent")
    record_files = [record_file(name) for name in names]
    record_bytes, records_copied = remote.send_small(
        records_root, record_files, listing, "copy the backups' records to"
    )
    result.bytes_sent = sent.bytes + record_bytes
    crash_point("offsite-records-sent")
    _confirm_arrived(remote, sent_snapshots + record_files, set(sent.transferred) | records_copied)
    pushed_at = utc_now()
    sent_records = [records_root / record_file(h.name) for h in headers]
    added = [
        backup_from_header(h, path.stat().st_size, file_digest(path, "md5"), pushed_at)
        for h, path in zip(headers, sent_records)
    ]
    remote.write_manifest(manifest.with_backups(added, pushed_at), scratch)
    crash_point("offsite-manifest-written")
    result.pushed = names
    for header in headers:
        report.info(
            f"pushed {header.name}: {header.blob_count} blob(s), database "
            f"{human_size(header.snapshot.stored_size)} compressed"
        )


def _records_without_settings(
    store: Store, headers: list[records.Header], scratch: Path, remote: RemoteArchive, report: Reporter
) -> Path:
    """The records to send to a plain remote, in a folder laid out as the archive: those
    with settings as copies without them (record.write_without_settings)."""
    root = scratch / "records"
    make_folders(root / RECORDS)
    left_out = 0
    for header in headers:
        target = root / record_file(header.name)
        if header.settings:
            records.write_without_settings(store.record_path(header.name), target)
            left_out += 1
        else:
            shutil.copyfile(store.record_path(header.name), target)
    if left_out:
        report.warning(
            f"Stash's settings (config.yml holds its API key, password hash and session keys) were left out of "
            f"{left_out} backup(s) sent to {remote.display}, which is not an rclone crypt remote: use a crypt "
            "remote, or pass --with-settings to send them anyway"
        )
    return root


def _packs_to_send(store: Store, headers: list[records.Header], there: dict[str, int]) -> list[str]:
    """The packs (and their indexes) the backups' page lists name that the remote lacks
    or holds at another size: a pack is named by its content, as a blob is."""
    wanted: list[str] = []
    for header in headers:
        if header.snapshot.codec != PAGES:
            continue
        for pack in page_store.read_page_list(store.folder / header.snapshot.file).packs:
            for relative in pack_files(pack):
                if relative not in wanted and there.get(relative) != _local_size(store, relative, header.name):
                    wanted.append(relative)
    return wanted


def _local_size(store: Store, relative: str, name: str) -> int:
    try:
        return (store.folder / relative).stat().st_size
    except FileNotFoundError:
        raise VerificationError(
            f"{name}: {relative} is missing from the archive: nothing was pushed; run verify"
        ) from None


def _confirm_arrived(remote: RemoteArchive, expected: list[str], copied: set[str]) -> None:
    """Each snapshot and record sent was reported copied by rclone (which checked its
    size, and MD5 where both sides have one) before the manifest names it."""
    for relative in expected:
        if relative not in copied:
            raise RemoteError(
                f"rclone did not report {remote.display}/{relative} as copied: nothing was counted; push again"
            )


def _progress(report: Reporter, label: str):
    def callback(done: int, total: int) -> None:
        if total:
            report.progress(min(done / total, 1.0), label)

    return callback


# --- retention and garbage collection on the remote -----------------------------------------


@dataclass
class RemoteRetention:
    decisions: list[Decision]
    forgotten: list[str] = field(default_factory=list)
    deleted_files: int = 0
    freed_bytes: int = 0
    held: str = ""  # why nothing was removed (jobs/retention.retention_hold)

    def line(self, policy: Policy, dry_run: bool) -> str:
        if self.held:
            return f"Remote retention ({policy.describe()}): {self.held}"
        kept = sum(1 for d in self.decisions if d.keep)
        verb = "would remove" if dry_run else "removed"
        return (
            f"Remote retention ({policy.describe()}){' [dry run]' if dry_run else ''}: kept {kept}, {verb} "
            f"{len(self.decisions) - kept}; {'would free' if dry_run else 'freed'} {human_size(self.freed_bytes)} "
            f"({self.deleted_files} object(s))"
        )


def prune(archive: Archive, remote: RemoteArchive, policy: Policy, dry_run: bool, report: Reporter) -> RemoteRetention:
    with archive.locked(), scratch_folder(archive.folder, ".offsite") as scratch, remote.session():
        if dry_run:
            return _retention(archive, remote, policy, True, scratch, report)
        with remote.held("prune", scratch, report.info):
            return _retention(archive, remote, policy, False, scratch, report)


def _created(backup: RemoteBackup) -> datetime:
    try:
        return in_order_of_making(datetime.fromisoformat(backup.created), backup.name)
    except ValueError:
        return datetime(1970, 1, 1)


def _retention(
    archive: Archive, remote: RemoteArchive, policy: Policy, dry_run: bool, scratch: Path, report: Reporter
) -> RemoteRetention:
    """Forget by the policy (the manifest rewritten first), then collect what no
    remaining backup refers to."""
    held = retention_hold(archive)
    if held:
        report.warning(f"remote: {held}")
        return RemoteRetention([], held=held)
    manifest = remote.read_manifest()
    decisions = plan_retention([(b, _created(b), True) for b in manifest.backups], policy)
    result = RemoteRetention(decisions)
    verb = "would remove" if dry_run else "removed"
    for decision in decisions:
        backup: RemoteBackup = decision.item
        if decision.keep:
            report.info(f"keep   {backup.name} on the remote ({', '.join(decision.reasons)})")
        else:
            result.forgotten.append(backup.name)
            report.info(f"{verb} {backup.name} from the remote")
    kept = manifest.without(set(result.forgotten), utc_now())
    if result.forgotten and not dry_run:
        remote.write_manifest(kept, scratch)
        crash_point("offsite-forgotten")
    _collect(archive, remote, kept, dry_run, scratch, result, report)
    report.info(result.line(policy, dry_run))
    return result


def _collect(
    archive: Archive,
    remote: RemoteArchive,
    kept: Manifest,
    dry_run: bool,
    scratch: Path,
    result: RemoteRetention,
    report: Reporter,
) -> None:
    lists = _record_files(archive, remote, kept.backups, scratch)
    wanted_snapshots = {b.snapshot.file for b in kept.backups}
    wanted_packs = {relative for pack in _kept_packs(remote, kept.backups, scratch) for relative in pack_files(pack)}
    wanted_records = {b.record.file for b in kept.backups}
    doomed = scratch / "delete.txt"
    with open(doomed, "w", encoding="utf-8") as out, contextlib.ExitStack() as stack:
        there = stack.enter_context(remote.listing(scratch))
        referenced = (
            checksum for checksum, _ in heapq.merge(*[stack.enter_context(records.BlobList(p)) for p in lists])
        )
        plan = plan_gc(there.blobs, referenced)
        for checksum, size in plan.delete_blobs:
            out.write(blob_member_name(checksum) + "\n")
            result.freed_bytes += size
        others = list(there.strays)
        for folder, wanted in (
            (SNAPSHOTS, wanted_snapshots),
            (PACKS, wanted_packs),
            (RECORDS, wanted_records),
            (PENDING, set()),
        ):
            for relative, size in there.under(folder).items():
                if relative not in wanted and (folder != PENDING or TEMP_TAG in relative):
                    others.append(relative)
                    result.freed_bytes += max(size, 0)
        others += [name for name in there.files if "/" not in name and TEMP_TAG in name]
        for relative in others:
            out.write(relative + "\n")
        result.deleted_files = len(plan.delete_blobs) + len(others)
    if result.deleted_files and not dry_run:
        remote.delete(doomed)
        crash_point("offsite-collected")


def _kept_packs(remote: RemoteArchive, backups: list[RemoteBackup], scratch: Path) -> set[str]:
    """The packs the kept backups' page lists name, from the lists on the remote (each
    must describe the database the manifest records): a list that is missing or does
    not match stops the collection, its packs must not be taken for garbage."""
    packs: set[str] = set()
    for backup, found in _remote_page_lists(remote, backups, scratch):
        if isinstance(found, str):
            raise VerificationError(f"{remote.display}: {backup.name}: {found}: nothing was collected")
        packs.update(found.packs)
    return packs


def _remote_page_lists(
    remote: RemoteArchive, backups: list[RemoteBackup], scratch: Path
) -> Iterator[tuple[RemoteBackup, "PageList | str"]]:
    """Each page-snapshot backup's page list fetched from the remote and checked against
    the manifest (database size and SHA-256), or what is wrong with it."""
    paged = [b for b in backups if b.snapshot.file.endswith(LIST_SUFFIX)]
    if not paged:
        return
    listing, folder = scratch / "lists.txt", scratch / "lists"
    listing.write_text("".join(b.snapshot.file + "\n" for b in paged))
    with contextlib.suppress(RemoteError):  # a missing list is reported below
        remote.fetch(listing, folder, "fetch the page lists from")
    for backup in paged:
        try:
            pages = page_store.read_page_list(_inside(folder, backup.snapshot.file))
        except VerificationError as error:
            yield backup, f"its page list {backup.snapshot.file}: {error}"
            continue
        if (pages.size, pages.sha256) != (backup.database_size, backup.database_sha256):
            yield backup, f"its page list {backup.snapshot.file} describes another database than the manifest's"
        else:
            yield backup, pages


def _record_files(archive: Archive, remote: RemoteArchive, backups: list[RemoteBackup], scratch: Path) -> list[Path]:
    """A checked copy of each backup's record: the local archive's when it is the same
    file (size and MD5), else fetched. A record that does not match the manifest stops
    the collection: its blobs must not be taken for garbage."""
    store, paths, fetch = archive.store, {}, []
    for backup in backups:
        _check_entry(backup, remote.display, "nothing was collected")
        local = store.record_path(backup.name)
        if (
            local.is_file()
            and local.stat().st_size == backup.record.size
            and file_digest(local, "md5") == backup.record.md5
        ):
            paths[backup.name] = local
        else:
            fetch.append(backup)
    if fetch:
        listing = scratch / "records.txt"
        listing.write_text("".join(b.record.file + "\n" for b in fetch))
        remote.fetch(listing, scratch / "fetched", "fetch the records from")
        for backup in fetch:
            path = scratch / "fetched" / backup.record.file
            if (
                not path.is_file()
                or path.stat().st_size != backup.record.size
                or file_digest(path, "md5") != backup.record.md5
            ):
                raise VerificationError(
                    f"the record of {backup.name} on {remote.display} does not match the manifest: "
                    "nothing was collected; run offsite verify"
                )
            paths[backup.name] = path
    return [paths[b.name] for b in backups]


# --- verify --------------------------------------------------------------------------------------


@dataclass
class RemoteVerifySummary:
    checked: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    read_data: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self, remote: str) -> str:
        text = (
            f"Verified {self.checked} backup(s) on {remote}: {self.checked - len(self.failed)} good, "
            f"{len(self.failed)} bad"
        )
        return text + (f"; contents read: {self.read_data}" if self.read_data else "")


def verify(
    archive_folder: Path, remote: RemoteArchive, read_data: Optional[ReadData], report: Reporter
) -> RemoteVerifySummary:
    """Every backup the remote's manifest lists: its record matches the manifest, its
    snapshot and every blob it lists are there with their sizes (and the backend's MD5,
    where it has one, equals the blob's name). With `read_data`, part of the blobs and
    snapshots are downloaded and hashed. Changes nothing."""
    make_folders(archive_folder)
    with scratch_folder(archive_folder, ".offsite-verify") as scratch, remote.session():
        _note_authentication(remote, report)
        manifest = remote.read_manifest()
        summary = RemoteVerifySummary(checked=len(manifest.backups), read_data=str(read_data) if read_data else "")
        found: dict[str, list[str]] = {b.name: [] for b in manifest.backups}
        with contextlib.ExitStack() as stack:
            there = stack.enter_context(remote.listing(scratch, hashes=remote.has_cheap_md5()))
            for backup in manifest.backups:
                if there.files.get(backup.snapshot.file) != backup.snapshot.size:
                    found[backup.name].append(
                        f"its database {backup.snapshot.file} is missing or not "
                        f"{backup.snapshot.size} bytes on the remote"
                    )
            _check_packs_listed(remote, manifest.backups, there.files, scratch, found)
            lists = _fetched_records(remote, manifest.backups, there.under(RECORDS), scratch, found)
            report.progress(0.2, "checking blobs")
            streams = [_tagged(stack.enter_context(records.BlobList(path)), name, found) for name, path in lists]
            for _, problem, names in blob_problems(heapq.merge(*streams), there.blobs):
                for name in names:
                    found[name].append(problem)
        if read_data:
            _read_data(remote, manifest.backups, lists, read_data, scratch, found, report.phase(0.4, 1.0))
        for backup in manifest.backups:
            problems = found[backup.name]
            if problems:
                summary.failed.append((backup.name, "; ".join(problems[:3])))
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                report.error(f"BAD {backup.name}: {'; '.join(problems[:3])}{more}")
            else:
                report.info(f"ok  {backup.name}")
        report.progress(1.0)
        return summary


def _check_packs_listed(
    remote: RemoteArchive, backups: list[RemoteBackup], there: dict[str, int], scratch: Path, found: dict
) -> None:
    """Each page list on the remote is sound and matches the manifest, and every pack
    it names is there with its index."""
    sound = [b for b in backups if not _entry_problem(b)]
    for backup, pages in _remote_page_lists(remote, sound, scratch):
        if isinstance(pages, str):
            found[backup.name].append(pages)
            continue
        missing = [r for pack in pages.packs for r in pack_files(pack) if there.get(r, 0) <= 0]
        if missing:
            found[backup.name].append(f"{len(missing)} pack file(s) of its database are missing, e.g. {missing[0]}")


def _note_authentication(remote: RemoteArchive, report: Reporter) -> None:
    note = remote.unauthenticated_note()
    if note:
        report.warning(note)


def _tagged(blobs, name: str, found: dict) -> Iterator[tuple[str, int, str]]:
    try:
        for checksum, size in blobs:
            yield checksum, size, name
    except VerificationError as error:
        found[name].append(str(error))


def _fetched_records(
    remote: RemoteArchive, backups: list[RemoteBackup], there: dict[str, int], scratch: Path, found: dict
) -> list[tuple[str, Path]]:
    listing = scratch / "records.txt"
    for backup in backups:
        if _entry_problem(backup):
            found[backup.name].append(_entry_problem(backup))
    fetchable = [b for b in backups if not _entry_problem(b) and there.get(b.record.file) is not None]
    listing.write_text("".join(b.record.file + "\n" for b in fetchable))
    if fetchable:
        remote.fetch(listing, scratch / "fetched", "fetch the records from")
    lists = []
    for backup in backups:
        if _entry_problem(backup):
            continue
        path = scratch / "fetched" / backup.record.file
        if backup not in fetchable or not path.is_file():
            found[backup.name].append(f"its record {backup.record.file} is missing on the remote")
        elif path.stat().st_size != backup.record.size or file_digest(path, "md5") != backup.record.md5:
            found[backup.name].append(f"its record {backup.record.file} does not match the manifest (size or MD5)")
        else:
            lists.append((backup.name, path))
    return lists


def _read_data(
    remote: RemoteArchive,
    backups: list[RemoteBackup],
    lists: list[tuple[str, Path]],
    read_data: ReadData,
    scratch: Path,
    found: dict,
    report: Reporter,
) -> None:
    """Download part N/M of the blobs (by checksum) and of the databases (by SHA-256),
    in batches, and hash them."""
    batch, batch_bytes, owners = [], 0, {}
    with contextlib.ExitStack() as stack:
        streams = [_tagged(stack.enter_context(records.BlobList(path)), name, {name: []}) for name, path in lists]
        for checksum, size, name in heapq.merge(*streams):
            if not read_data.includes(checksum):
                continue
            if checksum not in owners:
                if batch_bytes >= FETCH_BATCH_BYTES:  # a new checksum: the batch's owners are all known
                    _check_blob_batch(remote, batch, owners, scratch, found)
                    batch, batch_bytes, owners = [], 0, {}
                batch.append((checksum, size))
                batch_bytes += size
            owners.setdefault(checksum, []).append(name)
        if batch:
            _check_blob_batch(remote, batch, owners, scratch, found)
    for backup in backups:
        if read_data.includes(backup.database_sha256[:32]):
            problem = _check_snapshot(remote, backup, scratch)
            if problem:
                found[backup.name].append(problem)
    report.progress(1.0, "reading data")


def _check_blob_batch(
    remote: RemoteArchive, batch: list[tuple[str, int]], owners: dict, scratch: Path, found: dict
) -> None:
    folder = scratch / "read"
    listing = scratch / "read.txt"
    listing.write_text("".join(blob_member_name(c) + "\n" for c, _ in batch))
    with contextlib.suppress(RemoteError):  # a missing blob was already reported by the listing
        remote.fetch(listing, folder, "download blobs from")
    for checksum, _ in batch:
        path = folder / blob_member_name(checksum)
        if path.is_file() and file_digest(path, "md5") != checksum:
            for name in owners.get(checksum, []):
                found[name].append(
                    f"blob {blob_member_name(checksum)} does not match its name (MD5) on the remote: it is damaged"
                )
        discard(path)


def _check_snapshot(remote: RemoteArchive, backup: RemoteBackup, scratch: Path) -> str:
    if backup.snapshot.file.endswith(LIST_SUFFIX):
        return _check_page_snapshot(remote, backup, scratch)
    target = scratch / "snapshot.gz"
    try:
        remote.fetch_file(backup.snapshot.file, target)
        with open(target, "rb") as packed:
            digest = decompress(packed, Discard())
    except (RemoteError, VerificationError) as error:
        return f"its database {backup.snapshot.file}: {error}"
    finally:
        discard(target)
    if (digest.size, digest.sha256) != (backup.database_size, backup.database_sha256):
        return (
            f"its database {backup.snapshot.file} does not decompress to the recorded size and SHA-256: it is damaged"
        )
    return ""


def _check_page_snapshot(remote: RemoteArchive, backup: RemoteBackup, scratch: Path) -> str:
    """Download the page list and every pack it names (packs already read for another
    backup are kept for the run), read each pack whole, and reassemble the database."""
    folder = scratch / "read-pages"
    try:
        list_path = _inside(folder, backup.snapshot.file)
        make_folders(list_path.parent)
        remote.fetch_file(backup.snapshot.file, list_path)
        pages = page_store.read_page_list(list_path)
        wanted = [r for pack in pages.packs for r in pack_files(pack) if not (folder / r).is_file()]
        if wanted:
            listing = scratch / "read-packs.txt"
            listing.write_text("".join(r + "\n" for r in wanted))
            remote.fetch(listing, folder, "download the database's packs from")
        for pack in pages.packs:
            page_store.check_pack(folder, pack)
        # into a file, not a stream: pages spread over many packs are then written at their
        # offsets, each frame decompressed once (page_store._in_pack_order)
        with open(scratch / "reassembled.sqlite", "w+b") as out:
            digest = page_store.read_pages(folder, list_path, out)
        discard(scratch / "reassembled.sqlite")
    except (RemoteError, VerificationError) as error:
        return f"its database {backup.snapshot.file}: {error}"
    if (digest.size, digest.sha256) != (backup.database_size, backup.database_sha256):
        return f"its database {backup.snapshot.file} does not reassemble to the recorded size and SHA-256"
    return ""


# --- pull ----------------------------------------------------------------------------------------


def pull(archive: Archive, remote: RemoteArchive, name: str, level: str, report: Reporter) -> Entry:
    """One backup from the remote into a local archive: its record, its database and
    the blobs the archive lacks, each checked (record against the manifest, blobs
    against their MD5 names, the database against its SHA-256 and SQLite's check),
    the record written last. Then stash-restore takes it from there."""
    with archive.locked(), scratch_folder(archive.folder, ".offsite-pull") as scratch, remote.session():
        _note_authentication(remote, report)
        manifest = remote.read_manifest()
        backup = manifest.find(name)
        if backup is None:
            shown = ", ".join(manifest.names()[-5:]) or "none"
            raise UsageError(
                f"{remote.display} holds no backup named {name!r} (newest: {shown}): see stash-backup offsite list"
            )
        _check_entry(backup, remote.display, "nothing was pulled")
        store = archive.store
        if store.record_path(backup.name).exists():
            return _already_here(archive, backup, report)
        if archive.find(backup.name) or archive.find(backup.name + ".zip"):
            raise UsageError(
                f"{archive.folder} already has a backup named {backup.name}: pull into another --to folder"
            )
        fetched = scratch / "fetched"
        record_path = _inside(fetched, record_file(backup.name))
        make_folders(record_path.parent)
        remote.fetch_file(backup.record.file, record_path)
        if record_path.stat().st_size != backup.record.size or file_digest(record_path, "md5") != backup.record.md5:
            raise VerificationError(
                f"the record of {backup.name} on {remote.display} does not match the manifest: "
                "nothing was pulled; run offsite verify"
            )
        header = records.read_header(record_path)
        _check_header(header, backup, remote.display)
        listing, count, size = _missing_locally(store, record_path, scratch)
        packs = _pull_page_list(remote, store, header, fetched, listing)
        with open(listing, "a", encoding="utf-8") as out:
            out.write(backup.snapshot.file + "\n")
        report.info(
            f"pulling {backup.name}: {count} blob(s) the archive lacks ({human_size(size)}) and its "
            f"database ({human_size(backup.snapshot.size)})"
        )
        remote.fetch(
            listing, scratch / "fetched", "download the backup from", _progress(report.phase(0.0, 0.7), "downloading")
        )
        with store.pending(backup.name):
            _adopt_packs(store, fetched, packs)  # checked whole first; unreferenced until the record
            _check_pulled_database(scratch, store, header, record_path, level, report.phase(0.7, 0.85))
            _adopt_blobs(store, scratch / "fetched", listing)
            packed = _inside(fetched, header.snapshot.file)
            if header.snapshot.codec == PAGES:
                page_store.commit_page_list(store.page_list_path(header.name), packed.read_bytes())
            else:
                commit_snapshot(store, header.name, packed)
                own_like_folder(store.snapshot_path(header.name))
            crash_point("pull-data-stored")
            _install_record(store, header.name, record_path)
        entry = archive.find(header.name)
        report.progress(1.0)
        report.info(
            f"Pulled {header.name} into {archive.folder}: {header.blob_count} blob(s), {count} of them "
            f"downloaded, database checked ({level}); restore it with: stash-restore {header.name} "
            f"--archive {archive.folder}"
        )
        return entry


def _plain_name(name: object) -> bool:
    """One file name: no folder, no parent, nothing hidden, nothing absolute."""
    return (
        isinstance(name, str)
        and name.strip() == name
        and name not in ("", ".", "..")
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0:")
    )


def _entry_problem(backup: RemoteBackup) -> str:
    """What is wrong with a manifest entry's names, or "". Its name must be a Stash
    backup name and one plain file name, its files where that name puts them: the
    bucket is not ours, its names must not pick our paths."""
    name = backup.name
    if not (_plain_name(name) and parse_backup_name(name) and not name.endswith(".zip")):
        return f"the manifest lists a backup whose name is not a backup name ({name!r})"
    if backup.record.file != record_file(name) or backup.snapshot.file not in snapshot_files(name):
        return f"the manifest places the files of {name} outside their folders"
    return ""


def _check_entry(backup: RemoteBackup, where: str, outcome: str) -> None:
    problem = _entry_problem(backup)
    if problem:
        raise VerificationError(f"{where}: {problem}: {outcome}; run offsite verify")


def _check_header(header: records.Header, backup: RemoteBackup, where: str) -> None:
    """The pulled record says what the manifest said, and names its database plainly."""
    suffix = LIST_SUFFIX if header.snapshot.codec == PAGES else SNAPSHOT_SUFFIX  # the codec its file name says
    if (
        header.name != backup.name
        or header.snapshot.file != backup.snapshot.file
        or not header.snapshot.file.endswith(suffix)
    ):
        raise VerificationError(
            f"the record of {backup.name} on {where} is another backup's (its name or database "
            "file differs from the manifest's): nothing was pulled"
        )
    if not _plain_name(header.database_member):
        raise VerificationError(
            f"the record of {backup.name} on {where} names its database "
            f"{header.database_member!r}, not a plain file name: nothing was pulled"
        )


def _inside(folder: Path, relative: str) -> Path:
    """`relative` under `folder`, refused if it would lead anywhere else."""
    target = folder / relative
    if not os.path.realpath(target).startswith(os.path.realpath(folder) + os.sep):
        raise VerificationError(f"{relative!r} leads outside {folder}: nothing was pulled")
    return target


def _already_here(archive: Archive, backup: RemoteBackup, report: Reporter) -> Entry:
    header = archive.store.header(backup.name)
    if header.snapshot.sha256 != backup.database_sha256:
        raise UsageError(
            f"{archive.folder} already has another backup named {backup.name}: pull into another --to folder"
        )
    report.info(f"{backup.name} is already in {archive.folder}: nothing to pull (stash-backup verify checks it)")
    return archive.find(backup.name)


def _missing_locally(store: Store, record_path: Path, scratch: Path) -> tuple[Path, int, int]:
    """The remote paths of the record's blobs that the local store lacks (or holds with
    another size), one a line; their count and bytes."""
    listing = scratch / "pull.txt"
    count = size = 0
    present = (RemoteBlob(b.checksum, b.size) for b in store.stored_blobs())
    with open(listing, "w", encoding="utf-8") as out, records.BlobList(record_path) as wanted:
        for checksum, blob_size in to_send(wanted, present):
            out.write(blob_member_name(checksum) + "\n")
            count += 1
            size += blob_size
    return listing, count, size


def _pull_page_list(
    remote: RemoteArchive, store: Store, header: records.Header, fetched: Path, listing: Path
) -> list[str]:
    """For a page snapshot: its page list fetched first, and the packs it names that the
    local store lacks added to `listing`. Returns those packs."""
    if header.snapshot.codec != PAGES:
        return []
    list_path = _inside(fetched, header.snapshot.file)
    make_folders(list_path.parent)
    remote.fetch_file(header.snapshot.file, list_path)
    missing = [
        pack
        for pack in page_store.read_page_list(list_path).packs
        if not all((store.folder / relative).is_file() for relative in pack_files(pack))
    ]
    with open(listing, "a", encoding="utf-8") as out:
        for pack in missing:
            out.write("".join(relative + "\n" for relative in pack_files(pack)))
    return missing


def _adopt_packs(store: Store, fetched: Path, packs: list[str]) -> None:
    """Move the downloaded packs into the store, each read whole first (its SHA-256
    against its name, every page against its index: later backups take pages from
    it), synced before their names count; a pack before its index."""
    for pack in packs:
        try:
            page_store.check_pack(fetched, pack)
        except VerificationError as error:
            raise VerificationError(
                f"a pack arrived damaged from the remote ({error}): nothing was pulled; run offsite verify --read-data"
            ) from None
    for pack in packs:
        for relative in pack_files(pack):
            final = store.folder / relative
            make_folders(final.parent)
            with open(fetched / relative, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(fetched / relative, final)
            own_like_folder(final)
            fsync_dir(final.parent)


def _check_pulled_database(
    scratch: Path, store: Store, header: records.Header, record_path: Path, level: str, report: Reporter
) -> None:
    packed = _inside(scratch / "fetched", header.snapshot.file)
    database = _inside(scratch, "pulled-database")  # a fixed name: the record's is the remote's choice
    try:
        with open(database, "w+b") as out:
            if header.snapshot.codec == PAGES:  # its packs are in the store now
                digest = page_store.read_pages(store.folder, packed, out)
            else:
                with open(packed, "rb") as source:
                    digest = decompress(source, out)
    except FileNotFoundError:
        raise RemoteError(f"the database of {header.name} did not arrive from the remote: pull again") from None
    if (digest.size, digest.sha256) != (header.snapshot.size, header.snapshot.sha256):
        raise VerificationError(
            f"the database of {header.name} from the remote does not match its record "
            "(size or SHA-256): nothing was pulled; run offsite verify --read-data"
        )
    report.progress(0.5, "checking the database")
    checked = check_database(database, level)
    if checked.schema_version != header.schema_version:
        raise VerificationError(
            f"the database of {header.name} has schema {checked.schema_version}, its record says "
            f"{header.schema_version}: nothing was pulled"
        )
    if header.includes_blobs:
        remaining = set(checked.blobs_on_filesystem)
        with records.BlobList(record_path, images_only=True) as blobs:
            for checksum, _ in blobs:
                remaining.discard(checksum)
        if len(remaining) > header.missing_blobs:
            raise VerificationError(
                f"the database of {header.name} refers to {len(remaining)} blob(s) its record does "
                "not list: nothing was pulled"
            )
    discard(database)


def _adopt_blobs(store: Store, fetched: Path, listing: Path) -> None:
    """Move the downloaded blobs into the store, each only after its MD5 equals its
    name; synced before their names count, their folders after."""
    lines = [line.strip() for line in listing.read_text().splitlines() if line.startswith(BLOBS + "/")]
    for relative in lines:
        path = fetched / relative
        checksum = relative.rsplit("/", 1)[-1]
        if not path.is_file():
            raise RemoteError(f"{relative} did not arrive from the remote: nothing was pulled; pull again")
        if file_digest(path, "md5") != checksum:
            raise VerificationError(
                f"{relative} arrived damaged from the remote (MD5): nothing was pulled; run offsite verify --read-data"
            )
    if lines and hasattr(os, "sync"):
        os.sync()
    folders = set()
    for relative in lines:
        final = store.blob_path(relative.rsplit("/", 1)[-1])
        if not final.parent.is_dir():
            make_folders(final.parent)
            folders.update((final.parent.parent, final.parent.parent.parent))
        os.replace(fetched / relative, final)
        own_like_folder(final)
        folders.add(final.parent)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)


def _install_record(store: Store, name: str, source: Path) -> None:
    make_folders(store.records_folder)
    with atomic_output(store.record_path(name)) as (handle, temp), open(source, "rb") as original:
        copy_and_hash(original, handle)
        os.chmod(temp, private_mode(store.records_folder))


# --- list -------------------------------------------------------------------------------------------


def remote_backups(remote: RemoteArchive) -> list[RemoteBackup]:
    with remote.session():
        return sorted(remote.read_manifest().backups, key=lambda b: b.created, reverse=True)
