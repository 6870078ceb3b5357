"""Install the plugin into a Stash plugins folder, and build a plugin-manager package
(zip + index.yml) that Stash can install from a plugin source."""
from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .. import DEFAULT_PLUGIN_ID
from ..core.atomic import make_folders, storage_error, write_bytes_atomic
from ..core.errors import ConfigError, UsageError

PACKAGE = "stash_backup_plugin"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# What the plugin runs: the package's layers below the plugin (import-linter holds
# them to that), never the CLI or the offline restore. The plugin still reads
# config.yml through offline/stash_config.py (PyYAML) until it asks Stash instead.
PLUGIN_PARTS = ("__init__.py", "jobs.py", "core", "server", "offsite", "plugin", "offline/__init__.py",
                "offline/stash_config.py", "plugin/ui/backups.js", "plugin/ui/backups.css")


def manifest_source() -> Path:
    manifest = PACKAGE_DIR.parent / "plugin.yml"
    if not manifest.is_file():
        raise ConfigError(f"plugin.yml not found beside the package ({manifest}): install stash-backup from its "
                          "source folder with 'pip install -e .'")
    return manifest


def runtime_sources() -> list[str]:
    """The package files the plugin needs, relative to the package folder."""
    found = []
    for part in PLUGIN_PARTS:
        path = PACKAGE_DIR / part
        found.extend([part] if path.is_file() else
                     sorted(str(p.relative_to(PACKAGE_DIR)) for p in path.rglob("*.py")))
    return found


def runtime_files(plugin_id: str) -> dict[str, bytes]:
    """Relative path in the plugin folder -> content. Exactly one .yml: the manifest."""
    files = {f"{plugin_id}.yml": manifest_source().read_bytes()}
    for relative in runtime_sources():
        files[f"{PACKAGE}/{relative}"] = (PACKAGE_DIR / relative).read_bytes()
    return files


def check_plugin_id(plugin_id: str) -> str:
    if not _ID.match(plugin_id):
        raise UsageError(f"plugin ID {plugin_id!r} is invalid: use letters, digits, '-' and '_'")
    return plugin_id


def install_plugin(plugins_dir: Path, plugin_id: str = DEFAULT_PLUGIN_ID) -> Path:
    """Write the runtime files into <plugins_dir>/<id>/, the manifest last so that a
    Stash that rescans meanwhile never sees a plugin without its code."""
    check_plugin_id(plugin_id)
    if not plugins_dir.is_dir():
        raise UsageError(f"plugins folder {plugins_dir} does not exist: give Stash's plugins folder "
                         "(Settings > System > Plugins path)")
    target = plugins_dir / plugin_id
    files = runtime_files(plugin_id)
    manifest = f"{plugin_id}.yml"
    try:
        make_folders(target / PACKAGE)
        stray = [p for p in target.rglob("*.yml") if p.name != manifest]
        if stray:
            raise UsageError(f"{target} holds other .yml files ({stray[0].name}) that Stash would load as plugins: "
                             "remove them or choose another --id")
        _remove_stale_modules(target, files)
        for relative, content in sorted(files.items(), key=lambda item: item[0] == manifest):
            # Stash may run as another user (Docker, services): it must read these.
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(target / relative, content, mode=0o644)
    except OSError as error:
        raise storage_error("install the plugin into", target, error) from error
    return target


def _remove_stale_modules(target: Path, files: dict[str, bytes]) -> None:
    """Modules of an older install that this one does not have, and byte code."""
    installed = target / PACKAGE
    for old in installed.rglob("*.py"):
        if old.relative_to(target).as_posix() not in files:
            old.unlink()
    for cache in list(installed.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def _git_short_hash() -> Optional[str]:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE_DIR.parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def build_package(output_dir: Path, plugin_id: str = DEFAULT_PLUGIN_ID) -> tuple[Path, Path]:
    """A plugin-manager source: <id>.zip (files at the zip root) and index.yml."""
    check_plugin_id(plugin_id)
    make_folders(output_dir)
    files = runtime_files(plugin_id)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative, content in sorted(files.items()):
            info = zipfile.ZipInfo(relative, date_time=(2020, 1, 1, 0, 0, 0))  # reproducible bytes
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    data = buffer.getvalue()
    zip_path = output_dir / f"{plugin_id}.zip"
    write_bytes_atomic(zip_path, data, mode=0o644)
    import yaml  # only here: install-plugin and --help do without it
    manifest = yaml.safe_load(files[f"{plugin_id}.yml"])
    version = str(manifest.get("version", "0"))
    short = _git_short_hash()
    index = [{
        "id": plugin_id,
        "name": manifest.get("name", plugin_id),
        "metadata": {"description": manifest.get("description", "")},
        "version": f"{version}-{short}" if short else version,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "requires": [],
        "path": zip_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
    }]
    index_path = output_dir / "index.yml"
    write_bytes_atomic(index_path, yaml.safe_dump(index, sort_keys=False).encode(), mode=0o644)
    return zip_path, index_path
