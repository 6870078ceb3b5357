"""`stash-backup offsite push|verify|list|prune|pull`: copies of the archive on a remote."""

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
    remote_options,
    status_file_of,
)


def add_commands(commands) -> None:
    offsite = commands.add_parser("offsite", help="copies of the archive on a remote (S3, SFTP, any rclone remote)")
    actions = offsite.add_subparsers(dest="offsite_command", required=True, metavar="ACTION")

    def action(name: str, **kwargs):
        command = actions.add_parser(name, **kwargs)
        remote_options(command)
        command.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
        return command

    push = action("push", help="copy the backups the remote lacks (then, with --keep-*, prune the remote)")
    archive_option(push)
    keep_options(push, "then on the remote: ")
    push.add_argument("--json", action="store_true")
    push.add_argument(
        "--with-settings",
        action="store_true",
        help="send Stash's settings (config.yml with its API key and password hash, plugins, scrapers) "
        "to a remote that is not an rclone crypt remote too (a crypt remote always gets them)",
    )
    notify_option(push)
    if ping_option:
        ping_option(push)
    verify = action("verify", help="check every backup the remote lists (sizes, hashes where the backend has them)")
    archive_option(verify)
    reading = verify.add_mutually_exclusive_group()
    reading.add_argument("--read-data", action="store_true", help="download and hash every blob and database")
    reading.add_argument("--read-data-subset", metavar="N/M", help="download and hash part N of M")
    verify.add_argument("--json", action="store_true")
    listing = action("list", help="the backups the remote holds")
    listing.add_argument("--json", action="store_true")
    prune = action("prune", help="apply keep rules on the remote and collect what no kept backup needs")
    archive_option(prune)
    keep_options(prune, "on the remote: ")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    pull = action("pull", help="bring one backup from the remote into a local archive, verified")
    pull.add_argument("name", metavar="NAME", help="the backup's name (see offsite list)")
    archive_option(pull)
    pull.add_argument("--to", type=Path, metavar="DIR", help="the local archive to pull into (default: --dest)")
    check_option(pull)


def cmd_offsite(args, report) -> int:
    from ..jobs import offsite
    from ..offsite.rclone import Rclone
    from ..offsite.remote import RemoteArchive

    rclone = Rclone(config=args.rclone_config)
    args.redactors.append(rclone.redact)
    remote = RemoteArchive(rclone, args.remote)
    action = args.offsite_command
    if action == "push":
        from ..jobs.status import recording

        archive = archive_of(args)
        # Recorded and notified like a backup: a nightly copy that fails must be seen.
        with recording(
            status_file_of(archive), "offsite", report, notifier_of(args, report), ping=args.ping or ""
        ) as run:
            result = offsite.push(archive, remote, report, policy_of(args), with_settings=args.with_settings)
            run.done(result.line(remote.display))
        if args.json:
            print_json(
                {
                    "pushed": result.pushed,
                    "skipped": [{"file": f, "reason": r} for f, r in result.skipped],
                    "blobs_sent": result.blobs_sent,
                    "bytes_sent": result.bytes_sent,
                }
            )
        return 0
    if action == "verify":
        from ..core.stored import ReadData

        read_data = None
        if args.read_data or args.read_data_subset:
            read_data = ReadData.parse(args.read_data_subset) if args.read_data_subset else ReadData()
        summary = offsite.verify(archive_of(args).folder, remote, read_data, report)
        (report.info if summary.ok else report.error)(summary.line(remote.display))
        if args.json:
            print_json({"checked": summary.checked, "failed": [{"file": f, "error": e} for f, e in summary.failed]})
        return 0 if summary.ok else 1
    if action == "list":
        from ..core.reporting import human_size

        backups = offsite.remote_backups(remote)
        if args.json:
            print_json([asdict(b) for b in backups])
        elif not backups:
            print(f"no backups on {remote.display}")
        for backup in [] if args.json else backups:
            print(
                f"{backup.created}  schema {backup.schema_version:<3}  {backup.blob_count:>7} blobs  "
                f"database {human_size(backup.snapshot.size):>10}  {backup.name}"
            )
        return 0
    if action == "prune":
        policy = policy_of(args)
        if policy.is_empty():
            report.warning("no --keep-* rule given: nothing will be removed")
        offsite.prune(archive_of(args), remote, policy, args.dry_run, report)
        return 0
    from ..core.archive import Archive
    from ..core.sqlite_check import FULL, QUICK

    target = Archive(args.to.expanduser()) if args.to else archive_of(args)
    offsite.pull(target, remote, args.name, FULL if args.full_check else QUICK, report)
    return 0


COMMANDS = {"offsite": cmd_offsite}
