"""Stash's settings in every backup: config.yml, the plugins and scrapers folders,
custom CSS/JS/locales, TLS certificate and key, and anything else in Stash's config
folder that cannot be made again. Each file is stored once by its MD5 in the
archive's blob store, beside the images, and a backup's record lists them
(record.py: the settings section).

What is left out, and why, is the table `LEFT_OUT` below (plus the paths the config
names for the database, generated files, cache, metadata, blobs, backups and log,
`Sources.leave_out`): everything there is either data the archive holds elsewhere,
made again by Stash, or a download. A file larger than MAX_FILE_BYTES is left out
as a cache or a plugin's data (named in a warning), and a config folder holding more
than MAX_FILES files or MAX_TOTAL_BYTES is left out whole: a folder that size is not
settings, and backing up part of a plugin would restore a broken one.

config.yml holds secrets (API key, JWT and session keys, the password hash, stash-box
keys), and so may stash.key and plugin settings: the archive keeps them private as it
keeps everything (0600/0700), and an off-site push leaves them out of a plain remote
unless asked (jobs/offsite.py).

Standard library only (stash-restore reads the settings section)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from .hashing import file_digest

CONFIG, PLUGINS, SCRAPERS = "config", "plugins", "scrapers"
ROOTS = (CONFIG, PLUGINS, SCRAPERS)  # plugins and scrapers are roots of their own only outside the config folder

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_FILES = 20_000
MAX_TOTAL_BYTES = 512 * 1024 * 1024
MAX_PATH_CHARS = 1024
ARCHIVE_MANIFEST = "manifest.json"  # archive.MANIFEST_NAME (archive.py imports this module)
WARNED_LEFT_OUT = 5  # named one by one in a run's warnings; the rest counted

# (where, pattern, why). where: "top" = directly in the config folder, "any" = at any
# depth of any root. Patterns are fnmatch'ed against the entry's name; a trailing "/"
# matches folders only.
LEFT_OUT: tuple[tuple[str, str, str], ...] = (
    ("top", "generated/", "made again by Stash's Generate task"),
    ("top", "cache/", "Stash's cache"),
    ("top", "blobs/", "images: the archive stores them already"),
    ("top", "metadata/", "an export, made from the database"),
    ("top", "downloads/", "downloads"),
    ("top", "backups/", "database backups: the archive stores them already"),
    ("top", "tmp/", "temporary files"),
    ("top", "*.sqlite", "a database: the archive stores it already"),
    ("top", "*.sqlite-*", "a database's journal"),
    ("top", "*.sqlite.*", "a database backup: the archive stores it already"),
    ("top", "*.db", "a database: the archive stores it already"),
    ("top", "ffmpeg", "a download (Stash fetches ffmpeg again)"),
    ("top", "ffprobe", "a download (Stash fetches ffprobe again)"),
    ("top", "ffmpeg.exe", "a download (Stash fetches ffmpeg again)"),
    ("top", "ffprobe.exe", "a download (Stash fetches ffprobe again)"),
    ("any", "*.log", "a log"),
    ("any", "*.log.[0-9]*", "a log"),
    ("any", "__pycache__/", "Python's cache"),
    ("any", "*.pyc", "Python's cache"),
    ("any", ".git/", "a git checkout's history (the package manager installs again)"),
    ("any", "node_modules/", "installed again by npm"),
    ("any", "venv/", "a Python environment: installed again"),
    ("any", ".venv/", "a Python environment: installed again"),
    ("any", ".DS_Store", "a file manager's cache"),
    ("any", "Thumbs.db", "a file manager's cache"),
    ("any", "desktop.ini", "a file manager's cache"),
    ("any", "*-wal", "an SQLite journal"),
    ("any", "*-shm", "an SQLite journal"),
    ("any", "*-journal", "an SQLite journal"),
    ("any", "*.stash-backup-tmp-*", "our own temp file"),
)


class SettingsError(ValueError):
    """A settings line or file that is not what we write: damaged or hostile."""


@dataclass(frozen=True, order=True)
class SettingsFile:
    md5: str
    root: str
    path: str  # relative to its root, POSIX separators, never leaving it
    size: int
    mode: int  # the source's permission bits, as metadata (restored files are private: settings_restore)

    def line(self) -> str:
        return f"f {self.md5} {self.size} {self.mode:o} {self.root} {json.dumps(self.path)}\n"


_LINE = re.compile(r'^f ([0-9a-f]{32}) (\d{1,12}) ([0-7]{1,4}) ([a-z]+) ("(?:[^"\\]|\\.)*")$')


def parse_line(line: str, where: str) -> SettingsFile:
    """One settings line of a record, checked: a known root, a path that stays inside
    it, a bounded size. Raises SettingsError."""
    match = _LINE.match(line.rstrip("\n"))
    if not match:
        raise SettingsError(f"{where}: unexpected settings line {line[:60]!r}")
    md5, size, mode, root, quoted = match.groups()
    try:
        path = json.loads(quoted)
    except ValueError:
        raise SettingsError(f"{where}: unreadable settings path {quoted[:60]!r}") from None
    if root not in ROOTS:
        raise SettingsError(f"{where}: unknown settings root {root!r}")
    if not isinstance(path, str) or not safe_relative(path):
        raise SettingsError(f"{where}: settings path {quoted[:60]!r} would leave its folder")
    if int(size) > MAX_FILE_BYTES:
        raise SettingsError(f"{where}: settings file {path!r} is larger than {MAX_FILE_BYTES} bytes")
    return SettingsFile(md5, root, path, int(size), int(mode, 8) & 0o777)


def safe_relative(path: str) -> bool:
    """A relative POSIX path of plain names: no root, no drive, no `..` or `.`, no
    empty part, no backslash, no control character. Pure."""
    if not path or len(path) > MAX_PATH_CHARS or path.startswith("/") or "\\" in path:
        return False
    if any(ord(c) < 32 or c == "\x7f" for c in path) or ":" in path.split("/")[0]:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def why_left_out(name: str, is_dir: bool, top: bool) -> Optional[str]:
    """The LEFT_OUT reason for an entry of this name, or None. Pure."""
    for where, pattern, why in LEFT_OUT:
        if where == "top" and not top:
            continue
        wants_dir = pattern.endswith("/")
        if wants_dir != is_dir:
            continue
        if fnmatch.fnmatchcase(name, pattern.rstrip("/")):
            return why
    return None


@dataclass
class Sources:
    """Where Stash's settings are, as seen from here."""

    config_file: Path
    plugins: Optional[Path] = None  # default: <config folder>/plugins
    scrapers: Optional[Path] = None
    leave_out: dict[Path, str] = field(default_factory=dict)  # absolute path -> why (the database, our archive, ...)

    @property
    def config_folder(self) -> Path:
        return self.config_file.parent

    def roots(self) -> list[tuple[str, Path]]:
        """(root name, folder): the config folder, then the plugins and scrapers
        folders that are not inside it."""
        found = [(CONFIG, self.config_folder)]
        for name, folder in ((PLUGINS, self.plugins), (SCRAPERS, self.scrapers)):
            if folder and not _inside(folder, self.config_folder) and folder.is_dir():
                found.append((name, folder))
        return found


