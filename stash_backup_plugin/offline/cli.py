"""stash-restore: the offline restore, for when Stash is stopped.

    stash-restore stash-go.sqlite.85.20261126_180102.zip --dry-run
    stash-restore stash-go.sqlite.85.20261126_180102.zip --yes
    stash-restore --undo --yes
    stash-restore --list
    stash-restore --salvage broken.sqlite --output recovered.sqlite
    stash-restore stash-go.sqlite.85.20261126_180102.zip --map-path 'D:\\Media=/data/media' --dry-run
    stash-restore NAME --archive DIR --with-settings --config ~/.stash/config.yml  # a new machine

Standard library and PyYAML only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

# What parsing needs, and no more: the restore engine, the salvage and the config
# reader are imported by the mode that uses them, so that --help is instant.
from ..core.errors import UsageError, VerificationError
from ..core.memory import keep_freed_memory
from ..core.naming import is_anonymised_name
from ..core.sqlite_check import CHECK_LEVELS, QUICK
from ..core.terminal import TerminalReporter, run_command

if TYPE_CHECKING:  # annotations only: the config reader is imported by the mode that uses it
    from .stash_config import Target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stash-restore",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:10]),
    )
    parser.add_argument("backup", nargs="?", help="backup file, or its name in the backup folder or archive")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--undo", action="store_true", help="put back the database the last restore moved aside")
    modes.add_argument("--list", action="store_true", help="list backups in Stash's backup folder and the archive")
    modes.add_argument("--salvage", type=Path, metavar="DB", help="recover what can be read from a damaged database")
    parser.add_argument("--output", type=Path, help="with --salvage: the new file to write")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="Stash's config.yml (default: found as Stash finds it)")
    where.add_argument("--database", type=Path, help="the database file to restore into (instead of --config)")
    parser.add_argument("--blobs-path", type=Path, help="Stash's blobs folder (overrides config.yml)")
    parser.add_argument("--archive", type=Path, help="the plugin's archive folder, to find backups by name")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument(
        "--allow-newer-schema",
        action="store_true",
        help="restore a backup whose schema is newer than the current database's",
    )
    parser.add_argument(
        "--allow-anonymised",
        action="store_true",
        help="restore Stash's anonymised database (given by its path) over the real one",
    )
    parser.add_argument(
        "--allow-salvaged",
        action="store_true",
        help="restore a salvaged backup (what SQLite recovered from a damaged database)",
    )
    parser.add_argument(
        "--stash-stopped", action="store_true", help="you confirm Stash is stopped, where this machine cannot check it"
    )
    parser.add_argument(
        "--check", choices=CHECK_LEVELS, default=QUICK, help="SQLite check of the backup: quick (default), full or none"
    )
    parser.add_argument("--json", action="store_true", help="with --list: JSON output")
    parser.add_argument(
        "--with-settings",
        action="store_true",
        help="restore Stash's settings too (config.yml, plugins, scrapers, custom CSS/JS), the current "
        "ones kept aside; on a new machine, give --config where config.yml is to go",
    )
    parser.add_argument(
        "--map-path",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="the library moved: rewrite folder paths under OLD to NEW in the restored database "
        "(repeatable; the longest OLD wins; Windows and POSIX paths both work)",
    )
    return parser


def _target(args, report) -> Target:
    from .stash_config import FILESYSTEM, Target, find_config_file, load_config

    config = None
    if args.database:
        database = args.database.expanduser().resolve()
        blobs_storage = FILESYSTEM if args.blobs_path else "DATABASE"
    else:
        if args.config and not args.config.expanduser().exists() and args.backup:
            raise UsageError(
                f"config file {args.config} does not exist: give the path of Stash's config.yml (on a new "
                "machine, add --with-settings to restore the backup's settings there)"
            )
        config = load_config(find_config_file(args.config))
        database = config.database
        blobs_storage = config.blobs_storage
        report.info(f"using {config.path}: database {database}")
    blobs = args.blobs_path.expanduser().resolve() if args.blobs_path else (config.blobs_path if config else None)
    if config:
        for written, used in config.relocated:
            report.info(f"config.yml names {written}, which does not exist here; using {used}")
    return Target(database, blobs, blobs_storage, config)


def _config_to_create(args) -> bool:
    """A new machine: --with-settings, and --config names a config.yml that does not
    exist yet: the backup's own config.yml (and its other settings) go there. Without
    --with-settings a missing --config is refused as before: a mistyped path must not
    become a new Stash somewhere else."""
    missing = bool(args.config and not args.config.expanduser().exists())
    return missing and args.with_settings and bool(args.backup) and not args.undo


def _new_machine_target(args, mappings: list, report) -> Target:
    """The target as the backup's config.yml describes it once restored at --config."""
    from ..core.store import Store
    from .restore import is_stored_backup
    from .settings_restore import restored_config
    from .stash_config import DEFAULT_DATABASE_NAME, FILESYSTEM, Target

    config_path = args.config.expanduser().absolute()
    provisional = Target(config_path.parent / DEFAULT_DATABASE_NAME)
    backup = _resolve_backup(args.backup, args, provisional)
    if not is_stored_backup(backup):
        raise UsageError(
            f"{config_path} does not exist, and {backup.name} is not a backup in an archive, which alone "
            "holds Stash's settings: give the config.yml of this machine's Stash"
        )
    store = Store(backup.parent.parent)
    name = backup.name[: -len(".record")]
    files = store.settings(name)
    if not files:
        raise UsageError(
            f"{config_path} does not exist, and {backup.name} holds no settings: give the config.yml of "
            "this machine's Stash (start Stash once to make one)"
        )
    old_folder = store.header(name).settings.get("roots", {}).get("config", "")
    config = restored_config(store, files, config_path, mappings, old_folder).config
    report.info(f"{config_path} does not exist: restoring the backup's settings there (a new machine)")
    blobs = args.blobs_path.expanduser().resolve() if args.blobs_path else config.blobs_path
    storage = FILESYSTEM if args.blobs_path else config.blobs_storage
    report.info(f"the restored config.yml puts the database at {config.database}")
    return Target(config.database, blobs, storage, config)


