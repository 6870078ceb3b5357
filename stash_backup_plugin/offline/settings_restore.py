"""stash-restore --with-settings: Stash's settings files from a stored backup (config.yml,
plugins, scrapers, custom CSS/JS/locales; core/settings.py) back into the config
folder, as a new machine needs them.

Each file is copied from the archive into a temp file beside its place with its MD5
checked, fsynced, and only then renamed over the current one; a current file that
differs is first moved into the restore's aside folder (kept, as the current
database is). A run killed half-way leaves every replaced file in the aside folder
and can be run again: files already identical are skipped. With --map-path the
restored config.yml's library folders (`stash:`) are rewritten as the database's are.

Standard library and PyYAML only."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.atomic import discard, fsync_dir, make_folders, staged_file, storage_error
from ..core.errors import RestoreRefused, VerificationError
from ..core.hashing import copy_and_hash, file_digest
from ..core.reporting import Reporter
from ..core.settings import CONFIG, PLUGINS, SCRAPERS, SettingsFile, target_path
from ..core.store import Store
from .stash_config import CONFIG_NAME, StashConfig

ASIDE_SUBFOLDER = "settings"


@dataclass
class SettingsPlan:
    files: list[SettingsFile]
    folders: dict[str, Path]  # root -> where its files go
    config_text: Optional[bytes] = None  # config.yml as it will be written, when mapping or moving rewrote it
    unchanged: set[SettingsFile] = field(default_factory=set)  # identical here already
    replaced: set[SettingsFile] = field(default_factory=set)  # a different file is here: kept aside first

    def lines(self, aside: Path) -> list[str]:
        new = len(self.files) - len(self.unchanged) - len(self.replaced)
        text = (
            f"restore {len(self.files)} settings file(s) into {self.folders[CONFIG]}: {new} new, "
            f"{len(self.replaced)} replacing the current one (kept in {aside / ASIDE_SUBFOLDER}), "
            f"{len(self.unchanged)} unchanged"
        )
        return [text] + [f"{root} files go to {folder}" for root, folder in self.folders.items() if root != CONFIG]


# config.yml's keys naming Stash's own files: those inside the old config folder move
# with it to the new one (a new machine's config folder is somewhere else).
CONFIG_FOLDER_PATHS = (
    "database",
    "blobs_path",
    "generated",
    "cache",
    "metadata",
    "backup_directory_path",
    "plugins_path",
    "scrapers_path",
    "logfile",
)


@dataclass
class RestoredConfig:
    config: StashConfig  # the backup's config.yml as it will be at its new place
    rewritten: bool  # mapping or moving changed it: written as PyYAML dumps it, not the stored bytes


def restored_config(
    store: Store, files: list[SettingsFile], config_path: Path, mappings: list, old_folder: str = ""
) -> RestoredConfig:
    """The backup's config.yml as it will be at `config_path` (library folders mapped;
    paths inside the old config folder moved to the new one), read from the archive and
    checked against its MD5. Refuses when the backup has none."""
    stored = next((f for f in files if f.root == CONFIG and f.path == CONFIG_NAME), None)
    if stored is None:
        raise RestoreRefused("the backup holds no config.yml among its settings: nothing was changed")
    values = _parse(_read_checked(store, stored), stored)
    original = copy.deepcopy(values)
    if mappings:
        from .pathmap import map_library_setting

        values["stash"] = map_library_setting(values.get("stash"), mappings)
    _move_config_folder(values, old_folder, config_path.parent)
    return RestoredConfig(StashConfig(config_path, values), values != original)


def _move_config_folder(values: dict, old: str, new: Path) -> None:
    if not old or Path(old) == new:
        return
    for key in CONFIG_FOLDER_PATHS:
        value = values.get(key)
        if isinstance(value, str) and Path(value).is_absolute():
            try:
                inside = Path(value).relative_to(old)
            except ValueError:
                continue
            values[key] = str(new / inside)


def plan_settings(files: list[SettingsFile], restored: RestoredConfig) -> SettingsPlan:
    """Where each settings file goes (the plugins and scrapers folders the restored
    config names), and what is here already."""
    config = restored.config
    folders = {CONFIG: config.folder}
    for root, key in ((PLUGINS, "plugins_path"), (SCRAPERS, "scrapers_path")):
        value = config.get(key)
        folders[root] = config.resolve_path(value) if value else config.folder / root
    plan = SettingsPlan(files, folders)
    if restored.rewritten:
        plan.config_text = _dump(config.values)
    for settings_file in files:
        here = target_path(folders[settings_file.root], settings_file)
        if here.is_file() and not here.is_symlink():
            same = here.stat().st_size == settings_file.size and file_digest(here, "md5") == settings_file.md5
            (plan.unchanged if same and not _is_mapped_config(plan, settings_file) else plan.replaced).add(
                settings_file
            )
        elif here.exists() or here.is_symlink():
            raise RestoreRefused(f"{here} is in the way of a settings file (not a plain file): nothing was changed")
    return plan


def restore_settings(store: Store, plan: SettingsPlan, aside: Path, report: Reporter) -> int:
    """Each file into place, the current one moved aside first. Returns files written."""
    written = 0
    for settings_file in plan.files:
        if settings_file in plan.unchanged:
            continue
        final = target_path(plan.folders[settings_file.root], settings_file)
        make_folders(final.parent)
        staged = _stage(store, settings_file, final, plan)
        try:
            if settings_file in plan.replaced and final.exists():
                kept = aside / ASIDE_SUBFOLDER / settings_file.root / settings_file.path
                make_folders(kept.parent)
                _move(final, kept)
            os.replace(staged, final)
            fsync_dir(final.parent)
        except OSError as error:
            raise storage_error("restore the settings file", final, error) from error
        finally:
            discard(staged)
        written += 1
    report.info(f"restored {written} settings file(s) into {plan.folders[CONFIG]}")
    return written


def _stage(store: Store, settings_file: SettingsFile, final: Path, plan: SettingsPlan) -> Path:
    with staged_file(final.parent, final.name) as (out, temp):
        if _is_mapped_config(plan, settings_file):
            out.write(plan.config_text)
        else:
            with open(store.blob_path(settings_file.md5), "rb") as source:
                digest, size = copy_and_hash(source, out, "md5")
            if (digest, size) != (settings_file.md5, settings_file.size):
                discard(temp)
                raise VerificationError(
                    f"the archive's copy of {settings_file.root}/{settings_file.path} is damaged "
                    f"(blob {settings_file.md5}): the settings were not restored"
                )
    # Private, as everything we write (config.yml holds secrets): the owner's bits as they
    # were (a plugin's script stays executable), readable and writable by its owner, no
    # one else. The owner is the config folder's (staged_file), so Stash reads it.
    os.chmod(temp, (settings_file.mode & 0o700) | 0o600)
    return temp


def _is_mapped_config(plan: SettingsPlan, settings_file: SettingsFile) -> bool:
    return plan.config_text is not None and settings_file.root == CONFIG and settings_file.path == CONFIG_NAME


def _move(current: Path, kept: Path) -> None:
    try:
        os.replace(current, kept)
    except OSError:  # another file system: copy, make durable, then remove
        import shutil

        shutil.copy2(current, kept)
        with open(kept, "rb") as handle:
            os.fsync(handle.fileno())
        os.unlink(current)
    fsync_dir(kept.parent)


def _read_checked(store: Store, stored: SettingsFile) -> bytes:
    try:
        with open(store.blob_path(stored.md5), "rb") as handle:
            data = handle.read(stored.size + 1)
    except OSError as error:
        raise VerificationError(f"the archive's copy of config.yml cannot be read ({error.strerror})") from None
    import hashlib

    if len(data) != stored.size or hashlib.md5(data).hexdigest() != stored.md5:
        raise VerificationError(f"the archive's copy of config.yml (blob {stored.md5}) is damaged: nothing was changed")
    return data


def _parse(text: bytes, stored: SettingsFile) -> dict:
    import yaml

    try:
        values = yaml.safe_load(text.decode("utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise VerificationError(f"the backup's config.yml is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise VerificationError("the backup's config.yml is not a mapping of settings")
    return values


def _dump(values: dict) -> bytes:
    """As Stash writes its config (viper: keys in order, block style)."""
    import yaml

    return yaml.safe_dump(values, sort_keys=True, default_flow_style=False, allow_unicode=True).encode("utf-8")