@dataclass
class Gathered:
    files: list[tuple[SettingsFile, Path]] = field(default_factory=list)  # sorted by (md5, root, path)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (root/path, why): only the notable ones
    roots: dict[str, str] = field(default_factory=dict)  # root name -> folder it came from
    total_bytes: int = 0  # of the files, kept as they are added (the bound is checked per file)


class TooLarge(Exception):
    pass


def gather(sources: Sources, warn: Callable[[str], None]) -> Optional[Gathered]:
    """Every settings file under the roots, hashed, with what was left out. None (and
    a warning) when the config file is not readable here or the folders are too large
    to be settings: the backup goes on without them."""
    if not os.access(sources.config_file, os.R_OK):
        warn(f"settings not backed up: {sources.config_file} is not readable here (run on Stash's host)")
        return None
    gathered = Gathered()
    leave_out = {_normal(p): why for p, why in sources.leave_out.items()}
    try:
        for root, folder in sources.roots():
            gathered.roots[root] = str(folder)
            for relative, path, info in _walk(folder, folder, leave_out, root, gathered):
                if info.st_size > MAX_FILE_BYTES:
                    gathered.left_out.append((f"{root}/{relative}", f"larger than {MAX_FILE_BYTES >> 20} MiB"))
                    continue
                _add(gathered, root, relative, path, info)
    except TooLarge as error:
        warn(f"settings not backed up: {error}")
        return None
    gathered.files.sort()
    for name, why in gathered.left_out[:WARNED_LEFT_OUT]:
        warn(f"settings: left out {name} ({why})")
    if len(gathered.left_out) > WARNED_LEFT_OUT:
        warn(f"settings: left out {len(gathered.left_out) - WARNED_LEFT_OUT} more file(s) of these kinds")
    return gathered


