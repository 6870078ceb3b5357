"""The documentation keeps up with the code: docs/cli.md holds every command's real
`--help` (scripts/cli_docs.py writes it, as sqlite-utils does with cog), every command's
--help works, docs/architecture.md names every module the package has, and the README
stays an onboarding page whose links resolve."""

import importlib.util
import re

import pytest

from tests.support.harness import REPO, run_cli

README = (REPO / "README.md").read_text()


def _cli_docs():
    spec = importlib.util.spec_from_file_location("cli_docs", REPO / "scripts" / "cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI_DOCS = _cli_docs()
COMMANDS = CLI_DOCS.parsers()


def test_the_cli_reference_is_every_commands_real_help():
    doc = CLI_DOCS.DOC.read_text()
    assert CLI_DOCS.documented(doc) == set(COMMANDS), "run: python scripts/cli_docs.py"
    assert CLI_DOCS.rendered(doc, COMMANDS) == doc, "docs/cli.md is out of date: run python scripts/cli_docs.py"


def test_the_cli_reference_check_catches_a_stale_block():
    doc = CLI_DOCS.DOC.read_text()
    start = doc.index("<!-- help: stash-backup prune -->")
    stale = doc[:start] + doc[start:].replace("--dry-run", "--dry-walk", 1)
    assert CLI_DOCS.rendered(stale, COMMANDS) == doc


@pytest.mark.parametrize(
    "args",
    [["--help"]] + [[*name.split()[1:], "--help"] for name in sorted(COMMANDS) if name.startswith("stash-backup ")],
)
def test_stash_backup_help_works(args):
    result = run_cli(*args)
    assert result.returncode == 0 and "usage: stash-backup" in result.stdout, result.stderr


def test_stash_restore_help_works():
    result = run_cli("--help", module="stash_backup_plugin.offline")
    assert result.returncode == 0 and "usage: stash-restore" in result.stdout, result.stderr


def _listed_modules(text: str) -> set:
    """The files docs/architecture.md's tree names under stash_backup_plugin/ (two spaces a level)."""
    block = re.search(r"```\n(stash_backup_plugin/.*?)```", text, re.S).group(1)
    stack, found = [], set()
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if not match:
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        stack = stack[:depth]
        if name.endswith("/"):
            stack.append(name)
        else:
            found.add("".join(stack) + name)
    return {f for f in found if f.startswith("stash_backup_plugin/")}


def _package_modules() -> set:
    package = REPO / "stash_backup_plugin"
    return {
        str(p.relative_to(REPO))
        for p in package.rglob("*")
        if p.is_file()
        and p.suffix in (".py", ".js", ".css", ".in")
        and "__pycache__" not in p.parts
        and p.name not in ("__init__.py", "__main__.py")
    }


def test_the_architecture_page_names_every_module_and_no_other():
    listed = _listed_modules((REPO / "docs" / "architecture.md").read_text())
    actual = _package_modules()
    assert not actual - listed, f"modules missing from docs/architecture.md: {sorted(actual - listed)}"
    assert not listed - actual, f"docs/architecture.md names modules that do not exist: {sorted(listed - actual)}"


def test_the_readme_is_an_onboarding_page_whose_links_resolve():
    assert len(README.splitlines()) <= 250
    for folder, text in [(REPO, README)] + [(REPO / "docs", p.read_text()) for p in (REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (folder / target).exists(), f"a link to {target} that does not exist"
    for command in ("./scripts/demo", "./scripts/test"):
        assert command in README


# Other tests ask which options a command takes (tests/unit/test_retention.py).
ALL_COMMANDS = {
    name[len("stash-backup ") :]: parser for name, parser in COMMANDS.items() if name.startswith("stash-backup ")
}


def _options(parser) -> set:
    return {o for action in parser._actions for o in action.option_strings if o.startswith("--") and o != "--help"}
