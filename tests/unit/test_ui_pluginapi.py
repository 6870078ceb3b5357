"""The Backups page script uses only what both pinned Stash versions' PluginApi have
(tests/support/stash_pluginapi_common.txt, read from their sources). The browser tests run on
v0.31.1 only (v0.28.1's UI build is too slow for CI; STASH_BACKUP_UI_STASH=v0.28.1 runs
them by hand): this static check keeps the script from reaching for a member or patch
target that v0.28.1 lacks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "stash_backup_plugin" / "plugin" / "ui" / "backups.js"
COMMON = Path(__file__).resolve().parents[1] / "support" / "stash_pluginapi_common.txt"

_CHAIN = re.compile(r"\bapi((?:\.[A-Za-z_$][\w$]*)+)")
_DESTRUCTURED = re.compile(r"\{([^{}]+)\}\s*=\s*api((?:\.[A-Za-z_$][\w$]*)+)")
_PATCH = re.compile(r"\bapi\.patch\.(?:before|instead|after)\(\s*[\"']([^\"']+)[\"']")


def allowed() -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = {"member": set(), "patch": set(), "component": set()}
    for line in COMMON.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            kind, name = line.split()
            kinds[kind].add(name)
    members = kinds["member"]
    kinds["member"] = {".".join(name.split(".")[:end]) for name in members for end in range(1, name.count(".") + 2)}
    kinds["member"] |= {f"components.{name}" for name in kinds["component"]}
    return kinds


def used(script: str) -> tuple[set[str], set[str]]:
    """(PluginApi members, patch targets) the script names through its `api` alias."""
    members = {chain.lstrip(".") for chain in _CHAIN.findall(script)}
    for names, chain in _DESTRUCTURED.findall(script):
        members |= {f"{chain.lstrip('.')}.{name.split(':')[0].strip()}" for name in names.split(",") if name.strip()}
    return members, set(_PATCH.findall(script))


def unknown(script: str) -> list[str]:
    members, patches = used(script)
    kinds = allowed()
    return sorted(
        [m for m in members if m not in kinds["member"]] + [f"patch {p}" for p in patches if p not in kinds["patch"]]
    )


def test_the_page_script_uses_only_pluginapi_both_versions_have():
    script = SCRIPT.read_text()
    assert re.findall(r"PluginApi\b", script) == ["PluginApi", "PluginApi"], (
        "reach PluginApi only through `const api = window.PluginApi` (the comment names it once)"
    )
    members, patches = used(script)
    assert "patch.after" in members and "MainNavBar.UtilityItems" in patches  # the parser sees the real script
    assert unknown(script) == []


@pytest.mark.parametrize(
    "snippet, problem",
    [
        ("const { ReactSlick } = api.libraries;", "libraries.ReactSlick"),
        ("api.hooks.useLightbox();", "hooks.useLightbox"),
        ("const { Modal } = api.libraries.Bootstrap;", "libraries.Bootstrap.Modal"),
        ('api.patch.after("SceneCard.Popovers", f);', "patch SceneCard.Popovers"),
        ("h(api.components.HoverPopover);", "components.HoverPopover"),
    ],
)
def test_a_member_outside_the_common_list_is_caught(snippet, problem):
    assert problem in unknown(snippet)
