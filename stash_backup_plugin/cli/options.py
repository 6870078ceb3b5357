"""What the commands share: option declarations (each declared once, here) and the
small helpers every command uses (the server, the archive, status.json, notices, keep
rules). Parsing imports only this and the standard library: each command imports its
job when it runs, so `--help`, `list` or `prune` never load the HTTP stack."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_ARCHIVE = "~/stash-backup-archive"


def archive_option(command):
    command.add_argument(
        "--dest",
        default=os.environ.get("STASH_BACKUP_ARCHIVE", DEFAULT_ARCHIVE),
        help="archive folder (env STASH_BACKUP_ARCHIVE, default %(default)s)",
    )


def notify_option(command):
    command.add_argument(
        "--notify",
        action="append",
        metavar="URL",
        default=[u for u in os.environ.get("STASH_BACKUP_NOTIFY", "").replace(",", " ").split() if u],
        help="where a failure (or, for status, an overdue backup) is reported: an Apprise URL "
        "(ntfy://, tgram://, mailto://, json://, ...) or an http(s):// webhook; repeatable "
        "(env STASH_BACKUP_NOTIFY, space-separated)",
    )


def ping_option(command):
    command.add_argument(
        "--ping",
        metavar="URL",
        default=os.environ.get("STASH_BACKUP_PING") or None,
        help="an outside monitor's URL (healthchecks.io style): URL/start when the job starts, "
        "URL on success, URL/fail on failure; undeliverable pings are warnings "
        "(env STASH_BACKUP_PING)",
    )


def database_option(command, what: str):
    command.add_argument(
        "--database",
        type=Path,
        metavar="PATH",
        help=f"Stash's live database file{what} (default: the path in the server's configuration, when readable here)",
    )


def settings_option(command):
    command.add_argument(
        "--no-settings",
        action="store_true",
        help="leave Stash's settings (config.yml, plugins, scrapers, custom CSS/JS) out of the backup",
    )


def stash_binary_option(command):
    command.add_argument(
        "--stash-binary", type=Path, metavar="PATH", help="the Stash binary the drill starts (default: stash on PATH)"
    )


def check_option(command):
    command.add_argument(
        "--full-check",
        action="store_true",
        help="PRAGMA integrity_check instead of quick_check (much slower on big libraries)",
    )


def keep_options(command, where: str) -> None:
    """--keep-last N … --keep-within DURATION, from the one table of keep rules."""
    from ..core.keep_rules import KEEP_RULES

    for rule in KEEP_RULES:
        text = where + rule.description[:1].lower() + rule.description[1:].rstrip(".")
        if rule.is_count:
            command.add_argument(rule.option, type=int, default=0, metavar="N", help=text)
        else:
            command.add_argument(rule.option, metavar="DURATION", help=text)


def remote_options(command) -> None:
    command.add_argument(
        "--remote",
        default=os.environ.get("STASH_BACKUP_REMOTE"),
        metavar="REMOTE:PATH",
        help="the rclone remote and folder (env STASH_BACKUP_REMOTE), e.g. s3:bucket/stash",
    )
    command.add_argument(
        "--rclone-config",
        type=Path,
        metavar="FILE",
        help="rclone's config file (default: rclone's own, or env RCLONE_CONFIG)",
    )


def open_client(args):
    from ..server.connection import Connection, normalise_url
    from ..server.graphql_client import StashClient

    return StashClient(Connection(normalise_url(args.url), api_key=args.api_key or None))


def archive_of(args):
    from ..core.archive import Archive

    return Archive(Path(args.dest).expanduser())


def print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def status_file_of(archive):
    """The archive's status.json; where the archive cannot be written, the user's state folder."""
    import hashlib

    from ..core.status import StatusFile

    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "stash-backup"
    key = hashlib.sha256(str(archive.folder.resolve()).encode()).hexdigest()[:16]  # one per archive
    return StatusFile(archive.folder, fallback=state / key)


def notifier_of(args, report):
    """Deliver notices to --notify URLs; None when there are none."""
    if not args.notify:
        return None
    from ..server.notify import send

    return lambda notice: send(args.notify, notice, report)


def policy_of(args):
    """The --keep-* options (_keep_options) as a policy."""
    from ..core.keep_rules import COUNT_RULES
    from ..core.retention import Policy

    return Policy.of({rule.name: getattr(args, f"keep_{rule.name}") for rule in COUNT_RULES}, args.keep_within)


def keep_arguments(policy) -> list[str]:
    """The --keep-* options that give `policy` again (the scheduled prune's)."""
    from ..core.keep_rules import COUNT_RULES, WITHIN_RULE

    keep = [f"{rule.option}={getattr(policy, rule.name)}" for rule in COUNT_RULES if getattr(policy, rule.name)]
    return keep + ([f"{WITHIN_RULE.option}={policy.within}"] if policy.within else [])
