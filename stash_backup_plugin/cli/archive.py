"""The commands that read or tend the archive: list, verify, prune, export, migrate, status."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .options import (
    archive_of,
    archive_option,
    check_option,
    keep_options,
    notifier_of,
    notify_option,
    ping_option,
    policy_of,
    print_json,
    status_file_of,
)


def add_commands(commands) -> None:
    listing = commands.add_parser("list", help="list the archive")
    archive_option(listing)
    listing.add_argument("--json", action="store_true")
    verify = commands.add_parser("verify", help="re-verify the archive, or the given backup files")
    archive_option(verify)
    check_option(verify)
    verify.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    verify.add_argument("--json", action="store_true")
    reading = verify.add_mutually_exclusive_group()
    reading.add_argument("--read-data", action="store_true", help="re-hash every blob's content (MD5 = its name)")
    reading.add_argument(
        "--read-data-subset",
        metavar="N/M",
        help="re-hash part N of M of the blobs; N = 1..M on M nights reads them all",
    )
    notify_option(verify)
    ping_option(verify)
    prune = commands.add_parser("prune", help="apply a retention policy to the archive")
    archive_option(prune)
    keep_options(prune, "")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    prune.add_argument("--json", action="store_true")
    notify_option(prune)
    ping_option(prune)
    status = commands.add_parser(
        "status", help="the last backup's age and each job's last outcome; exit 1 when overdue"
    )
    archive_option(status)
    status.add_argument(
        "--max-age",
        metavar="DURATION",
        default="24h",
        help="overdue when the newest verified backup is older (default %(default)s)",
    )
    status.add_argument("--json", action="store_true")
    notify_option(status)
    export = commands.add_parser("export", help="write one backup as a self-contained zip (Stash v0.31's layout)")
    archive_option(export)
    export.add_argument("name", metavar="NAME", help="the backup's name (see list)")
    export.add_argument(
        "--output",
        type=Path,
        required=True,
        metavar="FILE.zip",
        help="the zip to write; FILE.sqlite or FILE.gz: the database alone (plain, or gzip), for Stash's manual restore",
    )
    migrate = commands.add_parser("migrate", help="fold the older per-backup zips into the store (dry run by default)")
    archive_option(migrate)
    check_option(migrate)
    migrate.add_argument("--apply", action="store_true", help="do it (without it: only show the plan)")
    migrate.add_argument("--json", action="store_true")


def cmd_list(args, report) -> int:
    from ..core.reporting import human_size

    archive = archive_of(args)
    entries = archive.entries()
    for problem in archive.manifest_problems:
        report.warning(problem)
    if args.json:
        print_json([asdict(e) for e in entries])
        return 0
    if not entries:
        print(f"no backups in {archive.folder}")
    for entry in entries:
        state = "verified" if entry.verified_ok else ("BAD" if entry.verified_at else "unverified")
        state = "SALVAGED" if entry.salvaged else state
        tag = f"  (pre-upgrade {entry.pre_upgrade})" if entry.pre_upgrade else ""
        drilled = ("booted" if entry.drill.get("ok") else "DRILL-FAILED") if entry.drill.get("at") else "-"
        blobs = f"{entry.blob_count} blobs" if entry.includes_blobs else "database only"
        blobs += " + settings" if entry.settings_files else ""
        own = entry.new_bytes if entry.is_stored else entry.size
        print(
            f"{entry.created}  schema {entry.schema_version:<3}  {entry.kind:<6}  {blobs:<25}  "
            f"new {human_size(own):>10}  {state:<10}  drill {drilled:<12}  {entry.file}{tag}"
        )
    usage = archive.usage()
    print(
        f"archive total {human_size(usage.total)}: {usage.blobs} blob(s) {human_size(usage.blob_bytes)}, "
        f"database snapshots {human_size(usage.snapshot_bytes)}, records {human_size(usage.record_bytes)}"
        + (f", older per-backup files {human_size(usage.old_bytes)}" if usage.old_bytes else "")
    )
    return 0


def cmd_verify(args, report) -> int:
    from ..core.errors import VerificationError
    from ..core.sqlite_check import FULL, QUICK
    from ..core.verify import require_blobs, verify_backup
    from ..jobs.status import recording
    from ..jobs.verify import verify_archive

    level = FULL if args.full_check else QUICK
    if args.paths:
        results, failed = [], 0
        for path in args.paths:
            try:
                verified = verify_backup(path, level, progress=report.bytes_progress(f"verifying {path.name}"))
                require_blobs(verified)
                results.append(
                    {
                        "path": str(path),
                        "ok": True,
                        "kind": verified.kind,
                        "schema_version": verified.schema_version,
                        "blob_count": verified.blob_count,
                        "sha256": verified.sha256,
                    }
                )
                report.info(f"ok  {path}: schema {verified.schema_version}, {verified.blob_count} blob(s)")
            except VerificationError as error:
                failed += 1
                results.append({"path": str(path), "ok": False, "error": str(error)})
                report.error(f"BAD {path}: {error}")
        if args.json:
            print_json(results)
        return 1 if failed else 0
    read_data = None
    if args.read_data or args.read_data_subset:
        from ..core.stored import ReadData

        read_data = ReadData.parse(args.read_data_subset) if args.read_data_subset else ReadData()
    archive = archive_of(args)
    with recording(status_file_of(archive), "verify", report, notifier_of(args, report), ping=args.ping or "") as run:
        summary = verify_archive(archive, level, report, read_data)
        (report.info if summary.ok else report.error)(summary.line())
        (run.done if summary.ok else run.fail)(summary.line())
    if args.json:
        print_json(
            {
                "checked": summary.checked,
                "failed": [{"file": f, "error": e} for f, e in summary.failed],
                "adopted": summary.adopted,
            }
        )
    return 0 if summary.ok else 1


def cmd_prune(args, report) -> int:
    from ..jobs.retention import apply_retention, retention_summary
    from ..jobs.status import recording

    policy = policy_of(args)
    if policy.is_empty():
        report.warning("no --keep-* rule given: nothing will be removed")
    archive = archive_of(args)
    with recording(
        status_file_of(archive), "retention", report, notifier_of(args, report), ping=args.ping or ""
    ) as run:
        result = apply_retention(archive, policy, args.dry_run, report)
        run.done(retention_summary(policy, result, args.dry_run))
    if args.json:  # one object per backup, as before; the space freed is in the summary line
        print_json(
            [
                {"file": d.item.file, "keep": d.keep, "failed_verification": d.failed, "reasons": d.reasons}
                for d in result.decisions
            ]
        )
    return 0


def cmd_export(args, report) -> int:
    from ..jobs.export import export_backup

    path = export_backup(archive_of(args), args.name, args.output.expanduser(), report)
    print(path)
    return 0


def cmd_migrate(args, report) -> int:
    from ..core.sqlite_check import FULL, QUICK
    from ..jobs.migrate import migrate_archive

    outcome = migrate_archive(
        archive_of(args), dry_run=not args.apply, level=FULL if args.full_check else QUICK, report=report
    )
    if args.json:
        print_json(
            [
                {"file": s.old.file, "action": s.action, "record": s.record_name, "reason": s.reason}
                for s in outcome.steps
            ]
        )
    return 0 if outcome.ok else 1


def cmd_status(args, report) -> int:
    from ..core.retention import parse_duration
    from ..jobs.status import check_overdue, overview

    max_age = parse_duration(args.max_age)
    archive = archive_of(args)
    overdue = check_overdue(archive, status_file_of(archive), max_age, report, notifier_of(args, report))
    view = overview(archive, status_file_of(archive), max_age)
    if args.json:
        print_json(view)
        return 1 if overdue else 0
    age = view["last_verified_age_seconds"]
    print(f"archive: {archive.folder} ({view['archive']['backups']} backup(s))")
    print("newest verified backup: " + (f"{view['last_verified']} ({_age(age)} old)" if age is not None else "none"))
    for name, job in sorted(view["jobs"].items()):
        outcome = "failed" if job["failing"] else "ok"
        print(f"{name:<10} last run {job['last_attempt'] or 'never'}: {outcome}: {job['last_message']}")
    if overdue:
        report.error(f"overdue: no verified backup within {max_age}")
    return 1 if overdue else 0


def _age(seconds: int) -> str:
    from datetime import timedelta

    from ..core.status import describe_age

    return describe_age(timedelta(seconds=seconds))


COMMANDS = {
    "list": cmd_list,
    "verify": cmd_verify,
    "prune": cmd_prune,
    "export": cmd_export,
    "migrate": cmd_migrate,
    "status": cmd_status,
}
