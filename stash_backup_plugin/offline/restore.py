"""The offline restore: put a backup back in place while Stash is stopped, safely and
reversibly. Verify first, refuse what would lose data, show the plan, then swap with
a journal (swap.py). Standard library and PyYAML only: nothing here may import gql
or requests (a test proves it).

    python -m stash_backup_plugin.offline BACKUP [--dry-run] [--yes]
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

from ..core import backup_zip as fullbackup
from . import swap
from ..core.archive import MANIFEST_NAME, Archive, Entry
from ..core.atomic import (
    discard,
    existing_parent,
    free_space,
    fsync_file,
    give_owner,
    make_folders,
    private_mode,
    remove_stale_temps,
    scratch_folder,
    staged_file,
    storage_error,
    temp_path_in,
)
from ..core.hashing import copy_and_hash
from ..core.errors import RestoreRefused, UsageError, VerificationError
from ..core.naming import TEMP_MARKER, blob_relative_path, is_anonymised_name
from ..core.reporting import Reporter
from .plan import Plan, RestoreFacts, build_plan, space_refusal
from ..core.sqlite_check import QUICK, check_database, has_sqlite_header, read_schema_version
from .stash_config import Target
from .liveness import ensure_stopped
from ..core.verify import file_digest, is_zip, verify_backup
from ..core.store import Store, sync_folders
from ..core.record import Header

ASIDE_PREFIX = "stash-restore-"
BLOB_BATCH = 2000  # blobs written between two syncs


@dataclass
class RestoreOptions:
    dry_run: bool = False
    assume_yes: bool = False
    allow_newer_schema: bool = False
    stash_stopped: bool = False  # the user vouches that Stash is stopped (probes inconclusive)
    check_level: str = QUICK
    confirm: Optional[Callable[[str], bool]] = None
    allow_anonymised: bool = False  # restore Stash's anonymised database in place of the real one
    archive_held: bool = False  # the caller holds the archive's lock already (the restore drill)
    path_mappings: list = field(default_factory=list)  # --map-path, parsed (pathmap.PathMapping), longest first
    allow_salvaged: bool = False  # restore a backup marked salvaged (recovered from a damaged database)
    with_settings: bool = False  # restore Stash's settings files too (settings_restore.py)


@dataclass
class RestoreResult:
    plan: Plan
    restored: bool = False
    aside: Optional[Path] = None
    blobs_written: int = 0
    blobs_kept: int = 0


# --- guards ---------------------------------------------------------------------------


def ensure_stash_stopped(target: Target, options: RestoreOptions) -> None:
    ensure_stopped(
        target.database, target.config.path if target.config else None, target.host, target.port, options.stash_stopped
    )


def _guard_salvaged(inspection: "_Inspection", options: RestoreOptions) -> None:
    """A salvaged backup holds what SQLite recovered from a damaged database: rows may be
    missing. It replaces the live database only when the user says so."""
    if inspection.header and inspection.header.salvaged and not options.allow_salvaged:
        raise RestoreRefused(
            f"{inspection.header.name} is a salvaged backup (recovered from a damaged database; "
            "rows may be missing): pass --allow-salvaged to restore it. Nothing was changed"
        )


def _guard_anonymised(backup: Path, options: RestoreOptions, report: Reporter) -> None:
    if not is_anonymised_name(backup.name):
        return
    if not options.allow_anonymised:
        raise RestoreRefused(
            f"{backup.name} is Stash's anonymised copy of a database, not a backup: restoring it "
            "would replace your library's names, paths and details with scrambled ones. If that is "
            "what you want, give its path with --allow-anonymised. Nothing was changed"
        )
    report.warning(
        f"{backup.name} is an anonymised database: your real data will be replaced by anonymised data "
        "(stash-restore --undo puts the current database back)"
    )


class Recovered(NamedTuple):
    journal: swap.Journal
    finished: bool  # False: rolled back


def recover_interrupted(database: Path, report: Reporter) -> Optional[Recovered]:
    """A journal means an earlier run was killed: finish or roll it back first, and say
    what the database is now."""
    journal = swap.Journal.load(database)
    if journal is None:
        return None
    finished, state = swap.finish_or_roll_back(journal)
    report.info(state)
    return Recovered(journal, finished)


def warn_pending(database: Path, report: Reporter) -> None:
    """A dry run changes nothing, not even a pending journal: it only says so."""
    journal = swap.Journal.load(database)
    if journal:
        report.warning(f"an interrupted {journal.kind} is pending: the real run finishes or rolls it back first")


@contextlib.contextmanager
def one_run_at_a_time(database: Path, dry_run: bool) -> Iterator[None]:
    """Every stash-restore on a database holds a lock on its folder while it runs: real
    runs alone, dry runs side by side. So a temp file of ours found there by a real run
    is provably a killed run's. Where the file system cannot lock a folder (some
    network shares, Windows), runs go ahead unguarded, as they always did."""
    if os.name == "nt":
        yield
        return
    import fcntl

    fd = os.open(existing_parent(database.parent), os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if dry_run else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RestoreRefused(
                f"another stash-restore is running on {database}: let it finish, then run this "
                "again. Nothing was changed"
            ) from None
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def remove_abandoned_temps(target: Target) -> None:
    """Temp files a killed run left: beside the database (the staged copy, the
    journal's temp, a read copy: all named after the database) and anywhere in the
    blobs tree (blobs/aa/bb/). Only our own temp names, only under the run lock."""
    remove_stale_temps(target.database.parent, prefix=f".{target.database.name}", lock_excludes_makers=True)
    if target.blobs_path and target.blobs_path.is_dir():
        for folder in _blob_folders(target.blobs_path):
            remove_stale_temps(folder, lock_excludes_makers=True)


def _blob_folders(blobs_path: Path) -> Iterator[Path]:
    """The blobs folder and its two levels of two-character folders, as Stash lays them out."""
    yield blobs_path
    for first in _subfolders(blobs_path):
        yield first
        yield from _subfolders(first)


def _subfolders(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return [Path(e.path) for e in entries if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]


# --- facts ------------------------------------------------------------------------------


@dataclass
class _Inspection:
    kind: str  # "sqlite", "zip" or "stored" (a backup in the archive's store)
    database_bytes: int
    database_member: Optional[str] = None
    blob_members: dict = field(default_factory=dict)  # zip: checksum -> ZipInfo
    schema_version: Optional[int] = None
    blobs_not_included: set = field(default_factory=set)
    store: Optional[Store] = None  # stored: the archive, and the backup's record
    header: Optional[Header] = None
    recorded: Optional[Entry] = None  # the archive's manifest entry of this file, when it is in one

    def blobs(self) -> Iterator[tuple[str, int]]:
        """(checksum, size) of every image the backup holds, sorted; a stored backup's
        are streamed from its record (no object per blob is kept). Settings files are
        not among them (settings_restore.py)."""
        if self.kind == "stored":
            with self.store.blob_list(self.header.name, images_only=True) as listed:
                yield from listed
            return
        for checksum in sorted(self.blob_members):
            yield checksum, self.blob_members[checksum].file_size

    @property
    def expected_sha256(self) -> Optional[str]:
        """The SHA-256 to check while staging: a plain database's. A zip's entries
        carry their own CRC-32 (and blobs their MD5), all checked on the staged copy;
        its whole-file hash would cost a second read of every byte. (A stored backup's
        snapshot is checked against its record as it is decompressed.)"""
        return self.recorded.sha256 if self.recorded and self.kind == "sqlite" and self.recorded.sha256 else None


@dataclass
class _Selection:
    """Which of the backup's blobs (by position in `_Inspection.blobs()`) to write: one
    bit each, so an empty blobs folder and 100k blobs cost 12.5 KiB, not 100k objects."""

    bits: bytearray = field(default_factory=bytearray)
    count: int = 0
    bytes: int = 0

    def add(self, index: int, size: int) -> None:
        while len(self.bits) <= index // 8:
            self.bits.append(0)
        self.bits[index // 8] |= 1 << (index % 8)
        self.count += 1
        self.bytes += size

    def __contains__(self, index: int) -> bool:
        return index // 8 < len(self.bits) and bool(self.bits[index // 8] & (1 << (index % 8)))

    @property
    def expected_sha256(self) -> Optional[str]:
        """The SHA-256 to check while staging: a plain database's. A zip's entries
        carry their own CRC-32 (and blobs their MD5), all checked on the staged copy;
        its whole-file hash would cost a second read of every byte."""
        return self.recorded.sha256 if self.recorded and self.kind == "sqlite" and self.recorded.sha256 else None


def is_stored_backup(path: Path) -> bool:
    """A stored backup is named by its record: <archive>/backups/<name>.record."""
    from ..core.record import SUFFIX
    from ..core.store import RECORDS

    return path.name.endswith(SUFFIX) and path.parent.name == RECORDS


def read_backup(backup: Path) -> _Inspection:
    """What the backup holds, from its headers alone (cheap): enough to check space.
    A backup file in an archive must still have the size its manifest recorded (a
    stored backup's record lists its own sizes)."""
    if is_stored_backup(backup):
        store = Store(backup.parent.parent)
        header = store.header(backup.name[: -len(".record")])
        return _Inspection("stored", header.snapshot.size, header.database_member, store=store, header=header)
    recorded = recorded_entry(backup)
    if recorded and backup.stat().st_size != recorded.size:
        raise VerificationError(
            f"{backup} is {backup.stat().st_size} bytes but the archive's manifest says "
            f"{recorded.size}: the file changed or is truncated"
        )
    if is_zip(backup):
        try:
            with zipfile.ZipFile(backup) as archive:
                layout = fullbackup.read_layout(archive, backup)
                size = archive.getinfo(layout.database_member).file_size
        except zipfile.BadZipFile as error:
            raise VerificationError(f"{backup} is not a readable zip ({error}): the file is damaged") from error
        return _Inspection("zip", size, layout.database_member, layout.blob_members, recorded=recorded)
    if not has_sqlite_header(backup):
        raise VerificationError(f"{backup} is not an SQLite database (bad header): it is not a Stash backup")
    return _Inspection("sqlite", backup.stat().st_size, recorded=recorded)


def recorded_entry(backup: Path) -> Optional[Entry]:
    """The manifest entry of a backup that lies in an archive folder, else None.
    A damaged manifest refuses (StorageError): its record cannot be checked."""
    if not (backup.parent / MANIFEST_NAME).is_file():
        return None
    return Archive(backup.parent).find(backup.name)


def verify_without_staging(backup: Path, inspection: _Inspection, level: str, report: Reporter) -> None:
    """The dry run's check: everything, in a scratch folder, nothing beside the database."""
    if inspection.kind == "stored":
        _check_stored_blobs(inspection, report.phase(0.0, 0.2))
        with scratch_folder(inspection.store.folder) as work:
            database = work / inspection.database_member
            with open(database, "w+b") as out:
                inspection.store.read_snapshot(inspection.header, out)
            _note_database(inspection, database, level)
        return
    verified = verify_backup(
        backup,
        level,
        want_sha256=False,
        expected_sha256=inspection.expected_sha256,
        progress=report.bytes_progress("verifying backup"),
    )
    inspection.schema_version, inspection.blobs_not_included = verified.schema_version, verified.blobs_not_included


def _note_database(inspection: _Inspection, database: Path, level: str) -> None:
    """Check the database; note its schema and the blobs it refers to but the backup
    lacks (a stored backup's found in one merged pass over two sorted streams)."""
    if inspection.kind != "stored":
        checked = check_database(database, level)
        inspection.schema_version = checked.schema_version
        inspection.blobs_not_included = checked.blobs_on_filesystem - set(inspection.blob_members)
        return
    from ..core.sqlite_check import filesystem_blob_references
    from ..core.stored import unlisted_references

    inspection.schema_version = check_database(database, level, blob_references=False).schema_version
    with inspection.store.blob_list(inspection.header.name, images_only=True) as listed:
        inspection.blobs_not_included = set(unlisted_references(filesystem_blob_references(database), listed))


def _check_stored_blobs(inspection: _Inspection, report: Reporter) -> None:
    """Every blob the stored backup lists is in the archive with its size (their
    contents are checked, MD5 = name, as they are copied)."""
    from ..core.stored import check_blobs

    problems = check_blobs(inspection.store, [inspection.header.name], None, report)[inspection.header.name]
    if problems:
        raise VerificationError(
            f"{inspection.header.name}: {len(problems)} blob problem(s) in the archive, e.g. "
            f"{problems[0]} (stash-backup verify says more)"
        )


def stage_and_verify(backup: Path, inspection: _Inspection, target: Target, level: str, report: Reporter) -> Path:
    """The real run's check, done once, on the very copy that will be put in place:
    blob CRCs and MD5s first (zip; a stored backup's blobs are checked as they are
    copied), then the staged database."""
    if inspection.kind == "stored":
        _check_stored_blobs(inspection, report.phase(0.0, 0.5))
    if inspection.blob_members:
        with zipfile.ZipFile(backup) as archive:
            layout = fullbackup.ZipLayout(inspection.database_member, inspection.blob_members)
            total, done = sum(i.file_size for i in inspection.blob_members.values()), [0]

            def advance(count: int) -> None:
                done[0] += count
                report.progress(0.5 * done[0] / total if total else 0.5, "verifying blobs")

            fullbackup.check_blob_members(archive, layout, advance)
    staged = _stage_database(backup, inspection, target, report.phase(0.5, 0.8))
    try:
        _note_database(inspection, staged, level)
    except BaseException:
        discard(staged)
        raise
    report.progress(1.0)
    return staged


def gather_facts(
    backup: Path, inspection: _Inspection, target: Target, options: RestoreOptions, aside: Path, read_blobs: bool = True
) -> tuple[RestoreFacts, _Selection]:
    """Facts for the plan, and which blobs to write. Without `read_blobs` an existing
    blob of the right size counts as present (cheap, for the early space check); with
    it, its MD5 decides."""
    to_write, present, in_backup, also_on_disk = _Selection(), 0, 0, 0
    on_disk = _blobs_on_disk(target.blobs_path)
    for index, (checksum, size) in enumerate(inspection.blobs()):
        in_backup += 1
        also_on_disk += checksum in on_disk
        existing = target.blobs_path / blob_relative_path(checksum) if target.blobs_path else None
        if existing and _blob_present(existing, checksum, size, read_blobs):
            present += 1
        else:
            to_write.add(index, size)
    current = swap.current_inodes(target.database)
    facts = RestoreFacts(
        backup=backup,
        backup_kind=inspection.kind,
        backup_schema=inspection.schema_version,
        database_bytes=inspection.database_bytes,
        database=target.database,
        current_files=[s for s in swap.ALL_SUFFIXES if s in current],
        current_schema=read_schema_version(target.database) if "" in current else None,
        aside_folder=aside,
        blobs_path=target.blobs_path,
        blobs_storage=target.blobs_storage,
        blobs_in_backup=in_backup,
        blobs_to_write=to_write.count,
        blob_bytes_to_write=to_write.bytes,
        blobs_already_present=present,
        blobs_only_on_disk=len(on_disk) - also_on_disk if in_backup else 0,
        blobs_referenced_missing=len(inspection.blobs_not_included - on_disk),
        free_database_disk=free_space(target.database.parent),
        free_blobs_disk=free_space(target.blobs_path) if target.blobs_path else None,
        same_disk=_same_disk(target.database.parent, target.blobs_path),
        allow_newer_schema=options.allow_newer_schema,
    )
    return facts, to_write


def _blob_present(path: Path, checksum: str, size: int, read: bool) -> bool:
    try:
        if path.stat().st_size != size:
            return False
    except OSError:
        return False
    return file_digest(path, "md5") == checksum if read else True


def _blobs_on_disk(blobs_path: Optional[Path]) -> set[str]:
    """Names of the blob files in Stash's folder (names only: no object per file)."""
    if not blobs_path or not blobs_path.is_dir():
        return set()
    names = set()
    for first in _subfolders(blobs_path):
        for second in _subfolders(first):
            with os.scandir(second) as entries:
                names.update(e.name for e in entries if TEMP_MARKER not in e.name and e.is_file(follow_symlinks=False))
    return names


def _same_disk(a: Path, b: Optional[Path]) -> bool:
    try:
        return bool(b) and os.stat(existing_parent(a)).st_dev == os.stat(existing_parent(b)).st_dev
    except OSError:
        return False


def aside_folder_for(database: Path, now: Optional[datetime] = None) -> Path:
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    folder = database.parent / f"{ASIDE_PREFIX}{stamp}"
    counter = 1
    while folder.exists():
        folder = database.parent / f"{ASIDE_PREFIX}{stamp}-{counter}"
        counter += 1
    return folder


# --- the restore ---------------------------------------------------------------------------


def restore(backup: Path, target: Target, options: RestoreOptions, report: Reporter) -> RestoreResult:
    if not backup.is_file():
        raise UsageError(f"backup {backup} does not exist: give a backup file or its name (see --list)")
    _guard_anonymised(backup, options, report)
    ensure_stash_stopped(target, options)
    held = contextlib.nullcontext() if options.archive_held else _archive_held(backup, options.dry_run)
    with one_run_at_a_time(target.database, options.dry_run), held:
        return _restore(backup, target, options, report)


def _archive_held(backup: Path, dry_run: bool):
    """A stored backup's blobs stay in the archive while it is restored: a prune
    started meanwhile waits (and a restore waits for none: it says so)."""
    if not is_stored_backup(backup):
        return contextlib.nullcontext()
    from ..core.archive import Archive

    return Archive(backup.parent.parent).reading(create_lock=not dry_run)


def _restore(backup: Path, target: Target, options: RestoreOptions, report: Reporter) -> RestoreResult:
    if options.dry_run:
        warn_pending(target.database, report)
    else:
        recovered = recover_interrupted(target.database, report)
        remove_abandoned_temps(target)
        if (
            recovered
            and recovered.finished
            and recovered.journal.kind == "restore"
            and Path(recovered.journal.source) == backup
        ):
            report.info(f"the interrupted restore of {backup.name} is complete; nothing more to do")
            return RestoreResult(Plan(), restored=True, aside=recovered.journal.aside_path)
    inspection = read_backup(backup)
    _guard_salvaged(inspection, options)
    aside = aside_folder_for(target.database)
    early, _ = gather_facts(backup, inspection, target, options, aside, read_blobs=False)
    space = space_refusal(early)  # before writing anything, even a temp file
    if space:
        raise RestoreRefused(space + " (nothing was changed)")
    staged = None
    try:
        if options.dry_run:
            verify_without_staging(backup, inspection, options.check_level, report.phase(0.0, 0.6))
        else:
            staged = stage_and_verify(backup, inspection, target, options.check_level, report.phase(0.0, 0.6))
        facts, to_write = gather_facts(backup, inspection, target, options, aside)
        facts.path_mapping = _preview_mapping(backup, inspection, staged, target, options)
        plan = build_plan(facts)
        settings_plan = _plan_settings(inspection, target, options)
        if settings_plan and not plan.refusal:
            plan.steps += settings_plan.lines(aside)
        result = RestoreResult(plan)
        _show_plan(plan, report)
        if plan.refusal:
            raise RestoreRefused(plan.refusal + " (nothing was changed)")
        if options.dry_run:
            report.info("dry run: nothing was changed")
            return result
        _confirm(options, "Restore now?")
        ensure_stash_stopped(target, options)  # the user may have taken a while to answer
        _map_paths(staged, options, report)
        if settings_plan:
            from .settings_restore import restore_settings

            restore_settings(inspection.store, settings_plan, aside, report)
        result.blobs_written = _extract_blobs(backup, inspection, to_write, target, aside, report.phase(0.6, 0.9))
        result.blobs_kept = facts.blobs_already_present
        state = swap.swap_database_in(
            swap.Journal(
                kind="restore",
                database=str(target.database),
                aside=str(aside),
                incoming={"": [str(staged), None]},
                source=str(backup),
                started=datetime.now().isoformat(timespec="seconds"),
            )
        )
    finally:
        if staged:
            discard(staged)
    result.restored, result.aside = True, aside
    report.progress(1.0)
    report.info(
        f"restored {backup.name}: {state}"
        + (" (stash-restore --undo puts it back)" if "" in facts.current_files else "")
    )
    return result


def _plan_settings(inspection: _Inspection, target: Target, options: RestoreOptions):
    """With --with-settings: where the backup's settings files go (nothing is written)."""
    if not options.with_settings:
        return None
    from .settings_restore import plan_settings, restored_config

    if inspection.kind != "stored":
        raise RestoreRefused("only a backup in the archive holds Stash's settings: nothing was changed")
    files = inspection.store.settings(inspection.header.name)
    if not files:
        raise RestoreRefused(
            f"{inspection.header.name} holds no settings (made before settings were backed up, or with "
            "--no-settings): restore it without --with-settings. Nothing was changed"
        )
    if target.config is None:
        raise RestoreRefused("--with-settings needs --config (where config.yml goes), not --database")
    old_folder = inspection.header.settings.get("roots", {}).get("config", "")
    restored = restored_config(inspection.store, files, target.config.path, options.path_mappings, old_folder)
    return plan_settings(files, restored)


def _preview_mapping(
    backup: Path, inspection: _Inspection, staged: Optional[Path], target: Target, options: RestoreOptions
):
    """--map-path's preview for the plan: from the staged copy, or in a dry run from
    the backup's database (a zip's or stored backup's read out into a scratch folder)."""
    if not options.path_mappings:
        return None
    from .pathmap import POSIX, WINDOWS, library_roots
    from .pathmap_db import preview_database

    with _readable_database(backup, inspection, staged) as database:
        preview = preview_database(database, options.path_mappings)
    here = WINDOWS if os.name == "nt" else POSIX
    for count in preview.counts:
        count.new_exists = Path(count.mapping.new).is_dir() if count.mapping.new_style == here else None
    preview.library_roots = library_roots(target.config.get("stash")) if target.config else None
    return preview


@contextlib.contextmanager
def _readable_database(backup: Path, inspection: _Inspection, staged: Optional[Path]) -> Iterator[Path]:
    if staged is not None or inspection.kind == "sqlite":
        yield staged or backup
        return
    with scratch_folder(backup.parent if inspection.kind == "zip" else inspection.store.folder) as work:
        database = work / "database.sqlite"
        with open(database, "w+b") as out:
            if inspection.kind == "stored":
                inspection.store.read_snapshot(inspection.header, out)
            else:
                with zipfile.ZipFile(backup) as archive:
                    fullbackup.copy_member(archive, inspection.database_member, out)
        yield database


def _map_paths(staged: Path, options: RestoreOptions, report: Reporter) -> None:
    """Rewrite the library paths in the verified temp copy, before the swap (so --undo
    and an interrupted run's roll back cover it), then check the copy again."""
    if not options.path_mappings:
        return
    from .pathmap_db import rewrite_database

    moved = rewrite_database(staged, options.path_mappings)
    check_database(staged, QUICK, blob_references=False)
    swap.crash_point("paths-mapped")
    report.info(f"rewrote the paths of {moved} folder(s) in the restored database; it passes quick_check")


def _show_plan(plan: Plan, report: Reporter) -> None:
    report.info("Plan:")
    for number, step in enumerate(plan.steps, 1):
        report.info(f"  {number}. {step}")
    for note in plan.notes:
        report.info(f"  note: {note}")


def _confirm(options: RestoreOptions, question: str) -> None:
    if options.assume_yes:
        return
    if options.confirm is None:
        raise RestoreRefused("not confirmed: run with --yes (standard input is not a terminal). Nothing was changed")
    if not options.confirm(question):
        raise RestoreRefused("cancelled: nothing was changed")


def _stage_database(backup: Path, inspection: _Inspection, target: Target, report: Reporter) -> Path:
    """The new database as a unique temp file beside the target, fsynced."""
    make_folders(target.database.parent)
    with staged_file(target.database.parent, target.database.name) as (out, staged):
        if inspection.kind == "stored":
            inspection.store.read_snapshot(inspection.header, out, durable=True)  # size and SHA-256 checked
        elif inspection.kind == "zip":
            with zipfile.ZipFile(backup) as archive:
                fullbackup.copy_member(archive, inspection.database_member, out)
        else:
            with open(backup, "rb") as source:
                _copy_checked(source, out, inspection.expected_sha256, backup)
        _match_ownership(staged, target.database)
    swap.crash_point("staged")
    report.progress(1.0)
    return staged


def _copy_checked(source, target, expected_sha256: Optional[str], backup: Path) -> None:
    """Copy; with a recorded SHA-256, hash the bytes as they pass (one read) and
    refuse a copy that differs: a flipped byte in an unindexed column passes even
    integrity_check."""
    if not expected_sha256:
        copy_file(source, target)
        return
    digest, _ = copy_and_hash(source, target, "sha256")
    if digest != expected_sha256:
        raise VerificationError(
            f"{backup} has SHA-256 {digest[:12]}… but the archive's manifest says "
            f"{expected_sha256[:12]}…: the file is damaged"
        )


def copy_file(source, target) -> None:
    """Copy in the kernel where it can (copy_file_range: no round trip through
    Python's buffers, and a reflink on filesystems that have them)."""
    if hasattr(os, "copy_file_range"):
        try:
            while os.copy_file_range(source.fileno(), target.fileno(), 1 << 30):
                pass
            return
        except OSError:  # not between these filesystems: start over by hand
            os.lseek(source.fileno(), 0, os.SEEK_SET)
            os.lseek(target.fileno(), 0, os.SEEK_SET)
            os.ftruncate(target.fileno(), 0)
            source.seek(0)
            target.seek(0)
    shutil.copyfileobj(source, target, 4 * 1024 * 1024)


def _match_ownership(path: Path, like: Path) -> None:
    """Give a restored file the mode (and, as root, the owner) of the file it replaces:
    temp files are private, and Stash may run as another user (Docker, services)."""
    reference = like if like.exists() else like.parent
    info = os.stat(reference)
    mode = stat.S_IMODE(info.st_mode) if like.exists() else private_mode(like.parent)  # none to copy: private
    os.chmod(path, mode & ~0o7111)  # a database: never executable, no set-id bits
    give_owner(path, info.st_uid, info.st_gid)


def _extract_blobs(
    backup: Path, inspection: _Inspection, to_write: _Selection, target: Target, aside: Path, report: Reporter
) -> int:
    """Blobs go in through temp files (MD5 checked), one sync per batch, then renames.
    A different file already under a blob's name is damaged: it moves aside. On any
    error the batch's temp files go; blobs already renamed are good ones and stay."""
    if not to_write.count:
        return 0
    written = 0
    chosen = (checksum for index, (checksum, _) in enumerate(inspection.blobs()) if index in to_write)
    with _blob_copier(backup, inspection) as copy_blob:
        while batch := list(itertools.islice(chosen, BLOB_BATCH)):
            staged: list[tuple[str, Path]] = []
            try:
                _stage_batch(copy_blob, batch, target.blobs_path, staged, parallel=inspection.kind == "stored")
                swap.crash_point("blobs-staged")
                _sync_all([path for _, path in staged])
                written += _place_blobs(staged, target.blobs_path, aside)
            except BaseException:
                for _, temp in staged:
                    discard(temp)  # a no-op for those already renamed
                raise
            report.progress(written / to_write.count, "extracting blobs")
            swap.crash_point("blobs-batch")
    return written


@contextlib.contextmanager
def _blob_copier(backup: Path, inspection: _Inspection) -> Iterator[Callable]:
    """copy(checksum, out) -> MD5 of what was copied: from the zip's entry, or from the
    archive's blob file."""
    if inspection.kind == "stored":

        def copy_stored(checksum: str, out) -> str:
            path = inspection.store.blob_path(checksum)
            try:
                with open(path, "rb") as blob:
                    return copy_and_hash(blob, out, "md5")[0]
            except FileNotFoundError:
                raise VerificationError(f"blob {path} went missing from the archive while restoring") from None

        yield copy_stored
        return
    with zipfile.ZipFile(backup) as archive:
        yield lambda checksum, out: fullbackup.copy_member(archive, inspection.blob_members[checksum].filename, out)


STAGING_THREADS = 8  # reads and writes of small files wait on the disk: several in flight


def _stage_batch(copy_blob: Callable, batch: list[str], blobs_path: Path, staged: list, parallel: bool) -> None:
    """Stage a batch of blobs into `staged` (temp files). A stored backup's blobs are
    separate files: several are read and written at once, so the disk's latency
    overlaps (a zip is one file read in order). On an error, every temp made is in
    `staged` for the caller to remove."""
    if not parallel:
        for checksum in batch:
            staged.append(_stage_blob(copy_blob, checksum, blobs_path))
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=STAGING_THREADS) as pool:
        futures = [pool.submit(_stage_blob, copy_blob, checksum, blobs_path) for checksum in batch]
    failure = None
    for future in futures:  # all have finished: keep each temp made, raise the first error
        try:
            staged.append(future.result())
        except BaseException as error:
            failure = failure or error
    if failure:
        raise failure


def _place_blobs(staged: list[tuple[str, Path]], blobs_path: Path, aside: Path) -> int:
    for checksum, temp in staged:
        final = blobs_path / blob_relative_path(checksum)
        if final.exists():
            damaged = aside / "damaged-blobs" / blob_relative_path(checksum)
            make_folders(damaged.parent)
            os.replace(final, damaged)
        os.replace(temp, final)
    sync_folders({path.parent for _, path in staged})
    return len(staged)


def _stage_blob(copy_blob: Callable, checksum: str, blobs_path: Path) -> tuple[str, Path]:
    final = blobs_path / blob_relative_path(checksum)
    try:
        make_folders(final.parent)
    except OSError as error:
        raise storage_error("write blobs into", blobs_path, error) from error
    temp = temp_path_in(final.parent, final.name)
    try:
        with open(temp, "r+b") as out:
            actual = copy_blob(checksum, out)
        _match_ownership(temp, blobs_path)
        if actual != checksum:
            raise VerificationError(
                f"blob {blob_relative_path(checksum)} in the backup does not match its name "
                f"(MD5 {actual}): the backup is damaged"
            )
    except OSError as error:
        discard(temp)
        raise storage_error("write blobs into", blobs_path, error) from error
    except BaseException:
        discard(temp)
        raise
    return checksum, temp


def _sync_all(paths: list[Path]) -> None:
    if hasattr(os, "sync") and len(paths) > 8:
        os.sync()  # one flush for the whole batch instead of one per small file
        return
    for path in paths:
        fsync_file(path)


# --- undo -------------------------------------------------------------------------------------


def aside_folders(database: Path) -> list[Path]:
    """Folders of earlier restores (finished ones carry a record), newest first."""
    folders = [p for p in database.parent.glob(f"{ASIDE_PREFIX}*") if (p / swap.RECORD_NAME).is_file()]
    return sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True)


