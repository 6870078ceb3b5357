"""--map-path OLD=NEW: where a library moved (another drive, OS or container). Pure
logic, no I/O: parse the mappings, rewrite one path, and sum up what a rewrite of a
database's folders would do. The SQL that reads and writes them is in pathmap_db.py.

Stash keeps a file's location as its folder's absolute `folders.path` plus the file's
own `basename`, so rewriting the folders moves every file (and every folder-based or
zip gallery) with them. A Windows path (`C:\\Media\\a`, `\\\\nas\\share`) mapped to a POSIX
one (`/data/a`) has all its separators changed, and the other way round."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

from ..core.errors import UsageError

POSIX, WINDOWS = "posix", "windows"
SHOWN_UNCOVERED = 10  # uncovered folders listed by name; the rest are counted
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


@dataclass(frozen=True)
class PathMapping:
    old: str  # as written, trailing separators removed (a root keeps its own)
    new: str
    old_style: str  # POSIX or WINDOWS
    new_style: str

    @property
    def text(self) -> str:
        return f"{self.old}={self.new}"

    def covers(self, path: str) -> bool:
        """`path` is OLD or lies under it: a match ends at a separator, so `/media/a`
        does not cover `/media/ab`. Windows paths compare without case, as Windows does."""
        old, candidate = (self.old.lower(), path.lower()) if self.old_style == WINDOWS else (self.old, path)
        if candidate == old:
            return True
        prefix = old if old.endswith(_separator(self.old_style)) else old + _separator(self.old_style)
        return candidate.startswith(prefix)

    def rewrite(self, path: str) -> str:
        """`path` (covered) under NEW, its remaining separators in NEW's style."""
        rest = path[len(self.old) :].lstrip(_separator(self.old_style))
        if not rest:
            return self.new
        parts = rest.split(_separator(self.old_style))
        if self.old_style != self.new_style and any(_separator(self.new_style) in part for part in parts):
            raise UsageError(
                f"{path!r} has a name with {_separator(self.new_style)!r} in it, which cannot be a "
                f"name on {self.new_style.title()}: --map-path {self.text} cannot move it"
            )
        joined = _separator(self.new_style).join(parts)
        return (
            self.new + joined
            if self.new.endswith(_separator(self.new_style))
            else self.new + _separator(self.new_style) + joined
        )


def _separator(style: str) -> str:
    return "\\" if style == WINDOWS else "/"


def path_style(path: str) -> Optional[str]:
    """WINDOWS for `C:\\…` or `C:/…` and `\\\\server\\share…`, POSIX for `/…`; None when
    the path is not absolute (a mapping must name whole absolute paths)."""
    if _DRIVE.match(path) or path.startswith("\\\\"):
        return WINDOWS
    if path.startswith("/"):
        return POSIX
    return None


def _normalised(path: str, style: str) -> str:
    """One separator per style, no trailing one except a root's (`/`, `C:\\`)."""
    if style == WINDOWS:
        path = path.replace("/", "\\")
        unc = path.startswith("\\\\")
        path = re.sub(r"\\+", r"\\", path[2:] if unc else path)
        path = ("\\\\" if unc else "") + path
        root = 3 if _DRIVE.match(path) else len(path)
        return path[:root] + path[root:].rstrip("\\") if len(path) > root else path
    path = re.sub("/+", "/", path)
    return path.rstrip("/") or "/"


def parse_mapping(text: str) -> PathMapping:
    """OLD=NEW, split at the first `=` (so OLD cannot hold one; NEW can)."""
    old, equals, new = text.partition("=")
    old_style, new_style = path_style(old.strip()), path_style(new.strip())
    if not equals or not old_style or not new_style:
        raise UsageError(
            f"--map-path {text!r}: give OLD=NEW, both absolute paths "
            "(e.g. --map-path 'C:\\Media=/data/media' or --map-path /media/a=/data/library)"
        )
    return PathMapping(_normalised(old.strip(), old_style), _normalised(new.strip(), new_style), old_style, new_style)


def parse_mappings(texts: Iterable[str]) -> list[PathMapping]:
    """The mappings, longest OLD first (so the longest matching prefix wins). The
    same OLD twice is refused: which NEW was meant cannot be told."""
    mappings = [parse_mapping(text) for text in texts]
    seen: dict[str, PathMapping] = {}
    for mapping in mappings:
        key = mapping.old.lower() if mapping.old_style == WINDOWS else mapping.old
        if key in seen:
            raise UsageError(
                f"--map-path {seen[key].text} and --map-path {mapping.text} map the same folder: give each OLD once"
            )
        seen[key] = mapping
    return sorted(mappings, key=lambda m: len(m.old), reverse=True)


