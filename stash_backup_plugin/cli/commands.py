"""stash-backup: back up a Stash server from cron or another machine.

    stash-backup download --dest ~/stash-archive
    stash-backup prune --keep-daily 7 --keep-weekly 4 --dry-run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

# Only what parsing the command line needs is imported here; each command imports
# the rest when it runs, so that `--help`, `list` or `prune` never load the HTTP stack.
from .. import DEFAULT_PLUGIN_ID, __version__
from ..core.errors import StashBackupError
from ..core.terminal import TerminalReporter, run_command
from ..server.connection import DEFAULT_URL, redact

DEFAULT_ARCHIVE = "~/stash-backup-archive"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("STASH_URL", DEFAULT_URL),
                        help="Stash server URL (env STASH_URL, default %(default)s)")
    common.add_argument("--api-key", default=os.environ.get("STASH_API_KEY"),
                        help="Stash API key (env STASH_API_KEY; Settings > Security)")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser = argparse.ArgumentParser(prog="stash-backup", description="Verified backups of a Stash server.")
    parser.add_argument("--version", action="version", version=f"stash-backup {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    class _Commands:
        @staticmethod
        def add_parser(name, **kwargs):
            return subparsers.add_parser(name, parents=[common], **kwargs)

    commands = _Commands()

    def archive_option(command):
        command.add_argument("--dest", default=os.environ.get("STASH_BACKUP_ARCHIVE", DEFAULT_ARCHIVE),
                             help="archive folder (env STASH_BACKUP_ARCHIVE, default %(default)s)")

    def notify_option(command):
        command.add_argument("--notify", action="append", metavar="URL",
                             default=[u for u in os.environ.get("STASH_BACKUP_NOTIFY", "").replace(",", " ").split() if u],
                             help="where a failure (or, for status, an overdue backup) is reported: an Apprise URL "
                                  "(ntfy://, tgram://, mailto://, json://, ...) or an http(s):// webhook; repeatable "
                                  "(env STASH_BACKUP_NOTIFY, space-separated)")

    def ping_option(command):
        command.add_argument("--ping", metavar="URL", default=os.environ.get("STASH_BACKUP_PING") or None,
                             help="an outside monitor's URL (healthchecks.io style): URL/start when the job starts, "
                                  "URL on success, URL/fail on failure; undeliverable pings are warnings "
                                  "(env STASH_BACKUP_PING)")

    def database_option(command, what: str):
        command.add_argument("--database", type=Path, metavar="PATH",
                             help=f"Stash's live database file{what} (default: the path in the server's configuration, "
                                  "when readable here)")

    def stash_binary_option(command):
        command.add_argument("--stash-binary", type=Path, metavar="PATH",
                             help="the Stash binary the drill starts (default: stash on PATH)")

    def check_option(command):
        command.add_argument("--full-check", action="store_true",
                             help="PRAGMA integrity_check instead of quick_check (much slower on big libraries)")

    backup = commands.add_parser("backup", help="make Stash write a backup into its own backup folder")
    backup.add_argument("--no-blobs", action="store_true", help="database only, even where Stash can add blobs")
    backup.add_argument("--keep-last", type=int, default=0, metavar="N",
                        help="then keep only the N newest backups this command made in Stash's backup folder")
    backup.add_argument("--include-others", action="store_true",
                        help="with --keep-last: count and remove Stash's own backups of the database there too")

    download = commands.add_parser("download", help="download a verified backup into the archive")
    archive_option(download)
    check_option(download)
    download.add_argument("--no-blobs", action="store_true", help="database only, without images")
    download.add_argument("--blobs-path", type=Path,
                          help="Stash's blobs folder as seen from here (default: the server's blobs_path)")
    download.add_argument("--no-compress", action="store_true",
                          help="store the database snapshot uncompressed (still a .gz file): faster nights on a slow "
                               "CPU, about 3x its space")
    download.add_argument("--if-older-than", metavar="DURATION",
                          help="skip when the newest verified backup is younger, e.g. 20h or 1d")
    download.add_argument("--json", action="store_true", help="print the new archive entry as JSON")
    download.add_argument("--drill-every", metavar="N|DURATION", default="",
                          help="after the download, run a restore drill every N backups (e.g. 5) or when the last "
                               "drill is older than DURATION (e.g. 7d)")
    stash_binary_option(download)
    notify_option(download)
    ping_option(download)
    database_option(download, ", checked read-only (PRAGMA quick_check) before each download")

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
    reading.add_argument("--read-data-subset", metavar="N/M",
                         help="re-hash part N of M of the blobs; N = 1..M on M nights reads them all")
    notify_option(verify)
    ping_option(verify)

    drill = commands.add_parser("drill", help="restore a backup into a scratch folder, boot Stash on it and compare")
    archive_option(drill)
    notify_option(drill)
    ping_option(drill)
    drill.add_argument("name", nargs="?", metavar="NAME", help="the backup (default: the newest verified)")
    stash_binary_option(drill)
    drill.add_argument("--timeout", type=int, default=900, metavar="SECONDS",
                       help="give up when Stash has not started, migrated and answered in this time (default %(default)s)")
    drill.add_argument("--json", action="store_true")

    prune = commands.add_parser("prune", help="apply a retention policy to the archive")
    archive_option(prune)
    _keep_options(prune, "")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    prune.add_argument("--json", action="store_true")
    notify_option(prune)
    ping_option(prune)

    status = commands.add_parser("status", help="the last backup's age and each job's last outcome; exit 1 when overdue")
    archive_option(status)
    status.add_argument("--max-age", metavar="DURATION", default="24h",
                        help="overdue when the newest verified backup is older (default %(default)s)")
    status.add_argument("--json", action="store_true")
    notify_option(status)

    schedule = commands.add_parser("schedule", help="run download (then offsite push, prune) on a schedule: "
                                                    "systemd timer or crontab")
    schedule.add_argument("action", choices=("install", "show", "remove"))
    schedule.add_argument("--every", metavar="DURATION", default="1d", help="how often, e.g. 6h, 1d, 1w (default %(default)s)")
    schedule.add_argument("--at", default="03:30", metavar="HH:MM", help="time of day for daily and longer periods")
    schedule.add_argument("--via", choices=("auto", "systemd-user", "systemd-system", "cron"), default="auto",
                          help="auto: a running systemd (system units as root), else crontab")
    schedule.add_argument("--unit-dir", type=Path, help="where the systemd units go (default: systemd's user or system folder)")
    schedule.add_argument("--env-file", type=Path, help="where the settings go, mode 0600 "
                          "(default ~/.config/stash-backup/schedule.env, /etc/stash-backup/schedule.env for system units)")
    schedule.add_argument("--no-enable", action="store_true", help="write the systemd units, do not enable them")
    archive_option(schedule)
    notify_option(schedule)
    ping_option(schedule)
    _keep_options(schedule, "prune after each backup: ")
    schedule.add_argument("--offsite", action="store_true",
                          help="after each backup, copy the archive off-site (offsite push to --remote); a failed "
                               "copy fails the run")
    _remote_options(schedule)
    schedule.add_argument("--before-start", metavar="UNIT",
                          help="instead of a timer: a systemd drop-in for Stash's unit whose ExecStartPre= takes "
                               "snapshot --offline before every start (needs --config)")
    schedule.add_argument("--config", type=Path, help="with --before-start: Stash's config.yml")

    export = commands.add_parser("export", help="write one backup as a self-contained zip (Stash v0.31's layout)")
    archive_option(export)
    export.add_argument("name", metavar="NAME", help="the backup's name (see list)")
    export.add_argument("--output", type=Path, required=True, metavar="FILE.zip", help="the zip to write")

    migrate = commands.add_parser("migrate", help="fold the older per-backup zips into the store (dry run by default)")
    archive_option(migrate)
    check_option(migrate)
    migrate.add_argument("--apply", action="store_true", help="do it (without it: only show the plan)")
    migrate.add_argument("--json", action="store_true")

    _offsite_parser(commands, archive_option, check_option, notify_option, ping_option)

    check_live = commands.add_parser("check-live", help="check Stash's live database read-only (PRAGMA quick_check) "
                                                        "while Stash runs; exit 1 when damaged")
    archive_option(check_live)
    database_option(check_live, "")
    check_live.add_argument("--json", action="store_true")
    notify_option(check_live)
    ping_option(check_live)
    _snapshot_parser(commands, archive_option, check_option, notify_option)

    install = commands.add_parser("install-plugin", help="install the plugin into Stash's plugins folder")
    install.add_argument("--plugins-dir", type=Path, required=True, help="Stash's plugins folder")
    install.add_argument("--id", default=DEFAULT_PLUGIN_ID, help="plugin ID (the manifest's name)")

    package = commands.add_parser("package", help="build a plugin-manager source: <id>.zip and index.yml")
    package.add_argument("--output", type=Path, default=Path("dist/plugin-source"))
    package.add_argument("--id", default=DEFAULT_PLUGIN_ID)
    return parser


def _keep_options(command, where: str) -> None:
    """--keep-last N … --keep-within DURATION, from the one table of keep rules."""
    from ..core.keep_rules import KEEP_RULES
    for rule in KEEP_RULES:
        text = where + rule.description[:1].lower() + rule.description[1:].rstrip(".")
        if rule.is_count:
            command.add_argument(rule.option, type=int, default=0, metavar="N", help=text)
        else:
            command.add_argument(rule.option, metavar="DURATION", help=text)


def _remote_options(command) -> None:
    command.add_argument("--remote", default=os.environ.get("STASH_BACKUP_REMOTE"), metavar="REMOTE:PATH",
                         help="the rclone remote and folder (env STASH_BACKUP_REMOTE), e.g. s3:bucket/stash")
    command.add_argument("--rclone-config", type=Path, metavar="FILE",
                         help="rclone's config file (default: rclone's own, or env RCLONE_CONFIG)")


def _offsite_parser(commands, archive_option, check_option, notify_option, ping_option=None) -> None:
    offsite = commands.add_parser("offsite", help="copies of the archive on a remote (S3, SFTP, any rclone remote)")
    actions = offsite.add_subparsers(dest="offsite_command", required=True, metavar="ACTION")

    def action(name: str, **kwargs):
        command = actions.add_parser(name, **kwargs)
        _remote_options(command)
        command.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
        return command

    push = action("push", help="copy the backups the remote lacks (then, with --keep-*, prune the remote)")
    archive_option(push)
    _keep_options(push, "then on the remote: ")
    push.add_argument("--json", action="store_true")
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
    _keep_options(prune, "on the remote: ")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    pull = action("pull", help="bring one backup from the remote into a local archive, verified")
    pull.add_argument("name", metavar="NAME", help="the backup's name (see offsite list)")
    archive_option(pull)
    pull.add_argument("--to", type=Path, metavar="DIR", help="the local archive to pull into (default: --dest)")
    check_option(pull)


def _snapshot_parser(commands, archive_option, check_option, notify_option) -> None:
    snapshot = commands.add_parser("snapshot", help="a verified backup of a stopped Stash straight from its files "
                                                    "(before an upgrade), stored as download stores")
    snapshot.add_argument("--offline", action="store_true", required=True,
                          help="read the stopped Stash's database and blobs folder (refused while Stash runs)")
    snapshot.add_argument("--config", type=Path, help="Stash's config.yml (default: found as Stash finds it)")
    snapshot.add_argument("--salvage", action="store_true",
                          help="the database is damaged: store what SQLite can recover, marked salvaged (never "
                               "counted as a good backup; stash-restore --allow-salvaged restores it)")
    snapshot.add_argument("--stash-stopped", action="store_true",
                          help="you confirm Stash is stopped, where this machine cannot check it")
    snapshot.add_argument("--no-compress", action="store_true", help="store the database snapshot uncompressed")
    snapshot.add_argument("--json", action="store_true", help="print the new archive entry as JSON")
    archive_option(snapshot)
    check_option(snapshot)
    notify_option(snapshot)


def _client(args):
    from ..server.connection import Connection, normalise_url
    from ..server.graphql_client import StashClient
    return StashClient(Connection(normalise_url(args.url), api_key=args.api_key or None))


def _archive(args):
    from ..core.archive import Archive
    return Archive(Path(args.dest).expanduser())


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_backup(args, report) -> int:
    from ..jobs.backup import backup_on_server
    with _client(args) as client:
        backup_on_server(client, not args.no_blobs, report, keep_last=args.keep_last,
                              include_others=args.include_others)
    return 0


def cmd_download(args, report) -> int:
    from ..jobs.download import DownloadOptions
    from ..jobs.status import recording
    from ..core.retention import parse_duration
    from ..core.sqlite_check import FULL, QUICK
    options = DownloadOptions(
        include_blobs=not args.no_blobs, blobs_path=args.blobs_path,
        check_level=FULL if args.full_check else QUICK, compress=not args.no_compress,
        if_older_than=parse_duration(args.if_older_than) if args.if_older_than else None)
    archive = _archive(args)
    from ..jobs.drill import check_drill_every
    drill_every = check_drill_every(args.drill_every)
    with recording(_status_file(archive), "download", report, _notifier(args, report), ping=args.ping or "") as run, \
            _client(args) as client:
        outcome = _checked_download(args, client, archive, options, report)
        run.done(f"Archived {outcome.entry.file}" if outcome.entry else outcome.skipped_reason)
    drilled = _drill_if_due(args, archive, drill_every, report) if outcome.entry else True
    if args.json:
        _print_json(asdict(outcome.entry) if outcome.entry else {"skipped": outcome.skipped_reason})
    elif outcome.entry:
        print(_archive(args).path_of(outcome.entry))
    return 0 if drilled else 1


def _checked_download(args, client, archive, options, report):
    """The live database's check, then the download, watched for Stash's own backup
    failing on a malformed database (jobs/check_live)."""
    from ..jobs.check_live import check_before_download, download_watch, healthy_backup_made, live_database
    from ..jobs.download import download_to_archive
    status_file = _status_file(archive)
    database = live_database(client.server_info().database_path, args.database, report)
    check_before_download(database, status_file, report, _notifier(args, report))
    with download_watch(status_file, report):
        outcome = download_to_archive(client, archive, options, report)
    if outcome.entry:
        healthy_backup_made(status_file, report)
    return outcome


def cmd_check_live(args, report) -> int:
    from ..jobs.check_live import check_live, live_database
    archive = _archive(args)
    database = args.database
    if database is None:
        with _client(args) as client:
            database = live_database(client.server_info().database_path, None, report)
        if database is None:
            from ..core.errors import UsageError
            raise UsageError("the live database is not readable here: run on Stash's host, or pass --database PATH")
    result = check_live(database.expanduser(), _status_file(archive), report, _notifier(args, report),
                        args.ping or "")
    if args.json:
        _print_json(asdict(result))
    elif not result.ok:
        report.error(result.line())
    return 0 if result.ok else 1


def _drill_if_due(args, archive, every: str, report) -> bool:
    from ..jobs.drill import drill_due
    if not drill_due(archive.entries(), every):
        return True
    report.info(f"a restore drill is due (--drill-every {every})")
    return _drill(args, archive, None, report).ok


def _drill(args, archive, name, report):
    from ..jobs.status import recording
    from ..jobs.drill import DEFAULT_TIMEOUT, drill, stash_on_path
    binary = args.stash_binary or stash_on_path()
    if not binary:
        from ..core.errors import UsageError
        raise UsageError("no stash on PATH: pass --stash-binary PATH (the Stash binary you run)")
    with recording(_status_file(archive), "drill", report, _notifier(args, report),
                   ping=getattr(args, "ping", None) or "") as run:
        result = drill(archive, name, binary.expanduser(), report, getattr(args, "timeout", DEFAULT_TIMEOUT))
        (run.done if result.ok else run.fail)(result.line())
    return result


def cmd_drill(args, report) -> int:
    result = _drill(args, _archive(args), args.name, report)
    if args.json:
        _print_json(asdict(result))
    return 0 if result.ok else 1


def cmd_list(args, report) -> int:
    from ..core.reporting import human_size
    archive = _archive(args)
    entries = archive.entries()
    for problem in archive.manifest_problems:
        report.warning(problem)
    if args.json:
        _print_json([asdict(e) for e in entries])
        return 0
    if not entries:
        print(f"no backups in {archive.folder}")
    for entry in entries:
        state = "verified" if entry.verified_ok else ("BAD" if entry.verified_at else "unverified")
        state = "SALVAGED" if entry.salvaged else state
        tag = f"  (pre-upgrade {entry.pre_upgrade})" if entry.pre_upgrade else ""
        drilled = ("booted" if entry.drill.get("ok") else "DRILL-FAILED") if entry.drill.get("at") else "-"
        blobs = f"{entry.blob_count} blobs" if entry.includes_blobs else "database only"
        own = entry.new_bytes if entry.is_stored else entry.size
        print(f"{entry.created}  schema {entry.schema_version:<3}  {entry.kind:<6}  {blobs:<14}  "
              f"new {human_size(own):>10}  {state:<10}  drill {drilled:<12}  {entry.file}{tag}")
    usage = archive.usage()
    print(f"archive total {human_size(usage.total)}: {usage.blobs} blob(s) {human_size(usage.blob_bytes)}, "
          f"database snapshots {human_size(usage.snapshot_bytes)}, records {human_size(usage.record_bytes)}"
          + (f", older per-backup files {human_size(usage.old_bytes)}" if usage.old_bytes else ""))
    return 0


def cmd_verify(args, report) -> int:
    from ..jobs.status import recording
    from ..jobs.verify import verify_archive
    from ..core.errors import VerificationError
    from ..core.sqlite_check import FULL, QUICK
    from ..core.verify import require_blobs, verify_backup
    level = FULL if args.full_check else QUICK
    if args.paths:
        results, failed = [], 0
        for path in args.paths:
            try:
                verified = verify_backup(path, level, progress=report.bytes_progress(f"verifying {path.name}"))
                require_blobs(verified)
                results.append({"path": str(path), "ok": True, "kind": verified.kind,
                                "schema_version": verified.schema_version, "blob_count": verified.blob_count,
                                "sha256": verified.sha256})
                report.info(f"ok  {path}: schema {verified.schema_version}, {verified.blob_count} blob(s)")
            except VerificationError as error:
                failed += 1
                results.append({"path": str(path), "ok": False, "error": str(error)})
                report.error(f"BAD {path}: {error}")
        if args.json:
            _print_json(results)
        return 1 if failed else 0
    read_data = None
    if args.read_data or args.read_data_subset:
        from ..core.stored import ReadData
        read_data = ReadData.parse(args.read_data_subset) if args.read_data_subset else ReadData()
    archive = _archive(args)
    with recording(_status_file(archive), "verify", report, _notifier(args, report), ping=args.ping or "") as run:
        summary = verify_archive(archive, level, report, read_data)
        (report.info if summary.ok else report.error)(summary.line())
        (run.done if summary.ok else run.fail)(summary.line())
    if args.json:
        _print_json({"checked": summary.checked, "failed": [{"file": f, "error": e} for f, e in summary.failed],
                     "adopted": summary.adopted})
    return 0 if summary.ok else 1


def cmd_prune(args, report) -> int:
    from ..jobs.retention import apply_retention, retention_summary
    from ..jobs.status import recording
    policy = _policy(args)
    if policy.is_empty():
        report.warning("no --keep-* rule given: nothing will be removed")
    archive = _archive(args)
    with recording(_status_file(archive), "retention", report, _notifier(args, report), ping=args.ping or "") as run:
        result = apply_retention(archive, policy, args.dry_run, report)
        run.done(retention_summary(policy, result, args.dry_run))
    if args.json:  # one object per backup, as before; the space freed is in the summary line
        _print_json([{"file": d.item.file, "keep": d.keep, "failed_verification": d.failed, "reasons": d.reasons}
                     for d in result.decisions])
    return 0


def cmd_export(args, report) -> int:
    from ..jobs.export import export_backup
    path = export_backup(_archive(args), args.name, args.output.expanduser(), report)
    print(path)
    return 0


def cmd_migrate(args, report) -> int:
    from ..jobs.migrate import migrate_archive
    from ..core.sqlite_check import FULL, QUICK
    outcome = migrate_archive(_archive(args), dry_run=not args.apply,
                                   level=FULL if args.full_check else QUICK, report=report)
    if args.json:
        _print_json([{"file": s.old.file, "action": s.action, "record": s.record_name, "reason": s.reason}
                     for s in outcome.steps])
    return 0 if outcome.ok else 1


def _policy(args):
    """The --keep-* options (_keep_options) as a policy."""
    from ..core.keep_rules import COUNT_RULES
    from ..core.retention import Policy
    return Policy.of({rule.name: getattr(args, f"keep_{rule.name}") for rule in COUNT_RULES}, args.keep_within)


def _keep_arguments(policy) -> list[str]:
    """The --keep-* options that give `policy` again (the scheduled prune's)."""
    from ..core.keep_rules import COUNT_RULES, WITHIN_RULE
    keep = [f"{rule.option}={getattr(policy, rule.name)}" for rule in COUNT_RULES if getattr(policy, rule.name)]
    return keep + ([f"{WITHIN_RULE.option}={policy.within}"] if policy.within else [])


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
        archive = _archive(args)
        # Recorded and notified like a backup: a nightly copy that fails must be seen.
        with recording(_status_file(archive), "offsite", report, _notifier(args, report),
                       ping=args.ping or "") as run:
            result = offsite.push(archive, remote, report, _policy(args))
            run.done(result.line(remote.display))
        if args.json:
            _print_json({"pushed": result.pushed, "skipped": [{"file": f, "reason": r} for f, r in result.skipped],
                         "blobs_sent": result.blobs_sent, "bytes_sent": result.bytes_sent})
        return 0
    if action == "verify":
        from ..core.stored import ReadData
        read_data = None
        if args.read_data or args.read_data_subset:
            read_data = ReadData.parse(args.read_data_subset) if args.read_data_subset else ReadData()
        summary = offsite.verify(_archive(args).folder, remote, read_data, report)
        (report.info if summary.ok else report.error)(summary.line(remote.display))
        if args.json:
            _print_json({"checked": summary.checked, "failed": [{"file": f, "error": e} for f, e in summary.failed]})
        return 0 if summary.ok else 1
    if action == "list":
        from ..core.reporting import human_size
        backups = offsite.remote_backups(remote)
        if args.json:
            _print_json([asdict(b) for b in backups])
        elif not backups:
            print(f"no backups on {remote.display}")
        for backup in [] if args.json else backups:
            print(f"{backup.created}  schema {backup.schema_version:<3}  {backup.blob_count:>7} blobs  "
                  f"database {human_size(backup.snapshot.size):>10}  {backup.name}")
        return 0
    if action == "prune":
        policy = _policy(args)
        if policy.is_empty():
            report.warning("no --keep-* rule given: nothing will be removed")
        offsite.prune(_archive(args), remote, policy, args.dry_run, report)
        return 0
    from ..core.archive import Archive
    from ..core.sqlite_check import FULL, QUICK
    target = Archive(args.to.expanduser()) if args.to else _archive(args)
    offsite.pull(target, remote, args.name, FULL if args.full_check else QUICK, report)
    return 0


def _status_file(archive):
    """The archive's status.json; where the archive cannot be written, the user's state folder."""
    from ..core.status import StatusFile
    import hashlib
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "stash-backup"
    key = hashlib.sha256(str(archive.folder.resolve()).encode()).hexdigest()[:16]  # one per archive
    return StatusFile(archive.folder, fallback=state / key)


def _notifier(args, report):
    """Deliver notices to --notify URLs; None when there are none."""
    if not args.notify:
        return None
    from ..server.notify import send
    return lambda notice: send(args.notify, notice, report)


def cmd_status(args, report) -> int:
    from ..jobs.status import check_overdue, overview
    from ..core.retention import parse_duration
    max_age = parse_duration(args.max_age)
    archive = _archive(args)
    overdue = check_overdue(archive, _status_file(archive), max_age, report, _notifier(args, report))
    view = overview(archive, _status_file(archive), max_age)
    if args.json:
        _print_json(view)
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


def cmd_schedule(args, report) -> int:
    from . import schedule
    via = schedule.choose_via(args.via)
    unit_dir = (args.unit_dir or schedule.default_unit_dir(via)).expanduser()
    if args.before_start:
        return _schedule_before_start(args, via, unit_dir, report)
    env_file = (args.env_file or schedule.default_env_file(via)).expanduser()
    if args.action == "show":
        lines = schedule.show(via, unit_dir)
        print("\n".join(lines) if lines else f"no stash-backup schedule ({via})")
        return 0
    if args.action == "remove":
        lines = schedule.remove(via, unit_dir, env_file)
        report.info("; ".join(lines) if lines else f"no stash-backup schedule to remove ({via})")
        return 0
    plan = _schedule_plan(args, via, unit_dir, env_file)
    for line in schedule.install(plan, enable=not args.no_enable):
        report.info(line)
    return 0


def _schedule_before_start(args, via, unit_dir, report) -> int:
    from ..core.errors import UsageError
    from . import schedule
    if args.action == "show":
        path = schedule.drop_in_path(unit_dir, args.before_start)
        print(f"{path}:\n{path.read_text().rstrip()}" if path.is_file() else f"no drop-in at {path}")
        return 0
    if args.action == "remove":
        lines = schedule.remove_before_start(via, unit_dir, args.before_start)
        report.info("; ".join(lines) if lines else "no stash-backup drop-in to remove")
        return 0
    if not args.config or not args.config.expanduser().is_file():
        raise UsageError("--before-start needs --config FILE: Stash's config.yml (the unit's working folder is not "
                         "this one)" + (f"; {args.config} does not exist" if args.config else ""))
    command = schedule.snapshot_command(args.config.expanduser().resolve(), Path(args.dest).expanduser().resolve())
    for line in schedule.install_before_start(via, unit_dir, args.before_start, command, reload=not args.no_enable):
        report.info(line)
    return 0


def _schedule_plan(args, via, unit_dir, env_file):
    from ..core.retention import parse_duration
    from . import schedule
    every = parse_duration(args.every)
    hour, minute = schedule.parse_at(args.at)
    keep = _keep_arguments(_policy(args))
    env = {"STASH_URL": args.url, "STASH_API_KEY": args.api_key or "",
           "STASH_BACKUP_ARCHIVE": str(Path(args.dest).expanduser().resolve()),
           "STASH_BACKUP_NOTIFY": " ".join(args.notify), "STASH_BACKUP_PING": args.ping or ""}
    if args.offsite:
        env.update(_offsite_env(args))
    return schedule.Plan(via, schedule.calendar_for(every, hour, minute),
                         schedule.job_commands(keep, offsite=args.offsite), env_file, env, unit_dir, every)


def _offsite_env(args) -> dict:
    """What the scheduled `offsite push` needs, pinned now: cron's PATH and a system
    unit's missing HOME would otherwise hide the rclone and the config found here."""
    from ..core.errors import UsageError
    from ..offsite.rclone import BINARY_ENV, find_binary
    if not args.remote:
        raise UsageError("--offsite needs --remote REMOTE:PATH (or env STASH_BACKUP_REMOTE), e.g. s3:bucket/stash")
    config = args.rclone_config or (Path(os.environ["RCLONE_CONFIG"]) if os.environ.get("RCLONE_CONFIG") else None)
    if config and not config.expanduser().is_file():
        raise UsageError(f"--rclone-config {config}: no such file")
    return {"STASH_BACKUP_REMOTE": args.remote, BINARY_ENV: find_binary(),
            "RCLONE_CONFIG": str(config.expanduser().resolve()) if config else ""}


def cmd_install_plugin(args, report) -> int:
    from .install import install_plugin
    target = install_plugin(args.plugins_dir.expanduser(), args.id)
    report.info(f"installed the plugin into {target}")
    try:
        with _client(args) as client:
            client.reload_plugins()
        report.info(f"Stash at {args.url} reloaded its plugins: see Settings > Tasks")
    except StashBackupError as error:
        report.info(f"Stash was not reloaded ({error}); use Settings > Plugins > Reload plugins")
    return 0


def cmd_package(args, report) -> int:
    from .install import build_package
    zip_path, index_path = build_package(args.output, args.id)
    # Stash takes a source as a URL: a plain path is refused ("unsupported protocol scheme").
    report.info(f"built {zip_path} and {index_path}: in Stash, Settings > Plugins > Available Plugins > Add Source "
                f"with the URL {index_path.resolve().as_uri()}")
    return 0


COMMANDS = {"backup": cmd_backup, "download": cmd_download, "list": cmd_list, "verify": cmd_verify,
            "prune": cmd_prune, "drill": cmd_drill, "export": cmd_export, "migrate": cmd_migrate, "status": cmd_status,
            "schedule": cmd_schedule, "offsite": cmd_offsite, "install-plugin": cmd_install_plugin,
            "package": cmd_package, "check-live": cmd_check_live}


def cmd_snapshot(args, report) -> int:
    from ..core.sqlite_check import FULL, QUICK
    from ..jobs.snapshot import SnapshotOptions, snapshot_offline
    from ..jobs.status import recording
    options = SnapshotOptions(config=args.config.expanduser() if args.config else None,
                              check_level=FULL if args.full_check else QUICK, compress=not args.no_compress,
                              salvage=args.salvage, stash_stopped=args.stash_stopped)
    archive = _archive(args)
    with recording(_status_file(archive), "snapshot", report, _notifier(args, report)) as run:
        entry = snapshot_offline(archive, options, report)
        run.done(f"Archived {entry.file} from the stopped Stash" + (" (salvaged)" if entry.salvaged else "")
                 if entry else "Skipped: Stash has no database yet")
    if args.json:
        _print_json(asdict(entry) if entry else {"skipped": "Stash has no database yet"})
    elif entry:
        print(archive.path_of(entry))
    return 0


COMMANDS["snapshot"] = cmd_snapshot


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    secrets = [args.api_key] if args.api_key else []
    secrets += getattr(args, "notify", None) or []  # notification URLs carry tokens
    secrets += [args.ping] if getattr(args, "ping", None) else []  # a ping URL's UUID is its key
    args.redactors = []  # a remote's secrets, once its command knows them

    def hide(text: str) -> str:
        text = redact(text, secrets)
        for more in args.redactors:
            text = more(text)
        return text
    report = TerminalReporter(quiet=args.quiet, redact=hide)
    return run_command(report, lambda: COMMANDS[args.command](args, report), redact=hide)


if __name__ == "__main__":
    sys.exit(main())
