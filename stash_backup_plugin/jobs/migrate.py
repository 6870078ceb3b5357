"""`stash-backup migrate`: the older per-backup zips folded into the store, one at a
time, each removed only once its stored copy checks out; then stored backups whose
database is still a whole gzip snapshot folded into pages (core/fold.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core import fold, stored
from ..core.archive import Archive, Entry
from ..core.errors import VerificationError
from ..core.faults import crash_point
from ..core.reporting import Reporter, human_size
from ..core.verify import verify_backup


@dataclass
class MigrationOutcome:
    steps: list
    imported: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)  # gzip snapshots now stored as pages

    @property
    def ok(self) -> bool:
        return not self.failed


# What gzip -1 leaves of a Stash database (docs/archive.md, Compression): for estimates only.
ESTIMATED_SNAPSHOT_RATIO = 0.35


def migrate_archive(archive: Archive, dry_run: bool, level: str, report: Reporter) -> MigrationOutcome:
    """Fold the per-backup zips (and plain sqlite files) into the store, one by one:
    verify the old file, import it (record written last), check the new backup,
    only then remove the old file. A run killed anywhere is finished by the next."""
    from ..core.store_plan import OldBackup, plan_migration

    with archive.locked():
        store = archive.store
        old = {e.file: e for e in archive.file_entries()}
        imported_from = {e.migrated_from: e.file for e in archive.entries() if e.is_stored and e.migrated_from}
        steps = plan_migration(
            [OldBackup(e.file, e.size, e.verified_ok, e.verified_at, e.verify_error) for e in old.values()],
            imported_from,
            store.record_names(),
        )
        outcome = MigrationOutcome(steps)
        for step in steps:
            report.info(_step_line(step, dry_run))
        gzipped = fold.gzip_backups(store)
        for name in gzipped:
            report.info(f"{'would fold' if dry_run else 'fold'} the gzip snapshot of {name} into pages")
        if dry_run:
            report.info(_migration_estimate(archive, [old[s.old.file] for s in steps if s.action == "import"]))
            report.info("dry run: nothing was changed (run with --apply to migrate)")
            return outcome
        work = [s for s in steps if s.action != "skip"]
        for index, step in enumerate(work):
            phase = report.phase(0.8 * index / len(work), 0.8 * (index + 1) / len(work))
            try:
                _migrate_one(archive, old[step.old.file], step, level, phase)
                outcome.imported.append(step.old.file)
            except VerificationError as error:
                outcome.failed.append((step.old.file, str(error)))
                report.error(f"BAD {step.old.file}: {error}; it stays as it is")
        _fold_all(store, gzipped, outcome, report.phase(0.8, 1.0))
        report.progress(1.0)
        report.info(
            f"Migrated {len(outcome.imported)} backup(s) into the store, folded {len(outcome.folded)} gzip "
            f"snapshot(s) into pages; {len(outcome.failed)} failed, "
            f"{sum(1 for s in steps if s.action == 'skip')} skipped; archive now "
            f"{human_size(archive.usage().total)}"
        )
        return outcome


def _fold_all(store, names: list[str], outcome: MigrationOutcome, report: Reporter) -> None:
    """Each gzip snapshot into pages, oldest first; one that does not check out stays
    as it is (its backup unchanged) and is reported."""
    for index, name in enumerate(names):
        report.progress(index / len(names), "folding snapshots into pages")
        try:
            fold.fold(store, name)
            outcome.folded.append(name)
        except VerificationError as error:
            outcome.failed.append((name, str(error)))
            report.error(f"BAD {name}: {error}; its gzip snapshot stays as it is")


def _step_line(step, dry_run: bool) -> str:
    if step.action == "import":
        return f"{'would import' if dry_run else 'import'} {step.old.file} as {step.record_name}"
    if step.action == "remove-old":
        return f"{'would remove' if dry_run else 'remove'} {step.old.file}: already imported as {step.record_name}"
    return f"skip {step.old.file}: {step.reason}"


def _migrate_one(archive: Archive, entry: Entry, step, level: str, report: Reporter) -> None:
    path = archive.folder / entry.file
    store = archive.store
    if step.action == "import":
        verify_backup(
            path,
            level,
            expected_size=entry.size,
            expected_sha256=entry.sha256,
            progress=report.phase(0.0, 0.3).bytes_progress(f"verifying {entry.file}"),
        )
        stored.import_backup_file(
            store,
            path,
            step.record_name,
            level,
            report.phase(0.3, 0.8),
            source=f"{entry.source or entry.kind} (migrated)",
            server_version=entry.server_version,
            migrated_from=entry.file,
            added_at=entry.added_at,
        )
        crash_point("migrated")
    header = store.header(step.record_name)
    problems = stored.check_snapshot(store, header, level, report.phase(0.8, 0.95))
    problems += stored.check_blobs(store, [header.name], None, report)[header.name]
    if problems:
        raise VerificationError(f"the imported {header.name} does not check out: {problems[0]}")
    archive.remove(entry)  # only now: its replacement is proven good
    report.info(f"migrated {entry.file} -> {header.name}: {header.blob_count} blob(s), {header.new_blobs} new")


def _migration_estimate(archive: Archive, entries: list[Entry]) -> str:
    """What the archive would take after migrating, from the zips' directories alone:
    each blob once, databases at the snapshot codec's typical ratio."""
    import zipfile

    store, seen, blob_bytes, database_bytes = archive.store, set(), 0, 0
    for entry in entries:
        path = archive.folder / entry.file
        if entry.kind != "zip":
            database_bytes += entry.size
            continue
        try:
            with zipfile.ZipFile(path) as packed:
                for info in packed.infolist():
                    checksum = info.filename.rsplit("/", 1)[-1]
                    if info.filename.startswith("blobs/") and checksum not in seen:
                        seen.add(checksum)
                        blob_bytes += 0 if store.blob_size(checksum) is not None else info.file_size
                    elif "/" not in info.filename:
                        database_bytes += info.file_size
        except (OSError, zipfile.BadZipFile):
            continue
    before = sum(e.size for e in entries)
    after = blob_bytes + int(database_bytes * ESTIMATED_SNAPSHOT_RATIO)
    return (
        f"{len(entries)} backup(s) take {human_size(before)} as per-backup files; in the store about "
        f"{human_size(after)} ({len(seen)} distinct blob(s), databases compressed): about "
        f"{human_size(max(before - after, 0))} freed"
    )
