"""What a restore will do, decided from facts gathered beforehand. Pure logic: no
I/O, so every refusal and every step can be tested on its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.reporting import human_size
from .pathmap import Preview, outside_library
from .stash_config import DATABASE

SPACE_MARGIN = 1.05  # filesystems need a little room beyond the bytes themselves


@dataclass
class RestoreFacts:
    backup: Path
    backup_kind: str  # "sqlite", "zip" or "stored" (in the archive's store)
    backup_schema: Optional[int]  # None until the backup's database has been read
    database_bytes: int  # size of the database that will be written
    database: Path
    current_files: list[str]  # suffixes present: "" for the database, "-wal", ...
    current_schema: Optional[int]
    aside_folder: Path
    blobs_path: Optional[Path] = None
    blobs_storage: str = DATABASE
    blobs_in_backup: int = 0
    blobs_to_write: int = 0
    blob_bytes_to_write: int = 0
    blobs_already_present: int = 0
    blobs_only_on_disk: int = 0  # in the blobs folder but not in the backup: left in place
    blobs_referenced_missing: int = 0  # plain backup: referenced blobs not in the folder
    free_database_disk: Optional[int] = None
    free_blobs_disk: Optional[int] = None
    same_disk: bool = False
    allow_newer_schema: bool = False
    path_mapping: Optional[Preview] = None  # --map-path: what it rewrites (pathmap.preview)


@dataclass
class Plan:
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    refusal: Optional[str] = None


def build_plan(facts: RestoreFacts) -> Plan:
    plan = Plan()
    plan.refusal = (
        _schema_refusal(facts)
        or _blobs_refusal(facts)
        or space_refusal(facts)
        or (facts.path_mapping.refusal if facts.path_mapping else None)
    )
    _schema_notes(facts, plan)
    _blob_notes(facts, plan)
    _steps(facts, plan)
    if facts.path_mapping:
        _mapping_plan(facts.path_mapping, plan)
    return plan


def _mapping_plan(preview: Preview, plan: Plan) -> None:
    """The rewrite is a step of its own, right after the temp copy is written and
    checked (so before anything is swapped); what it covers, and what not, are notes."""
    exists = {True: "exists here", False: "does NOT exist here", None: "another OS's path: not checked"}
    lines = [
        f"\n       {c.mapping.old} -> {c.mapping.new}: {c.folders} folder(s), {c.files} file(s) "
        f"({c.mapping.new} {exists[c.new_exists]})"
        for c in sorted(preview.counts, key=lambda c: c.mapping.old)
    ]
    plan.steps.insert(
        1,
        "in that temp copy, rewrite the library paths in one transaction, then quick_check it again:" + "".join(lines),
    )
    if preview.uncovered_folders:
        more = preview.uncovered_trees - len(preview.uncovered_shown)
        plan.notes.append(
            f"{preview.uncovered_folders} folder(s) with {preview.uncovered_files} file(s) are under no "
            f"--map-path and keep their paths: {', '.join(preview.uncovered_shown)}"
            + (f" and {more} more folder tree(s)" if more > 0 else "")
        )
    missing = outside_library([c.mapping for c in preview.counts], preview.library_roots or [])
    if preview.library_roots is not None and missing:
        plan.notes.append(
            f"config.yml's library folders (stash:) do not hold {', '.join(missing)}: add them in "
            "Settings > Library before scanning, or Stash will not look there"
        )


def _schema_refusal(facts: RestoreFacts) -> Optional[str]:
    if facts.current_schema is None or facts.backup_schema is None or facts.backup_schema <= facts.current_schema:
        return None
    if facts.allow_newer_schema:
        return None
    return (
        f"the backup has schema {facts.backup_schema}, newer than the current database's {facts.current_schema}: "
        "the installed Stash may not open it. Upgrade Stash first, or pass --allow-newer-schema"
    )


def _blobs_refusal(facts: RestoreFacts) -> Optional[str]:
    if facts.blobs_in_backup and facts.blobs_path is None:
        return (
            f"the backup holds {facts.blobs_in_backup} blob(s) but no blobs folder is known: "
            "pass --blobs-path DIR (Stash's blobs_path)"
        )
    return None


def space_refusal(facts: RestoreFacts) -> Optional[str]:
    need_db = int(facts.database_bytes * SPACE_MARGIN)
    need_blobs = int(facts.blob_bytes_to_write * SPACE_MARGIN)
    if facts.same_disk:
        need_db, need_blobs = need_db + need_blobs, 0
    if facts.free_database_disk is not None and need_db > facts.free_database_disk:
        return (
            f"not enough free space beside {facts.database}: {human_size(need_db)} needed, "
            f"{human_size(facts.free_database_disk)} free. Free space first: nothing was changed"
        )
    if facts.free_blobs_disk is not None and need_blobs > facts.free_blobs_disk:
        return (
            f"not enough free space in {facts.blobs_path}: {human_size(need_blobs)} needed, "
            f"{human_size(facts.free_blobs_disk)} free. Free space first: nothing was changed"
        )
    return None


def _schema_notes(facts: RestoreFacts, plan: Plan) -> None:
    if facts.backup_schema is None:
        return
    if facts.current_schema is None:
        plan.notes.append(f"backup schema {facts.backup_schema}; no current database to compare with")
    elif facts.backup_schema < facts.current_schema:
        plan.notes.append(
            f"backup schema {facts.backup_schema} is older than the current {facts.current_schema}: "
            "Stash will ask to migrate the database when it starts (it makes its own backup first)"
        )
    elif facts.backup_schema > facts.current_schema:
        plan.notes.append(
            f"backup schema {facts.backup_schema} is NEWER than the current {facts.current_schema} "
            "(--allow-newer-schema): make sure the Stash you start is recent enough"
        )
    else:
        plan.notes.append(f"backup schema {facts.backup_schema} matches the current database")


def _blob_notes(facts: RestoreFacts, plan: Plan) -> None:
    if facts.blobs_in_backup and facts.blobs_storage.upper() == DATABASE:
        plan.notes.append(
            "the backup keeps images as files but config.yml says blobs_storage: DATABASE; "
            "set it to FILESYSTEM or Stash will not find them"
        )
    if facts.blobs_only_on_disk:
        plan.notes.append(
            f"{facts.blobs_only_on_disk} blob file(s) in {facts.blobs_path} are not in the backup: left in place"
        )
    if facts.blobs_referenced_missing:
        plan.notes.append(
            f"the backup refers to {facts.blobs_referenced_missing} image file(s) that it does not hold "
            f"and that are not in {facts.blobs_path or 'the blobs folder'}: those images will be missing"
        )


def _steps(facts: RestoreFacts, plan: Plan) -> None:
    source = f"{facts.backup}" + {
        "zip": " (database entry of the zip)",
        "stored": " (its compressed database in the archive)",
    }.get(facts.backup_kind, "")
    plan.steps.append(
        f"write {source} to a temp file beside {facts.database.name} "
        f"({human_size(facts.database_bytes)}), fsync it and check it again"
    )
    if facts.blobs_in_backup:
        plan.steps.append(
            f"extract {facts.blobs_to_write} blob(s) ({human_size(facts.blob_bytes_to_write)}) into "
            f"{facts.blobs_path}; keep {facts.blobs_already_present} identical one(s) already there"
        )
    name = facts.database.name
    if "-wal" in facts.current_files or "-journal" in facts.current_files:
        plan.steps.append(
            f"let SQLite fold the current {name}-wal into {name}, as it does when Stash stops "
            "(the file then holds all its data alone)"
        )
    if "" in facts.current_files:
        plan.steps.append(f"keep the current {name} in {facts.aside_folder} (never deleted; --undo puts it back)")
    plan.steps.append(f"rename the checked temp file to {facts.database}; fsync the folder")
    plan.steps.append("leave no -wal, -shm or -journal beside the restored database")
