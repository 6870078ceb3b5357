"""The commands that take backups: Stash's own (backup), into the archive (download), from a
stopped Stash's files (snapshot), the live database's check (check-live) and the restore
drill (drill)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .options import (
    archive_of,
    archive_option,
    check_option,
    database_option,
    notifier_of,
    notify_option,
    open_client,
    ping_option,
    print_json,
    settings_option,
    stash_binary_option,
    status_file_of,
)


def add_commands(commands) -> None:
    backup = commands.add_parser("backup", help="make Stash write a backup into its own backup folder")
    backup.add_argument("--no-blobs", action="store_true", help="database only, even where Stash can add blobs")
    backup.add_argument(
        "--keep-last",
        type=int,
        default=0,
        metavar="N",
        help="then keep only the N newest backups this command made in Stash's backup folder",
    )
    backup.add_argument(
        "--include-others",
        action="store_true",
        help="with --keep-last: count and remove Stash's own backups of the database there too",
    )
    download = commands.add_parser("download", help="download a verified backup into the archive")
    archive_option(download)
    check_option(download)
    download.add_argument("--no-blobs", action="store_true", help="database only, without images")
    download.add_argument(
        "--blobs-path", type=Path, help="Stash's blobs folder as seen from here (default: the server's blobs_path)"
    )
    download.add_argument(
        "--no-compress",
        action="store_true",
        help="store the database's new pages uncompressed (zlib's stored blocks): faster nights on a "
        "slow CPU, about 3x their space",
    )
    download.add_argument(
        "--if-older-than", metavar="DURATION", help="skip when the newest verified backup is younger, e.g. 20h or 1d"
    )
    download.add_argument(
        "--via-server",
        action="store_true",
        help="ask Stash for its backup (VACUUM INTO) and download it, even where its live database "
        "file is readable here (default there: a consistent copy of the live file, checked to be the "
        "server's, which stores only the pages that changed)",
    )
    download.add_argument("--json", action="store_true", help="print the new archive entry as JSON")
    download.add_argument(
        "--drill-every",
        metavar="N|DURATION",
        default="",
        help="after the download, run a restore drill every N backups (e.g. 5) or when the last "
        "drill is older than DURATION (e.g. 7d)",
    )
    settings_option(download)
    stash_binary_option(download)
    notify_option(download)
    ping_option(download)
    database_option(download, ", checked read-only (PRAGMA quick_check) before each download")
    drill = commands.add_parser("drill", help="restore a backup into a scratch folder, boot Stash on it and compare")
    archive_option(drill)
    notify_option(drill)
    ping_option(drill)
    drill.add_argument("name", nargs="?", metavar="NAME", help="the backup (default: the newest verified)")
    stash_binary_option(drill)
    drill.add_argument(
        "--timeout",
        type=int,
        default=900,
        metavar="SECONDS",
        help="give up when Stash has not started, migrated and answered in this time (default %(default)s)",
    )
    drill.add_argument("--json", action="store_true")
    check_live = commands.add_parser(
        "check-live",
        help="check Stash's live database read-only (PRAGMA quick_check) while Stash runs; exit 1 when damaged",
    )
    archive_option(check_live)
    database_option(check_live, "")
    check_live.add_argument("--json", action="store_true")
    notify_option(check_live)
    ping_option(check_live)
    snapshot = commands.add_parser(
        "snapshot",
        help="a verified backup of a stopped Stash straight from its files "
        "(before an upgrade), stored as download stores",
    )
    snapshot.add_argument(
        "--offline",
        action="store_true",
        required=True,
        help="read the stopped Stash's database and blobs folder (refused while Stash runs)",
    )
    snapshot.add_argument("--config", type=Path, help="Stash's config.yml (default: found as Stash finds it)")
    snapshot.add_argument(
        "--salvage",
        action="store_true",
        help="the database is damaged: store what SQLite can recover, marked salvaged (never "
        "counted as a good backup; stash-restore --allow-salvaged restores it)",
    )
    snapshot.add_argument(
        "--stash-stopped", action="store_true", help="you confirm Stash is stopped, where this machine cannot check it"
    )
    snapshot.add_argument("--no-compress", action="store_true", help="store the database's new pages uncompressed")
    snapshot.add_argument("--json", action="store_true", help="print the new archive entry as JSON")
    settings_option(snapshot)
    archive_option(snapshot)
    check_option(snapshot)
    notify_option(snapshot)
    ping_option(snapshot)


def cmd_backup(args, report) -> int:
    from ..jobs.backup import backup_on_server

    with open_client(args) as client:
        backup_on_server(
            client, not args.no_blobs, report, keep_last=args.keep_last, include_others=args.include_others
        )
    return 0


def cmd_download(args, report) -> int:
    from ..core.retention import parse_duration
    from ..core.sqlite_check import FULL, QUICK
    from ..jobs.download import DownloadOptions, checked_download
    from ..jobs.status import recording

    options = DownloadOptions(
        include_blobs=not args.no_blobs,
        blobs_path=args.blobs_path,
        check_level=FULL if args.full_check else QUICK,
        compress=not args.no_compress,
        settings=not args.no_settings,
        live_copy=not args.via_server,
        if_older_than=parse_duration(args.if_older_than) if args.if_older_than else None,
    )
    archive = archive_of(args)
    from ..jobs.drill import check_drill_every

    drill_every = check_drill_every(args.drill_every)
    with (
        recording(status_file_of(archive), "download", report, notifier_of(args, report), ping=args.ping or "") as run,
        open_client(args) as client,
    ):
        outcome = checked_download(
            client, archive, options, status_file_of(archive), report, notifier_of(args, report), args.database
        )
        run.done(f"Archived {outcome.entry.file}" if outcome.entry else outcome.skipped_reason)
    drilled = _drill_if_due(args, archive, drill_every, report) if outcome.entry else True
    if args.json:
        print_json(asdict(outcome.entry) if outcome.entry else {"skipped": outcome.skipped_reason})
    elif outcome.entry:
        print(archive_of(args).path_of(outcome.entry))
    return 0 if drilled else 1


def cmd_check_live(args, report) -> int:
    from ..jobs.check_live import check_live, live_database

    archive = archive_of(args)
    database = args.database
    if database is None:
        with open_client(args) as client:
            database = live_database(client.server_info().database_path, None, report)
        if database is None:
            from ..core.errors import UsageError

            raise UsageError("the live database is not readable here: run on Stash's host, or pass --database PATH")
    result = check_live(
        database.expanduser(), status_file_of(archive), report, notifier_of(args, report), args.ping or ""
    )
    if args.json:
        print_json(asdict(result))
    elif not result.ok:
        report.error(result.line())
    return 0 if result.ok else 1


def cmd_snapshot(args, report) -> int:
    from ..core.sqlite_check import FULL, QUICK
    from ..jobs.snapshot import SnapshotOptions, snapshot_offline
    from ..jobs.status import recording

    options = SnapshotOptions(
        config=args.config.expanduser() if args.config else None,
        check_level=FULL if args.full_check else QUICK,
        compress=not args.no_compress,
        salvage=args.salvage,
        stash_stopped=args.stash_stopped,
        settings=not args.no_settings,
    )
    archive = archive_of(args)
    notifier = notifier_of(args, report)
    with recording(status_file_of(archive), "snapshot", report, notifier, ping=args.ping or "") as run:
        entry = snapshot_offline(archive, options, report)
        run.done(
            f"Archived {entry.file} from the stopped Stash" + (" (salvaged)" if entry.salvaged else "")
            if entry
            else "Skipped: Stash has no database yet"
        )
    if args.json:
        print_json(asdict(entry) if entry else {"skipped": "Stash has no database yet"})
    elif entry:
        print(archive.path_of(entry))
    return 0


def _drill_if_due(args, archive, every: str, report) -> bool:
    from ..jobs.drill import drill_due

    if not drill_due(archive.entries(), every):
        return True
    report.info(f"a restore drill is due (--drill-every {every})")
    return _drill(args, archive, None, report).ok


def _drill(args, archive, name, report):
    from ..jobs.drill import DEFAULT_TIMEOUT, drill, stash_on_path
    from ..jobs.status import recording

    binary = args.stash_binary or stash_on_path()
    if not binary:
        from ..core.errors import UsageError

        raise UsageError("no stash on PATH: pass --stash-binary PATH (the Stash binary you run)")
    with recording(
        status_file_of(archive), "drill", report, notifier_of(args, report), ping=getattr(args, "ping", None) or ""
    ) as run:
        result = drill(archive, name, binary.expanduser(), report, getattr(args, "timeout", DEFAULT_TIMEOUT))
        (run.done if result.ok else run.fail)(result.line())
    return result


def cmd_drill(args, report) -> int:
    result = _drill(args, archive_of(args), args.name, report)
    if args.json:
        print_json(asdict(result))
    return 0 if result.ok else 1


COMMANDS = {
    "backup": cmd_backup,
    "download": cmd_download,
    "snapshot": cmd_snapshot,
    "check-live": cmd_check_live,
    "drill": cmd_drill,
}
