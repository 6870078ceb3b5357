"""The README documents every command and every option of both commands, and every
command's --help works (as sqlite-utils' test_docs does)."""
import argparse
import re
from pathlib import Path

import pytest

from stash_backup_plugin.cli import commands
from stash_backup_plugin.offline import cli as restore_cli

from .conftest import run_cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _subcommands(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set:
    found = set()
    for action in parser._actions:
        found.update(o for o in action.option_strings if o.startswith("--") and o not in ("--help",))
    return found


BACKUP_COMMANDS = _subcommands(commands._parser())


def _command_paths() -> dict:
    """Every command, and every action of a command that has actions (`offsite push`)."""
    found = {}
    for name, parser in BACKUP_COMMANDS.items():
        actions = _subcommands(parser)
        found.update({f"{name} {action}": sub for action, sub in actions.items()} if actions else {name: parser})
    return found


ALL_COMMANDS = _command_paths()


@pytest.mark.parametrize("name", sorted(ALL_COMMANDS))
def test_every_stash_backup_command_and_option_is_in_the_readme(name):
    assert re.search(rf"stash-backup {re.escape(name)}\b", README), f"stash-backup {name} is not in the README"
    section = _reference_section(f"stash-backup {name}")
    missing = sorted(o for o in _options(ALL_COMMANDS[name]) if o not in section)
    assert not missing, f"stash-backup {name}: options missing from its README reference: {missing}"


def test_every_stash_restore_option_is_in_the_readme():
    section = _reference_section("stash-restore")
    missing = sorted(o for o in _options(restore_cli._parser()) if o not in section)
    assert not missing, f"stash-restore options missing from its README reference: {missing}"


def _reference_section(command: str) -> str:
    """The README's reference entry for a command: from its `#### command` heading to the next heading."""
    match = re.search(rf"^#### `{re.escape(command)}`\n(.*?)(?=^#)", README, re.S | re.M)
    assert match, f"the README has no reference entry '#### `{command}`'"
    return match.group(1)


@pytest.mark.parametrize("args", [["--help"]] + [[*name.split(), "--help"] for name in sorted(ALL_COMMANDS)])
def test_stash_backup_help_works(args):
    result = run_cli(*args)
    assert result.returncode == 0 and "usage: stash-backup" in result.stdout, result.stderr


def test_stash_restore_help_works():
    result = run_cli("--help", module="stash_backup_plugin.offline")
    assert result.returncode == 0 and "usage: stash-restore" in result.stdout, result.stderr