def _backup_folders(args, target: Target) -> list[Path]:
    from ..core.archive import DEFAULT_FOLDER_NAME

    folders = []
    if target.config:
        folders.append(target.config.backup_directory)
    folders.append(target.database.parent)
    if args.archive:
        folders.append(args.archive.expanduser())
    elif target.config:  # the plugin's Archive folder setting, and its default
        folders += target.config.plugin_archive_folders + [target.config.folder / DEFAULT_FOLDER_NAME]
    unique = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def _resolve_backup(name: str, args, target: Target) -> Path:
    given = Path(name).expanduser()
    if given.is_file():
        return _stored_of_snapshot(given) or given.resolve()
    if given.parent.is_dir() and _stored_record(given.parent, given.name):  # <archive>/<name> of a stored backup
        return _stored_record(given.parent, given.name).resolve()
    if is_anonymised_name(given.name):  # never offered by --list, never found by name alone
        raise UsageError(f"{name!r} is Stash's anonymised database, not a backup: it is found only by its path")
    for folder in _backup_folders(args, target):
        candidate = folder / name
        if candidate.is_file():
            return candidate
        stored = _stored_record(folder, name)
        if stored:
            return stored
    searched = ", ".join(str(f) for f in _backup_folders(args, target))
    raise UsageError(f"backup {name!r} not found (as a path, or in {searched}): see stash-restore --list")


def _stored_record(folder: Path, name: str) -> Optional[Path]:
    """A stored backup of the archive in `folder`, by its name (a `.zip` added by habit is ignored)."""
    from ..core.store import Store

    store = Store(folder)
    for candidate in (name, name[:-4] if name.endswith(".zip") else None):
        if candidate and store.record_path(candidate).is_file():
            return store.record_path(candidate)
    return None


def _stored_of_snapshot(path: Path) -> Optional[Path]:
    """`<archive>/snapshots/<name>.gz` (or `.pages`, a page list) is the database of a
    stored backup: the user means that backup, so its record is restored (the record
    gives the snapshot's size and SHA-256 to check, and the images that belong with
    it). A snapshot no record names is refused; a gzip one with the command that
    recovers it by hand."""
    import shlex
    from ..core.pages import LIST_SUFFIX
    from ..core.store import SNAPSHOT_SUFFIX, SNAPSHOTS

    suffix = next((s for s in (SNAPSHOT_SUFFIX, LIST_SUFFIX) if path.name.endswith(s)), None)
    if path.parent.name != SNAPSHOTS or suffix is None:
        return None
    archive, name = path.parent.parent, path.name[: -len(suffix)]
    record = _stored_record(archive, name)
    if record is None:
        plain = shlex.quote(name + ".sqlite")
        by_hand = (
            f" To restore its database anyway: gzip -dc {shlex.quote(str(path))} > {plain} && stash-restore {plain}"
            if suffix == SNAPSHOT_SUFFIX
            else ""
        )
        raise UsageError(
            f"{path} is a database snapshot that no backup in {archive} records (its backup was "
            "forgotten, and the next prune removes it): nothing checks it, and no images go with it." + by_hand
        )
    return record.resolve()


