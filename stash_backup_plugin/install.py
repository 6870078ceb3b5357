"""Install the plugin into a Stash plugins folder, and build a plugin-manager package
(zip + index.yml) that Stash can install from a plugin source."""
from __future__ import annotations

import ast
import hashlib
import io
import re
import shutil
import subprocess
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import yaml

from .atomic import make_folders, storage_error, write_bytes_atomic
from .errors import ConfigError, UsageError

PACKAGE = "stash_backup_plugin"
PACKAGE_DIR = Path(__file__).resolve().parent
ENTRY_MODULE = "task"
DEFAULT_PLUGIN_ID = "stash-backup"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def manifest_source() -> Path:
    manifest = PACKAGE_DIR.parent / "plugin.yml"
    if not manifest.is_file():
        raise ConfigError(f"plugin.yml not found beside the package ({manifest}): install stash-backup from its "
                          "source folder with 'pip install -e .'")
    return manifest


def runtime_modules() -> list[str]:
    """The package's modules that the plugin entry point imports, found by reading
    their import statements: the CLI, the restore and this installer stay out."""
    wanted, seen = [ENTRY_MODULE, "__init__"], set()
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((PACKAGE_DIR / f"{name}.py").read_text(encoding="utf-8"))
        wanted.extend(_package_imports(tree))
    return sorted(seen)


def _package_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 or module.startswith(PACKAGE):
                inner = module[len(PACKAGE) + 1:] if module.startswith(PACKAGE) else module
                if inner:
                    found.append(inner.split(".")[0])
                else:
                    found.extend(alias.name for alias in node.names)
    return [name for name in found if (PACKAGE_DIR / f"{name}.py").is_file()]


def runtime_files(plugin_id: str) -> dict[str, bytes]:
    """Relative path in the plugin folder -> content. Exactly one .yml: the manifest."""
    files = {f"{plugin_id}.yml": manifest_source().read_bytes()}
    for module in runtime_modules():
        files[f"{PACKAGE}/{module}.py"] = (PACKAGE_DIR / f"{module}.py").read_bytes()
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
        stale = target / PACKAGE
        for old in stale.glob("*.py"):
            if f"{PACKAGE}/{old.name}" not in files:
                old.unlink()
        shutil.rmtree(stale / "__pycache__", ignore_errors=True)
        for relative, content in sorted(files.items(), key=lambda item: item[0] == manifest):
            # Stash may run as another user (Docker, services): it must read these.
            write_bytes_atomic(target / relative, content, mode=0o644)
    except OSError as error:
        raise storage_error("install the plugin into", target, error) from error
    return target


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