def _add(gathered: Gathered, root: str, relative: str, path: Path, info: os.stat_result) -> None:
    if len(gathered.files) >= MAX_FILES:
        raise TooLarge(f"more than {MAX_FILES} files under {gathered.roots[root]}: that is not settings alone")
    if gathered.total_bytes + info.st_size > MAX_TOTAL_BYTES:
        raise TooLarge(f"more than {MAX_TOTAL_BYTES >> 20} MiB under {gathered.roots[root]}")
    try:
        md5 = file_digest(path, "md5")
    except OSError as error:
        gathered.left_out.append((f"{root}/{relative}", f"unreadable: {error.strerror}"))
        return
    settings_file = SettingsFile(md5, root, relative, info.st_size, stat.S_IMODE(info.st_mode) & 0o777)
    gathered.files.append((settings_file, path))
    gathered.total_bytes += info.st_size


def _walk(
    folder: Path, root: Path, leave_out: dict[str, str], root_name: str, gathered: Gathered
) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Regular files under `folder`, never through a link, in name order."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as error:
        gathered.left_out.append((str(folder), f"unreadable: {error.strerror}"))
        return
    top = root_name == CONFIG and folder == root
    for entry in entries:
        path = Path(entry.path)
        relative = path.relative_to(root).as_posix()
        if _normal(path) in leave_out or not safe_relative(relative):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        is_dir = stat.S_ISDIR(info.st_mode)
        if why_left_out(entry.name, is_dir, top):
            continue
        if is_dir and _is_an_archive(path):
            continue
        if is_dir:
            yield from _walk(path, root, leave_out, root_name, gathered)
        elif stat.S_ISREG(info.st_mode):
            yield relative, path, info
        elif stat.S_ISLNK(info.st_mode):
            gathered.left_out.append((f"{root_name}/{relative}", "a symbolic link: not followed"))


def _is_an_archive(folder: Path) -> bool:
    """An archive of this tool (ours or another's) inside the config folder: its
    manifest beside its records."""
    return (folder / ARCHIVE_MANIFEST).is_file() and (folder / "backups").is_dir()


def _normal(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path))


def _inside(path: Path, folder: Path) -> bool:
    inner, outer = _normal(path), _normal(folder)
    return os.path.commonpath([inner, outer]) == outer


def summary(gathered: Gathered, new: int, new_bytes: int) -> dict:
    """What a record's header says of its settings."""
    return {
        "files": len(gathered.files),
        "bytes": gathered.total_bytes,
        "new_files": new,
        "new_bytes": new_bytes,
        "roots": dict(gathered.roots),
        "left_out": len(gathered.left_out),
    }


def target_path(folder: Path, settings_file: SettingsFile) -> Path:
    """Where a settings file goes under its root's folder on restore; the path was
    checked when the record was read (parse_line), and is checked again here."""
    if not safe_relative(settings_file.path):
        raise SettingsError(f"settings path {settings_file.path!r} would leave {folder}")
    return folder.joinpath(*settings_file.path.split("/"))


# The paths of Stash's config that name data kept elsewhere or made again (keys of
# `sources_for`'s `paths`), and why each is left out of the settings.
NAMED_PATHS = {
    "database": "the database: the archive stores it already",
    "backup_directory": "database backups: the archive stores them already",
    "generated": "made again by Stash's Generate task",
    "cache": "Stash's cache",
    "metadata": "an export, made from the database",
    "blobs": "images: the archive stores them already",
    "log_file": "a log",
    "ffmpeg": "a download",
    "ffprobe": "a download",
}


def sources_for(config_file: Path, paths: dict, archive_folder: Optional[Path]) -> Sources:
    """Sources from the paths Stash's config names (as the server reports them or as
    config.yml writes them; relative ones are relative to the config folder), with
    our own archive left out wherever it is."""
    folder = config_file.parent

    def resolved(value) -> Optional[Path]:
        if not value or not isinstance(value, str):
            return None
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else folder / path

    leave_out: dict[Path, str] = {}
    for key, why in NAMED_PATHS.items():
        path = resolved(paths.get(key))
        if path:
            leave_out[path] = why
    database = resolved(paths.get("database"))
    if database:
        for suffix in ("-wal", "-shm", "-journal"):
            leave_out[database.with_name(database.name + suffix)] = "the database's journal"
    if archive_folder:
        leave_out[archive_folder] = "this archive"
    return Sources(
        config_file,
        plugins=resolved(paths.get("plugins")) or folder / "plugins",
        scrapers=resolved(paths.get("scrapers")) or folder / "scrapers",
        leave_out=leave_out,
    )