def _stored_rows(folder: Path) -> list[dict]:
    """The stored backups of the archive in `folder`, as --list shows them."""
    from ..core.archive import Archive
    from ..core.store import Store

    if not Store(folder).exists():
        return []
    return [
        {
            "path": str(Archive(folder).path_of(e)),
            "created": e.created.replace("T", " "),
            "schema_version": e.schema_version,
            "size": e.size,
            "blobs": e.includes_blobs,
            "verified": ("yes" if e.verified_ok else "FAILED") if e.verified_at else "no",
        }
        for e in Archive(folder).entries()
        if e.is_stored
    ]


def _confirm_on_terminal(question: str) -> bool:
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")


def cmd_list(args, target: Target) -> int:
    from ..core.archive import Archive, backup_files
    from ..core.reporting import human_size

    rows = []
    for folder in _backup_folders(args, target):
        if not folder.is_dir():
            continue
        recorded = {e.file: e for e in Archive(folder).entries()} if (folder / "manifest.json").exists() else {}
        for path, parsed in backup_files(folder):
            entry = recorded.get(path.name)
            rows.append(
                {
                    "path": str(path),
                    "created": parsed.created.isoformat(sep=" "),
                    "schema_version": parsed.schema_version,
                    "size": path.stat().st_size,
                    "blobs": entry.includes_blobs if entry else parsed.is_zip,
                    "verified": ("yes" if entry.verified_ok else "FAILED") if entry and entry.verified_at else "no",
                }
            )
        rows += _stored_rows(folder)
    rows.sort(key=lambda r: r["created"], reverse=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no backups found in " + ", ".join(str(f) for f in _backup_folders(args, target)))
    for row in rows:
        print(
            f"{row['created']}  schema {row['schema_version']:<3}  {human_size(row['size']):>10}  "
            f"{'blobs' if row['blobs'] else 'db only':<7}  verified: {row['verified']:<6}  {row['path']}"
        )
    return 0


def cmd_salvage(args, report) -> int:
    from .salvage import salvage

    if not args.output:
        raise UsageError("--salvage needs --output FILE: where to write the recovered copy")
    result = salvage(args.salvage.expanduser(), args.output.expanduser())
    report.info(f"recovered into {result.output} with {result.method}; the original was not modified")
    print(f"{'table':<32} {'original':>10} {'recovered':>10}")
    for table, (original, copy) in result.rows.items():
        show = lambda n: "unreadable" if n is None else str(n)  # noqa: E731
        print(f"{table:<32} {show(original):>10} {show(copy):>10}")
    return 0


def _run(args, report) -> int:
    from .pathmap import parse_mappings

    if args.map_path and (args.undo or args.list or args.salvage):
        raise UsageError("--map-path goes with a BACKUP to restore, not with --undo, --list or --salvage")
    mappings = parse_mappings(args.map_path)  # a malformed one stops before anything is read
    if args.salvage:
        return cmd_salvage(args, report)
    new_machine = _config_to_create(args)
    target = _new_machine_target(args, mappings, report) if new_machine else _target(args, report)
    if args.list:
        return cmd_list(args, target)
    from . import restore as engine

    options = engine.RestoreOptions(
        path_mappings=mappings,
        dry_run=args.dry_run,
        assume_yes=args.yes,
        allow_newer_schema=args.allow_newer_schema,
        stash_stopped=args.stash_stopped,
        check_level=args.check,
        allow_anonymised=args.allow_anonymised,
        allow_salvaged=args.allow_salvaged,
        with_settings=args.with_settings,
        confirm=_confirm_on_terminal if sys.stdin.isatty() else None,
    )
    if args.undo:
        engine.undo(target, options, report)
        return 0
    if not args.backup:
        raise UsageError("give a BACKUP to restore (see stash-restore --list), or --undo, --list or --salvage")
    try:
        engine.restore(_resolve_backup(args.backup, args, target), target, options, report)
    except VerificationError as error:
        raise VerificationError(f"{error}. The backup was refused: nothing was changed") from None
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    report = TerminalReporter()
    # Stash is stopped: its time counts, not a peak beside it (core/memory.py).
    return run_command(
        report,
        lambda: _run(args, report),
        interrupted="interrupted: run the same command again to finish or roll back",
        tune_memory=keep_freed_memory,
    )


if __name__ == "__main__":
    sys.exit(main())