def undo(target: Target, options: RestoreOptions, report: Reporter) -> Optional[Path]:
    """Put back the database the last restore kept aside, keeping the restored one
    aside in turn (so an undo can itself be undone). Returns the folder it came from."""
    ensure_stash_stopped(target, options)
    with one_run_at_a_time(target.database, options.dry_run):
        return _undo(target, options, report)


def _undo(target: Target, options: RestoreOptions, report: Reporter) -> Optional[Path]:
    if options.dry_run:
        warn_pending(target.database, report)
    else:
        recovered = recover_interrupted(target.database, report)
        remove_abandoned_temps(target)
        if recovered and _nothing_left_to_undo(recovered, report):
            return Path(recovered.journal.source) if recovered.journal.kind == "undo" else None
    candidates = [f for f in aside_folders(target.database) if (f / target.database.name).is_file()]
    if not candidates:
        raise UsageError(
            f"no earlier restore found beside {target.database} (folders {ASIDE_PREFIX}*): nothing to undo"
        )
    source = candidates[0]
    aside = aside_folder_for(target.database)
    report.info(
        f"Plan: keep the current {target.database.name} in {aside}; put back {target.database.name} from {source}"
    )
    if options.dry_run:
        report.info("dry run: nothing was changed")
        return source
    _confirm(options, "Undo the last restore?")
    state = swap.swap_database_in(
        swap.Journal(
            kind="undo",
            database=str(target.database),
            aside=str(aside),
            incoming={"": [str(source / target.database.name), None]},
            source=str(source),
            started=datetime.now().isoformat(timespec="seconds"),
        )
    )
    report.info(f"undone: {state}")
    return source


def _nothing_left_to_undo(recovered: Recovered, report: Reporter) -> bool:
    """A rerun finishes the operation that was interrupted, never the opposite one: a
    finished undo is the undo asked for; a rolled back restore left nothing to undo."""
    kind, finished = recovered.journal.kind, recovered.finished
    if kind == "undo" and finished:
        report.info("the interrupted undo is complete; nothing more to do")
        return True
    if kind == "restore" and not finished:
        report.info("the interrupted restore was rolled back, so there is nothing of it to undo; nothing more to do")
        return True
    return False
