"""`stash-backup schedule install|show|remove`: the command (the work is in cli/schedule.py,
imported when it runs)."""

from __future__ import annotations

import os
from pathlib import Path

from .options import archive_option, keep_arguments, keep_options, notify_option, ping_option, policy_of, remote_options


def add_commands(commands) -> None:
    schedule = commands.add_parser(
        "schedule", help="run download (then offsite push, prune) on a schedule: systemd timer or crontab"
    )
    schedule.add_argument("action", choices=("install", "show", "remove"))
    schedule.add_argument(
        "--every", metavar="DURATION", default="1d", help="how often, e.g. 6h, 1d, 1w (default %(default)s)"
    )
    schedule.add_argument("--at", default="03:30", metavar="HH:MM", help="time of day for daily and longer periods")
    schedule.add_argument(
        "--via",
        choices=("auto", "systemd-user", "systemd-system", "cron"),
        default="auto",
        help="auto: a running systemd (system units as root), else crontab",
    )
    schedule.add_argument(
        "--unit-dir", type=Path, help="where the systemd units go (default: systemd's user or system folder)"
    )
    schedule.add_argument(
        "--env-file",
        type=Path,
        help="where the settings go, mode 0600 "
        "(default ~/.config/stash-backup/schedule.env, /etc/stash-backup/schedule.env for system units)",
    )
    schedule.add_argument("--no-enable", action="store_true", help="write the systemd units, do not enable them")
    archive_option(schedule)
    notify_option(schedule)
    ping_option(schedule)
    keep_options(schedule, "prune after each backup: ")
    schedule.add_argument(
        "--offsite",
        action="store_true",
        help="after each backup, copy the archive off-site (offsite push to --remote); a failed copy fails the run",
    )
    remote_options(schedule)
    schedule.add_argument(
        "--before-start",
        metavar="UNIT",
        help="instead of a timer: a systemd drop-in for Stash's unit whose ExecStartPre= takes "
        "snapshot --offline before every start (needs --config)",
    )
    schedule.add_argument("--config", type=Path, help="with --before-start: Stash's config.yml")


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
    plan = _schedule_plan(args, via, unit_dir, env_file, report)
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
        raise UsageError(
            "--before-start needs --config FILE: Stash's config.yml (the unit's working folder is not "
            "this one)" + (f"; {args.config} does not exist" if args.config else "")
        )
    command = schedule.snapshot_command(args.config.expanduser().resolve(), Path(args.dest).expanduser().resolve())
    for line in schedule.install_before_start(via, unit_dir, args.before_start, command, reload=not args.no_enable):
        report.info(line)
    return 0


def _schedule_plan(args, via, unit_dir, env_file, report):
    from ..core.retention import default_schedule_policy, parse_duration
    from . import schedule

    every = parse_duration(args.every)
    hour, minute = schedule.parse_at(args.at)
    calendar = schedule.calendar_for(every, hour, minute)  # refuses an uneven period before anything is said
    policy = policy_of(args)
    if policy.is_empty() and default_schedule_policy(every):
        policy = default_schedule_policy(every)
        report.info(f"every {args.every} with no --keep-* given: each run then prunes, {policy.describe()}")
    keep = keep_arguments(policy)
    env = {
        "STASH_URL": args.url,
        "STASH_API_KEY": args.api_key or "",
        "STASH_BACKUP_ARCHIVE": str(Path(args.dest).expanduser().resolve()),
        "STASH_BACKUP_NOTIFY": " ".join(args.notify),
        "STASH_BACKUP_PING": args.ping or "",
    }
    if args.offsite:
        env.update(_offsite_env(args))
    return schedule.Plan(
        via,
        calendar,
        schedule.job_commands(keep, offsite=args.offsite),
        env_file,
        env,
        unit_dir,
        every,
    )


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
    return {
        "STASH_BACKUP_REMOTE": args.remote,
        BINARY_ENV: find_binary(),
        "RCLONE_CONFIG": str(config.expanduser().resolve()) if config else "",
    }


COMMANDS = {"schedule": cmd_schedule}
