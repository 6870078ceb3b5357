"""stash-backup: back up a Stash server from cron or another machine.

    stash-backup download --dest ~/stash-archive
    stash-backup prune --keep-daily 7 --keep-weekly 4 --dry-run

This module assembles the command line from its groups (one module each: backup,
archive, offsite, scheduling, plugin; shared options in options.py) and runs the
command asked for.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

# Only what parsing the command line needs is imported here; each command imports
# the rest when it runs, so that `--help`, `list` or `prune` never load the HTTP stack.
from .. import __version__
from ..core.terminal import TerminalReporter, run_command
from ..server.connection import DEFAULT_URL, redact
from . import archive, backup, offsite, plugin, scheduling

GROUPS = (backup, archive, offsite, scheduling, plugin)
COMMANDS = {name: run for group in GROUPS for name, run in group.COMMANDS.items()}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("STASH_URL", DEFAULT_URL),
        help="Stash server URL (env STASH_URL, default %(default)s)",
    )
    common.add_argument(
        "--api-key",
        default=os.environ.get("STASH_API_KEY"),
        help="Stash API key (env STASH_API_KEY; Settings > Security)",
    )
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser = argparse.ArgumentParser(prog="stash-backup", description="Verified backups of a Stash server.")
    parser.add_argument("--version", action="version", version=f"stash-backup {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    class _Commands:
        @staticmethod
        def add_parser(name, **kwargs):
            return subparsers.add_parser(name, parents=[common], **kwargs)

    for group in GROUPS:
        group.add_commands(_Commands())
    return parser


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
