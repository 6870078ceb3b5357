"""Stash's config.yml: where it is, and the paths it names. Standard library and
PyYAML only (the offline restore imports it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Optional

from ..core.archive import ARCHIVE_FOLDER_SETTING
from ..core.errors import ConfigError

CONFIG_NAME = "config.yml"
DEFAULT_DATABASE_NAME = "stash-go.sqlite"
FILESYSTEM, DATABASE = "FILESYSTEM", "DATABASE"
DEFAULT_PORT = 9999
# The plugin's setting, stored by Stash under `plugins.settings.<plugin id>` in config.yml.


@dataclass
class StashConfig:
    path: Path
    values: dict
    # Paths that did not exist as written (Docker: container paths) and were found
    # relative to the config folder instead: (as written, as used).
    relocated: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def get(self, key: str, default=None):
        value = self.values.get(key)
        return default if value in (None, "") else value

    @property
    def blobs_storage(self) -> str:
        return str(self.get("blobs_storage", DATABASE)).upper()

    @property
    def database(self) -> Path:
        return self.resolve_path(self.get("database", DEFAULT_DATABASE_NAME))

    @property
    def blobs_path(self) -> Optional[Path]:
        value = self.get("blobs_path")
        return self.resolve_path(value) if value else None

    @property
    def backup_directory(self) -> Path:
        value = self.get("backup_directory_path")
        return self.resolve_path(value) if value else self.database.parent

    @property
    def port(self) -> int:
        try:
            return int(self.get("port", DEFAULT_PORT))
        except (TypeError, ValueError):
            raise ConfigError(f"{self.path}: port {self.get('port')!r} is not a number") from None

    @property
    def host(self) -> str:
        return str(self.get("host", "0.0.0.0"))

    @property
    def plugin_archive_folders(self) -> list[Path]:
        """Every archive folder set in a plugin's settings. Our plugin's ID is whatever
        the user installed it as, and Stash nests an ID with dots (`a.b` -> a: b:), so
        any plugin's `archiveFolder` counts: a folder only adds backups to look at,
        and each is verified before anything changes."""
        settings = self.values.get("plugins", {})
        settings = settings.get("settings", {}) if isinstance(settings, dict) else {}
        return [self.resolve_path(folder) for folder in _setting_values(settings, ARCHIVE_FOLDER_SETTING)]

    def setting_paths(self) -> dict:
        """The paths config.yml names, keyed as settings.sources_for wants them (each
        found as resolve_path finds it)."""
        keys = {
            "database": "database",
            "backup_directory": "backup_directory_path",
            "blobs": "blobs_path",
            "generated": "generated",
            "cache": "cache",
            "metadata": "metadata",
            "plugins": "plugins_path",
            "scrapers": "scrapers_path",
            "log_file": "logfile",
            "ffmpeg": "ffmpeg_path",
            "ffprobe": "ffprobe_path",
        }
        found = {key: self.get(name) for key, name in keys.items()}
        found["database"] = str(self.database)
        return {key: str(self.resolve_path(value)) for key, value in found.items() if isinstance(value, str)}

    def resolve_path(self, written: str) -> Path:
        """The path as written when it exists; otherwise the same path found under the
        config folder (a Docker config names paths inside the container)."""
        raw = Path(os.path.expanduser(str(written)))
        if not raw.is_absolute():
            raw = self.folder / raw
        if raw.exists():
            return raw
        for candidate in _relocation_candidates(str(written), self.folder):
            if candidate.exists():
                self.relocated.append((str(written), candidate))
                return candidate
        return raw


def _setting_values(tree, name: str, depth: int = 4) -> list[str]:
    if not isinstance(tree, dict) or depth == 0:
        return []
    found = [tree[name]] if isinstance(tree.get(name), str) and tree[name].strip() else []
    for key, value in tree.items():
        if key != name:
            found += _setting_values(value, name, depth - 1)
    return found


def _relocation_candidates(written: str, folder: Path) -> list[Path]:
    flavour: type[PurePath] = PureWindowsPath if ":" in written[:3] else PurePosixPath
    parts = [p for p in flavour(written).parts if p not in ("/", "\\") and not p.endswith((":", ":\\"))]
    return [folder.joinpath(*parts[start:]) for start in range(len(parts))]


# Stash's own variable first; STASH_CONFIG is this tool's older name, kept as an alias.
CONFIG_ENV_NAMES = ("STASH_CONFIG_FILE", "STASH_CONFIG")


def find_config_file(explicit: Optional[Path] = None) -> Path:
    """Find config.yml the way Stash does: --config, STASH_CONFIG_FILE, the working
    directory, then ~/.stash. A file named explicitly (flag or variable) must exist:
    Stash would not look elsewhere either."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist: give the path of Stash's config.yml")
        return explicit
    for variable in CONFIG_ENV_NAMES:
        if os.environ.get(variable):
            named = Path(os.path.expanduser(os.environ[variable]))
            if not named.is_file():
                raise ConfigError(
                    f"{variable} names {named}, which does not exist: give the path of Stash's config.yml"
                )
            return named
    candidates = [Path.cwd() / CONFIG_NAME, Path.home() / ".stash" / CONFIG_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"no Stash config.yml found (looked at {searched}): pass --config FILE or --database FILE")


def load_config(path: Path) -> StashConfig:
    # Imported here: the plugin runs the drill (which uses this module) on a Python
    # with only `requests`; only reading a config.yml needs PyYAML.
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"reading {path} needs PyYAML: pip install pyyaml") from None
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(
            f"{path} is not valid YAML ({str(error).splitlines()[0]}): fix or point to another config"
        ) from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path} is not a Stash config file (expected a mapping of settings)")
    return StashConfig(path.resolve(), values)


@dataclass
class Target:
    """Where the restore goes, from config.yml or the command line."""

    database: Path
    blobs_path: Optional[Path] = None
    blobs_storage: str = FILESYSTEM
    config: Optional[StashConfig] = None

    @property
    def host(self) -> str:
        return self.config.host if self.config else "127.0.0.1"

    @property
    def port(self) -> Optional[int]:
        return self.config.port if self.config else None
