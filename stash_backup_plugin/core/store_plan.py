"""Decisions about the store, made from facts gathered beforehand. Pure logic: no I/O,
so garbage collection and migration can be tested case by case.

Garbage collection walks two sorted streams at once, the stored blobs and the
checksums the kept records refer to (merged, with repeats), so its memory does not
grow with the number of blobs; only what it will delete is collected."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

from .naming import parse_backup_name


@dataclass
class GcPlan:
    delete_blobs: list[tuple[str, int]] = field(default_factory=list)  # (checksum, size)
    delete_snapshots: list[str] = field(default_factory=list)  # backup names
    spared_blobs: int = 0  # unreferenced, but new enough that a run in progress may be adding them
    spared_snapshots: list[str] = field(default_factory=list)
    kept_blobs: int = 0
    kept_bytes: int = 0
    snapshot_bytes: int = 0  # of the snapshots to delete, when known
    strays: list[str] = field(default_factory=list)  # files in the blobs folder that are no blob: left alone
    rescued_blobs: int = 0  # the sorted walk would have deleted them, but a kept record refers to them
    delete_packs: list[tuple[str, int]] = field(default_factory=list)  # (pack id, bytes with its index)
    spared_packs: int = 0  # unreferenced, but new enough that a run in progress may be writing its list
    kept_packs: int = 0

    @property
    def blob_bytes(self) -> int:
        return sum(size for _, size in self.delete_blobs)

    @property
    def pack_bytes(self) -> int:
        return sum(size for _, size in self.delete_packs)

    @property
    def freed_bytes(self) -> int:
        return self.blob_bytes + self.snapshot_bytes + self.pack_bytes


def plan_gc(stored: Iterable, referenced: Iterable[str], protect_since: Optional[float] = None) -> GcPlan:
    """Which stored blobs no record refers to. `stored` yields objects with checksum,
    size and mtime, sorted by checksum; `referenced` yields checksums sorted (repeats
    allowed). A blob written at or after `protect_since` (the oldest in-progress run's
    start) is spared: that run's record, not yet written, may refer to it."""
    plan = GcPlan()
    wanted = _unique(iter(referenced))
    next_wanted = next(wanted, None)
    for blob in stored:
        while next_wanted is not None and next_wanted < blob.checksum:
            next_wanted = next(wanted, None)  # referenced but not stored: verify reports it
        if next_wanted == blob.checksum:
            plan.kept_blobs += 1
            plan.kept_bytes += blob.size
        elif protect_since is not None and blob.mtime >= protect_since:
            plan.spared_blobs += 1
        else:
            plan.delete_blobs.append((blob.checksum, blob.size))
    for _ in wanted:  # read to the end: a damaged record raises only there
        pass
    return plan


def spare_referenced(plan: GcPlan, referenced: Iterable[str]) -> GcPlan:
    """Take out of the plan every blob that `referenced` (in any order) names: the
    check by name before anything is deleted, so that no ordering assumption (a
    folder listed out of order, a record not sorted) can delete a referenced image.
    Memory: the set of blobs to delete, which the plan holds anyway."""
    doomed = {checksum for checksum, _ in plan.delete_blobs}
    wanted = doomed.intersection(referenced)
    if wanted:
        kept = [(checksum, size) for checksum, size in plan.delete_blobs if checksum in wanted]
        plan.delete_blobs = [(checksum, size) for checksum, size in plan.delete_blobs if checksum not in wanted]
        plan.rescued_blobs += len(kept)
        plan.kept_blobs += len(kept)
        plan.kept_bytes += sum(size for _, size in kept)
    return plan


def plan_snapshots(
    snapshots: Iterable[tuple[str, float, int]],
    recorded: Iterable[str],
    pending: Iterable[str],
    protect_since: Optional[float] = None,
    plan: Optional[GcPlan] = None,
) -> GcPlan:
    """Snapshot files (name, mtime, size) that no record names and no pending run is
    writing: left by a killed run, or by a forget that was cut short."""
    plan = plan or GcPlan()
    recorded, pending = set(recorded), set(pending)
    for name, mtime, size in snapshots:
        if name in recorded:
            continue
        if name in pending or (protect_since is not None and mtime >= protect_since):
            plan.spared_snapshots.append(name)
        else:
            plan.delete_snapshots.append(name)
            plan.snapshot_bytes += size
    return plan


def plan_packs(
    stored: Iterable, referenced: set[str], protect_since: Optional[float] = None, plan: Optional[GcPlan] = None
) -> GcPlan:
    """Packs (objects with pack, size, mtime) that no kept page list names: deletable,
    unless written at or after `protect_since` (a run in progress may be about to name
    them in its page list). Repacking (a pack only partly referenced) is not done: a
    pack stays whole while any kept list names it."""
    plan = plan or GcPlan()
    for pack in stored:
        if pack.pack in referenced:
            plan.kept_packs += 1
        elif protect_since is not None and pack.mtime >= protect_since:
            plan.spared_packs += 1
        else:
            plan.delete_packs.append((pack.pack, pack.size))
    return plan


def _unique(checksums: Iterator[str]) -> Iterator[str]:
    previous = None
    for checksum in checksums:
        if checksum != previous:
            yield checksum
            previous = checksum


# --- migration of per-backup zips ---------------------------------------------------------


@dataclass
class OldBackup:
    """A backup in the old layout (a zip or a plain sqlite file, manifest.json)."""

    file: str
    size: int
    verified_ok: bool
    verified_at: str = ""
    verify_error: str = ""


@dataclass
class MigrationStep:
    old: OldBackup
    action: str  # "import", "remove-old" (already imported), "skip"
    record_name: str = ""
    reason: str = ""


def stored_name_for(file: str) -> str:
    """A zip's backup name without `.zip`: the record's name."""
    return file[:-4] if file.endswith(".zip") else file


def plan_migration(
    old: Iterable[OldBackup], imported_from: dict[str, str], record_names: Iterable[str]
) -> list[MigrationStep]:
    """For every old backup: import it, finish an import a killed run left (record
    written, old file still there: remove it), or skip it (it failed verification, or
    was never verified: migrating must not launder a bad backup into a good-looking
    record). `imported_from` maps old file name -> record name."""
    taken = set(record_names)
    steps = []
    for backup in sorted(old, key=lambda b: b.file):
        if backup.file in imported_from:
            steps.append(
                MigrationStep(backup, "remove-old", imported_from[backup.file], "already imported by an earlier run")
            )
            continue
        if not parse_backup_name(backup.file):
            steps.append(MigrationStep(backup, "skip", reason="not a Stash backup name"))
            continue
        if not backup.verified_ok:
            why = (
                f"its last verification failed: {backup.verify_error}"
                if backup.verified_at
                else "it was never verified"
            )
            steps.append(MigrationStep(backup, "skip", reason=f"{why} (run verify first)"))
            continue
        name = _free(stored_name_for(backup.file), taken)
        taken.add(name)
        steps.append(MigrationStep(backup, "import", name))
    return steps


def _free(name: str, taken: set[str]) -> str:
    from .naming import with_counter

    candidate, counter = name, 1
    while candidate in taken:
        counter += 1
        candidate = with_counter(name, counter)
    return candidate
