"""Keeps docs/cli.md's help blocks equal to the commands' real `--help` (as sqlite-utils
does with cog): `python scripts/cli_docs.py` rewrites them, `--check` only compares
(tests/unit/test_docs.py runs the check). The prose around each block is written by hand.

A block is
    <!-- help: stash-backup offsite push -->
    ```text
    ...
    ```
    <!-- end help -->
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"
BLOCK = re.compile(r"<!-- help: (?P<command>[^>]+?) -->\n```text\n(?P<body>.*?)```\n<!-- end help -->", re.S)
WIDTH = "100"


def _subcommands(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parsers() -> dict:
    """Every command line a user types, with its parser: each `stash-backup` command, each
    action of a command that has actions (`offsite push`), and `stash-restore`."""
    sys.path.insert(0, str(ROOT))
    from stash_backup_plugin.cli import commands
    from stash_backup_plugin.offline import cli as restore_cli

    top = commands._parser()
    found = {"stash-backup": top}
    for name, parser in _subcommands(top).items():
        actions = _subcommands(parser)
        if actions:
            found[f"stash-backup {name}"] = parser
        found.update({f"stash-backup {name} {a}": sub for a, sub in actions.items()})
        found.setdefault(f"stash-backup {name}", parser)
    found["stash-restore"] = restore_cli._parser()
    return found


def help_text(parser: argparse.ArgumentParser) -> str:
    # argparse wraps to the terminal's width (COLUMNS) and, before Python 3.10, titled
    # the options section differently: fix both so the file does not depend on who runs it.
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        text = parser.format_help()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return text.replace("optional arguments:", "options:")


def rendered(doc: str, known: dict) -> str:
    def block(match: re.Match) -> str:
        command = match.group("command")
        if command not in known:
            raise SystemExit(f"docs/cli.md has a help block for '{command}', which is no command")
        return f"<!-- help: {command} -->\n```text\n{help_text(known[command])}```\n<!-- end help -->"

    return BLOCK.sub(block, doc)


def documented(doc: str) -> set:
    return {m.group("command") for m in BLOCK.finditer(doc)}


def main(argv: list) -> int:
    known = parsers()
    doc = DOC.read_text()
    missing = sorted(set(known) - documented(doc))
    if missing:
        print(f"docs/cli.md has no help block for: {', '.join(missing)}", file=sys.stderr)
        return 1
    new = rendered(doc, known)
    if "--check" in argv:
        if new != doc:
            print("docs/cli.md is out of date: run python scripts/cli_docs.py", file=sys.stderr)
            return 1
        return 0
    if new != doc:
        DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