def mapping_for(path: str, mappings: list[PathMapping]) -> Optional[PathMapping]:
    """The mapping with the longest OLD that covers `path` (mappings as parse_mappings
    sorts them), or None."""
    return next((m for m in mappings if m.covers(path)), None)


def map_path(path: str, mappings: list[PathMapping]) -> Optional[str]:
    mapping = mapping_for(path, mappings)
    return mapping.rewrite(path) if mapping else None


def basename(path: str) -> str:
    """The last name of a path in either style (a root is its own), as Stash's
    `folders.basename` (schema 84+) holds it."""
    style = path_style(path) or POSIX
    trimmed = path.rstrip(_separator(style))
    return trimmed.rsplit(_separator(style), 1)[-1] if trimmed else path


# --- what a rewrite does ----------------------------------------------------------------


@dataclass
class MappingCount:
    mapping: PathMapping
    folders: int = 0
    files: int = 0
    new_exists: Optional[bool] = None  # None: NEW is another OS's path, not checkable here


@dataclass
class Preview:
    """What a rewrite of the folders would do, and what stops it."""

    counts: list[MappingCount]
    uncovered_folders: int = 0
    uncovered_files: int = 0
    uncovered_trees: int = 0  # the uncovered folders not inside another uncovered one
    uncovered_shown: list[str] = field(default_factory=list)  # the first of those trees, by their top folder
    collision: Optional[str] = None  # two folders would get one path
    unmappable: Optional[str] = None  # a name NEW's OS cannot hold
    library_roots: Optional[list[str]] = None  # the target config.yml's `stash:` folders, when known

    @property
    def refusal(self) -> Optional[str]:
        unused = [c.mapping.text for c in self.counts if not c.folders]
        if unused:
            return (
                f"--map-path {unused[0]} matches no folder of the backup's library: check OLD (the dry run "
                "lists the folders no mapping covers)"
            )
        return self.collision or self.unmappable


def preview(folders: Iterable[tuple[str, int]], mappings: list[PathMapping]) -> Preview:
    """From (path, number of files) of every folder: per mapping, the folders and files
    it moves; the folders no mapping covers; a clash of two paths made one."""
    counts = {m: MappingCount(m) for m in mappings}
    result = Preview(list(counts.values()))
    final_paths: dict[str, str] = {}
    uncovered: list[str] = []
    for path, files in folders:
        mapping = mapping_for(path, mappings)
        if mapping is None:
            final, result.uncovered_folders, result.uncovered_files = (
                path,
                result.uncovered_folders + 1,
                result.uncovered_files + files,
            )
            uncovered.append(path)
        else:
            counts[mapping].folders += 1
            counts[mapping].files += files
            try:
                final = mapping.rewrite(path)
            except UsageError as error:
                result.unmappable = result.unmappable or str(error)
                continue
        if final in final_paths and result.collision is None:
            result.collision = (
                f"{final_paths[final]!r} and {path!r} would both become {final!r}: "
                "a folder of that path is already in the library, or two mappings meet"
            )
        final_paths.setdefault(final, path)
    tops = _top_folders(uncovered)
    result.uncovered_trees, result.uncovered_shown = len(tops), tops[:SHOWN_UNCOVERED]
    return result


def _top_folders(paths: list[str]) -> list[str]:
    """The uncovered folders that are not inside another uncovered one: the trees to name."""
    tops: list[str] = []
    for path in sorted(paths):
        style = path_style(path) or POSIX
        if tops and (path == tops[-1] or path.startswith(tops[-1].rstrip(_separator(style)) + _separator(style))):
            continue
        tops.append(path)
    return tops


def map_library_setting(stash_setting, mappings: list[PathMapping]) -> list:
    """config.yml's `stash:` list (library folders: {path, excludevideo, excludeimage})
    with each covered path rewritten; for a config.yml restored from a backup. An
    entry of another shape is kept as it is."""
    if not isinstance(stash_setting, list):
        return stash_setting
    rewritten = []
    for entry in stash_setting:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            mapped = map_path(entry["path"], mappings)
            entry = dict(entry, path=mapped) if mapped else entry
        rewritten.append(entry)
    return rewritten


def library_roots(stash_setting) -> list[str]:
    """The library folders config.yml's `stash:` names (other shapes ignored)."""
    if not isinstance(stash_setting, list):
        return []
    return [e["path"] for e in stash_setting if isinstance(e, dict) and isinstance(e.get("path"), str)]


def outside_library(mappings: list[PathMapping], roots: list[str]) -> list[str]:
    """Each NEW that no library folder of the target's config.yml holds: Stash would
    not scan it (Settings > Library adds it)."""
    lost = []
    for mapping in mappings:
        style = mapping.new_style
        holders = [PathMapping(_normalised(r, style), r, style, style) for r in roots if path_style(r) == style]
        if not any(h.covers(mapping.new) for h in holders):
            lost.append(mapping.new)
    return lost
