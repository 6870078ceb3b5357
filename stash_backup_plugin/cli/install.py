"""Install the plugin into a Stash plugins folder, and build a plugin-manager package
(zip + index.yml) that Stash can install from a plugin source.

The installed plugin is files and no folder: the manifest `<id>.yml`, the Backups
page's script and style (served by Stash from the plugin folder), and
`stash_backup_plugin.pyz`, a zip that Python runs, holding our modules and, under
`_vendor/`, gql with its pure-Python dependencies taken from the Python running this
installer (its installed distributions, never the network). Stash's plugin manager
removes the files it listed and then the plugin folder without recursing, so a
subfolder would outlive an uninstall; and zipimport writes no __pycache__. So that
Python need not compile the sources at every start (a task's cold start measured
0.6 s with byte code, 2.0 s without), the archive carries byte code for the installing
Python beside them; another Python version ignores it and compiles."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import marshal
import platform
import re
import os
import shutil
import stat
import subprocess
import zipfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterator, Optional

from .. import BUNDLE_FOLDER, BUNDLE_RECORD, DEFAULT_PLUGIN_ID, PLUGIN_ARCHIVE
from ..core.atomic import make_folders, storage_error, write_bytes_atomic
from ..core.errors import MissingDependency, UsageError

PACKAGE = "stash_backup_plugin"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# The manifest is plugin.yml at the repository's top level, where a clone in Stash's
# plugins folder is a working plugin. A wheel carries it as package data under a name
# Stash never loads (setup.py's build step copies it there): a .yml inside an
# installed package folder would be loaded as a plugin. The installer names it `<id>.yml`.
CHECKOUT_MANIFEST = PACKAGE_DIR.parent / "plugin.yml"
PACKAGED_MANIFEST = PACKAGE_DIR / "plugin" / "manifest.yml.in"
# What plugin.yml names by its path in a clone, and what the installed plugin folder
# (files only, no subfolder) holds instead: the archive for plugin.py, the Backups
# page's script and style (served by Stash from the plugin folder) by their names.
UI_ASSETS = (PACKAGE_DIR / "plugin" / "ui" / "backups.js", PACKAGE_DIR / "plugin" / "ui" / "backups.css")
INSTALLED_PATHS = {
    "{pluginDir}/plugin.py": "{pluginDir}/" + PLUGIN_ARCHIVE,
    **{asset.relative_to(PACKAGE_DIR.parent).as_posix(): asset.name for asset in UI_ASSETS},
}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# What the plugin runs: the package's layers below the plugin (import-linter holds
# them to that), never the CLI. The restore drill runs the offline restore's engine
# (restore and what it imports; not its command line nor salvage), which imports
# without PyYAML: only reading a config.yml needs it.
PLUGIN_PARTS = (
    "__init__.py",
    "jobs",
    "core",
    "server",
    "offsite",
    "plugin",
    "offline/__init__.py",
    "offline/stash_config.py",
    "offline/restore.py",
    "offline/swap.py",
    "offline/plan.py",
    "offline/liveness.py",
    "offline/pathmap.py",
)
ARCHIVE_MAIN = b'''"""Python runs this when Stash runs the plugin archive."""
import sys

from stash_backup_plugin.plugin.task import main

sys.exit(main())
'''
ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # no build time in the zip

# The bundle: gql with the `requests` extra and what it needs, except what Stash's
# Python brings (requests and its own dependencies: Stash's official image has them),
# and what gql declares but imports only in its aiohttp/websockets transports and its
# CLI (they carry C extensions; tests/unit/test_install.py checks our path never imports them).
BUNDLE_ROOT = ("gql", frozenset({"requests"}))
PROVIDED_ROOT = "requests"
NOT_IMPORTED = frozenset({"yarl", "multidict", "propcache"})
_COMPILED = (".so", ".pyd", ".dylib")
_KEPT_METADATA = re.compile(r"(^|/)(METADATA|[^/]*(LICEN[CS]E|COPYING|NOTICE|AUTHORS)[^/]*)$|/licenses/", re.I)
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA = re.compile(r"""\bextra\s*==\s*["']([^"']+)["']""")


def check_plugin_id(plugin_id: str) -> str:
    if not _ID.match(plugin_id):
        raise UsageError(f"plugin ID {plugin_id!r} is invalid: use letters, digits, '-' and '_'")
    return plugin_id


# --- what the plugin is made of ------------------------------------------------------


def source_manifest() -> bytes:
    """plugin.yml: the wheel's copy, else the checkout's (a checkout has no copy)."""
    for path in (PACKAGED_MANIFEST, CHECKOUT_MANIFEST):
        if path.is_file():
            return path.read_bytes()
    raise MissingDependency(
        f"the plugin manifest is missing (neither {PACKAGED_MANIFEST} nor {CHECKOUT_MANIFEST}): "
        "reinstall stash-backup (pip install --force-reinstall stash-backup)"
    )


def manifest_text() -> bytes:
    """The installed plugin's manifest: plugin.yml with the installed layout's paths."""
    text = source_manifest().decode()
    for clone_path, installed in INSTALLED_PATHS.items():
        if text.count(clone_path) != 1:
            raise MissingDependency(
                f"the plugin manifest names {clone_path} {text.count(clone_path)} times, not once: "
                "reinstall stash-backup (pip install --force-reinstall stash-backup)"
            )
        text = text.replace(clone_path, installed)
    return text.encode()


def runtime_sources() -> list[str]:
    """The package files the plugin needs, relative to the package folder."""
    found = []
    for part in PLUGIN_PARTS:
        path = PACKAGE_DIR / part
        found.extend(
            [part] if path.is_file() else sorted(p.relative_to(PACKAGE_DIR).as_posix() for p in path.rglob("*.py"))
        )
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: metadata.Distribution, extras: frozenset) -> Iterator[tuple[str, frozenset, bool]]:
    """(name, extras, optional) of what `dist` needs with `extras`. Markers other than
    `extra` are not evaluated: a dependency meant for another Python version is bundled
    when this Python has it (the plugin's Python may be that version) and skipped
    (optional) when it has not."""
    for line in dist.requires or []:
        spec, _, marker = line.partition(";")
        extra = _EXTRA.search(marker)
        if extra and _normalise(extra.group(1)) not in extras:
            continue
        match = _REQUIREMENT.match(spec)
        if not match:
            continue
        wanted = frozenset(_normalise(e) for e in (match.group(2) or "").split(",") if e.strip())
        rest = re.sub(r"[\s()]|\band\b|\bor\b", "", _EXTRA.sub("", marker))
        yield match.group(1), wanted, bool(rest)


def distribution_closure(
    root: str, extras: frozenset = frozenset(), skip: frozenset = frozenset()
) -> dict[str, metadata.Distribution]:
    """`root` and everything it needs, as installed in this Python, by normalised name."""
    found: dict[str, metadata.Distribution] = {}
    pending = [(root, frozenset(_normalise(e) for e in extras), False)]
    while pending:
        name, wanted, optional = pending.pop()
        key = _normalise(name)
        if key in skip or key in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if optional:
                continue
            raise MissingDependency(
                f"the plugin bundles {name}, which this Python lacks: install stash-backup with "
                "its dependencies (pip install stash-backup, or pip install 'gql[requests]')"
            ) from None
        found[key] = dist
        pending.extend(_requirements(dist, wanted))
    return found


def bundled_distributions() -> list[metadata.Distribution]:
    provided = frozenset(distribution_closure(PROVIDED_ROOT))
    bundle = distribution_closure(BUNDLE_ROOT[0], BUNDLE_ROOT[1], skip=provided | NOT_IMPORTED)
    return [bundle[key] for key in sorted(bundle)]


def _distribution_files(dist: metadata.Distribution) -> dict[str, bytes]:
    """A distribution's modules and data, its METADATA and licence files; not its
    scripts, byte code or install records."""
    name = dist.metadata["Name"]
    if dist.files is None:
        raise MissingDependency(
            f"cannot bundle {name}: its installation lists no files (no RECORD); "
            f"reinstall it with pip (pip install --force-reinstall {name})"
        )
    files = {}
    for entry in dist.files:
        path = entry.as_posix()
        if path.startswith("../") or "__pycache__" in path or path.endswith(".pyc"):
            continue
        if ".dist-info/" in path and not _KEPT_METADATA.search(path):
            continue
        if path.endswith(_COMPILED):
            raise MissingDependency(
                f"cannot bundle {name} {dist.version}: it has compiled extension modules "
                f"({path}) that load in this Python only; install a pure-Python build of it"
            )
        try:
            files[path] = Path(dist.locate_file(entry)).read_bytes()
        except OSError as error:
            raise MissingDependency(
                f"cannot bundle {name}: {path} is listed but unreadable ({error.strerror}); "
                f"reinstall it (pip install --force-reinstall {name})"
            ) from None
    return files


def archive_files() -> dict[str, bytes]:
    """Path inside the plugin archive -> content."""
    files = {"__main__.py": ARCHIVE_MAIN}
    for relative in runtime_sources():
        files[f"{PACKAGE}/{relative}"] = (PACKAGE_DIR / relative).read_bytes()
    record = {"python": platform.python_version(), "distributions": {}}
    for dist in bundled_distributions():
        record["distributions"][dist.metadata["Name"]] = dist.version
        files.update({f"{BUNDLE_FOLDER}/{path}": data for path, data in _distribution_files(dist).items()})
    files[BUNDLE_RECORD] = json.dumps(record, indent=1, sort_keys=True).encode()
    files.update(_bytecode(files))
    return files


def _bytecode(files: dict[str, bytes]) -> dict[str, bytes]:
    """`x.pyc` beside each `x.py`, where zipimport looks for it: PEP 552 unchecked-hash
    byte code (it is made from the very source beside it, in the same zip). zipimport
    falls back to the source when the magic number is another Python's. A module this
    Python cannot compile gets none (it is imported, and fails, only on a Python it
    was never meant for)."""
    header = importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")  # hash-based, unchecked
    compiled = {}
    for name, source in files.items():
        if not name.endswith(".py"):
            continue
        try:
            code = compile(source, f"{PLUGIN_ARCHIVE}/{name}", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            continue
        compiled[name + "c"] = header + importlib.util.source_hash(source) + marshal.dumps(code)
    return compiled


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name])
    return buffer.getvalue()


def runtime_files(plugin_id: str) -> dict[str, bytes]:
    """The plugin folder's files: exactly one .yml, the manifest; the page's assets;
    the archive."""
    files = {f"{plugin_id}.yml": manifest_text(), PLUGIN_ARCHIVE: _zip(archive_files())}
    files.update({asset.name: asset.read_bytes() for asset in UI_ASSETS})
    return files


# --- writing it -----------------------------------------------------------------------


def write_owned(path: Path, content: bytes) -> None:
    # Stash may run as another user (Docker, services): it must read these; the temp
    # file, and so the file, takes the folder's owner (core/atomic.py), and is as
    # readable as the folder it is in (code, never a secret).
    write_bytes_atomic(path, content, mode=0o600 | (_mode(path.parent) & 0o044))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def install_plugin(plugins_dir: Path, plugin_id: str = DEFAULT_PLUGIN_ID) -> Path:
    """Write the runtime files into <plugins_dir>/<id>/, the manifest last so that a
    Stash that rescans meanwhile never sees a plugin without its code; then remove
    what an install of the older layout (a package folder) left."""
    check_plugin_id(plugin_id)
    if not plugins_dir.is_dir():
        raise UsageError(
            f"plugins folder {plugins_dir} does not exist: give Stash's plugins folder "
            "(Settings > System > Plugins path)"
        )
    target = plugins_dir / plugin_id
    files = runtime_files(plugin_id)  # before touching the disk: a missing dependency changes nothing
    manifest = f"{plugin_id}.yml"
    try:
        make_folders(target)
        os.chmod(target, 0o700 | (_mode(plugins_dir) & 0o055))  # as readable as the plugins folder Stash reads
        stray = [p for p in target.rglob("*.yml") if p.name != manifest]
        if stray:
            raise UsageError(
                f"{target} holds other .yml files ({stray[0].name}) that Stash would load as plugins: "
                "remove them or choose another --id"
            )
        for relative, content in sorted(files.items(), key=lambda item: item[0] == manifest):
            write_owned(target / relative, content)
        shutil.rmtree(target / PACKAGE, ignore_errors=True)  # the layout before the archive
    except OSError as error:
        raise storage_error("install the plugin into", target, error) from error
    return target


def _git_short_hash() -> Optional[str]:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE_DIR.parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def build_package(output_dir: Path, plugin_id: str = DEFAULT_PLUGIN_ID) -> tuple[Path, Path]:
    """A plugin-manager source: <id>.zip (the plugin folder's files at the zip root)
    and index.yml."""
    check_plugin_id(plugin_id)
    files = runtime_files(plugin_id)
    data = _zip(files)
    import yaml  # only here: install-plugin and --help do without it

    manifest = yaml.safe_load(files[f"{plugin_id}.yml"])
    version = str(manifest.get("version", "0"))
    short = _git_short_hash()
    zip_path = output_dir / f"{plugin_id}.zip"
    index = [
        {
            "id": plugin_id,
            "name": manifest.get("name", plugin_id),
            "metadata": {"description": manifest.get("description", "")},
            "version": f"{version}-{short}" if short else version,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "requires": [],
            "path": zip_path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    ]
    index_path = output_dir / "index.yml"
    try:
        make_folders(output_dir)
        write_owned(zip_path, data)
        write_owned(index_path, yaml.safe_dump(index, sort_keys=False).encode())
    except OSError as error:
        raise storage_error("write the package into", output_dir, error) from error
    return zip_path, index_path
