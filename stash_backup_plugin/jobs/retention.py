"""The *Apply retention* job: restic's keep rules over the verified backups, then the
collection of what no kept backup refers to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..core import stored
from ..core.archive import Archive, Entry
from ..core.faults import crash_point
from ..core.reporting import Reporter, human_size
from ..core.retention import Decision, Policy, held_before_upgrade, plan_retention
from ..core.status import StatusFile, live_damage, parse_time


@dataclass
class RetentionResult:
    decisions: list[Decision]
    freed_bytes: int = 0  # old files removed, and what garbage collection deleted (or would)
    collected_blobs: int = 0
    collected_snapshots: int = 0
    spared_blobs: int = 0  # unreferenced but possibly a run in progress's
    held: str = ""  # why nothing was removed (retention_hold)


def apply_retention(archive: Archive, policy: Policy, dry_run: bool, report: Reporter) -> RetentionResult:
    """Prune by the policy (restic's forget), then collect the stored data no remaining
    backup refers to (restic's prune). Only verified-good backups count; those that
    failed verification are reported apart and left in place (retention.plan_retention)."""
    with archive.locked():
        held = retention_hold(archive)
        if held:  # the backups from before the damage must all stay, and what they refer to
            report.warning(held)
            return RetentionResult([], held=held)
        entries = archive.entries()
        held = held_before_upgrade(entries)  # Stash's pre-migration backups: out of the rules' reach
        decisions = plan_retention([(e, e.created_time, e.verified_ok) for e in entries if e.file not in held], policy)
        decisions += [Decision(e, e.created_time, [held[e.file]]) for e in entries if e.file in held]
        result = RetentionResult(decisions)
        verb = "would remove" if dry_run else "removed"
        for decision in decisions:
            entry: Entry = decision.item
            if decision.failed and entry.salvaged:
                report.info(f"keep   {entry.file} (salvaged: never counted as a good backup, never removed by prune)")
            elif decision.failed:
                report.warning(
                    f"failed {entry.file}: failed verification ({entry.verify_error or 'no detail'}); "
                    "not counted by any rule and not removed: re-verify it, or delete it yourself"
                )
            elif decision.keep:
                report.info(f"keep   {entry.file} ({', '.join(decision.reasons)})")
            else:
                if not entry.is_stored:
                    result.freed_bytes += entry.size
                if not dry_run:
                    archive.remove(entry)
                    crash_point("forgotten")
                report.info(f"{verb} {entry.file}")
        _collect_garbage(archive, decisions, dry_run, result, report)
        report.progress(1.0)
        report.info(retention_summary(policy, result, dry_run))
        return result


STRAYS_SHOWN = 5  # stray file names named in prune's output; the rest counted


def _collect_garbage(
    archive: Archive, decisions: list[Decision], dry_run: bool, result: RetentionResult, report: Reporter
) -> None:
    store = archive.store
    if not store.exists():
        return
    keep = [d.item.file for d in decisions if d.item.is_stored and (d.keep or d.failed)] if dry_run else None
    plan = stored.plan_collection(store, keep)
    result.freed_bytes += plan.freed_bytes
    result.collected_blobs, result.collected_snapshots = len(plan.delete_blobs), len(plan.delete_snapshots)
    result.spared_blobs = plan.spared_blobs
    if plan.spared_blobs:
        report.info(
            f"spared {plan.spared_blobs} unreferenced blob(s) written since a run still marked in progress "
            "began; a later prune collects them"
        )
    if plan.strays:
        shown = ", ".join(plan.strays[:STRAYS_SHOWN]) + (
            f" and {len(plan.strays) - STRAYS_SHOWN} more" if len(plan.strays) > STRAYS_SHOWN else ""
        )
        report.warning(
            f"ignored {len(plan.strays)} file(s) in the archive's blobs folder that are not blobs (left alone): {shown}"
        )
    if plan.rescued_blobs:
        report.warning(
            f"kept {plan.rescued_blobs} blob(s) a kept backup refers to that the sorted walk missed "
            "(the blobs folder lists out of order): please report this"
        )
    if not dry_run:
        stored.collect(store, plan, report.phase(0.5, 1.0))


def retention_summary(policy: Policy, result: RetentionResult, dry_run: bool) -> str:
    if result.held:
        return f"Retention ({policy.describe()}): {result.held}"
    decisions = result.decisions
    failed = sum(1 for d in decisions if d.failed)
    kept = sum(1 for d in decisions if d.keep and not d.failed)
    removed = len(decisions) - kept - failed
    verb = "would remove" if dry_run else "removed"
    freed = ""
    if result.freed_bytes or result.collected_blobs or result.collected_snapshots:
        freed = (
            f"; {'would free' if dry_run else 'freed'} {human_size(result.freed_bytes)} "
            f"({result.collected_blobs} blob(s), {result.collected_snapshots} database snapshot(s) collected)"
        )
    return (
        f"Retention ({policy.describe()}){' [dry run]' if dry_run else ''}: kept {kept}, {verb} {removed}"
        + (f", left {failed} that failed verification" if failed else "")
        + freed
    )


def restore_candidate(archive: Archive, damaged_since: str) -> Optional[Entry]:
    """The newest verified backup added before the damage was first seen."""
    first_seen = parse_time(damaged_since)
    if first_seen is None:
        return None
    return next(
        (e for e in archive.entries() if e.verified_ok and (parse_time(e.added_at) or first_seen) < first_seen), None
    )


def retention_hold(archive: Archive) -> str:
    """Why retention must remove nothing now ("" when it may): the live database is
    known damaged. The status is read from the archive (fail closed: a status.json that
    cannot be read stops retention with its error)."""
    record = live_damage(StatusFile(archive.folder).read())
    if record is None:
        return ""
    candidate = restore_candidate(archive, record.damaged_since)
    restore = f"restore {candidate.file}" if candidate else "no verified backup predates it"
    return (
        f"retention holds every backup: the live database is known damaged since {record.damaged_since} "
        f"({restore}); it resumes after a healthy backup"
    )
