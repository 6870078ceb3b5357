"""The *Backup database* job: Stash writes a backup into its own backup folder, and
with keep-last only the newest of those our task made are kept there."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core.archive import backup_files
from ..core.errors import StashBackupError, VerificationError
from ..core.naming import parse_backup_name
from ..core.reporting import Reporter, human_size
from ..core.sqlite_check import QUICK
from ..core.verify import verify_backup
from ..server.api import ServerInfo, StashAPI


@dataclass
class ServerBackup:
    path: Optional[Path]
    size: Optional[int]
    includes_blobs: bool


def backup_on_server(
    client: StashAPI, include_blobs: bool, report: Reporter, keep_last: int = 0, include_others: bool = False
) -> ServerBackup:
    """Stash's own backup into its backup folder, with blobs where the server can.
    Stash never removes those: with `keep_last`, the backups this task made there
    beyond the newest `keep_last` are removed (with `include_others`, Stash's own
    too), once the new one is checked."""
    info = client.server_info()
    with_blobs = include_blobs and info.blobs_on_filesystem and info.supports_include_blobs
    folder = _server_backup_folder(info)
    before = _backup_files(folder)
    report.progress(0.05, "backing up")
    client.backup_database(download=False, include_blobs=with_blobs if info.supports_include_blobs else None)
    made = sorted(_backup_files(folder) - before, key=lambda p: p.stat().st_mtime)
    path = made[-1] if made else None
    size = path.stat().st_size if path else None
    where = f"{path} ({human_size(size)})" if path else f"Stash's backup folder {folder or ''} (not readable from here)"
    report.info(f"Stash backed up its database{' with blobs' if with_blobs else ''} to {where}")
    if include_blobs and info.blobs_on_filesystem and not info.supports_include_blobs:
        report.warning(
            f"Stash {info.version} cannot include blobs in its own backup: use 'Download backup to archive' "
            "for a full backup with images"
        )
    if path:
        _remember_ours(path)
    if keep_last > 0:
        _keep_last_in_backup_folder(folder, path, keep_last, include_others, report)
    report.progress(1.0)
    return ServerBackup(path, size, with_blobs)


OURS_LEDGER = ".stash-backup-made.json"  # in Stash's backup folder: the backups our task made there


def _remember_ours(path: Path) -> None:
    _write_ours(path.parent, set(_ours(path.parent)) | {path.name})


def _write_ours(folder: Path, names) -> None:
    from ..core.atomic import write_bytes_atomic

    payload = json.dumps({"made_by_stash_backup": sorted(names)}, indent=1) + "\n"
    with contextlib.suppress(StashBackupError):  # readable but not writable here: nothing of ours to count later
        write_bytes_atomic(folder / OURS_LEDGER, payload.encode())


def _ours(folder: Path) -> list[str]:
    try:
        data = json.loads((folder / OURS_LEDGER).read_text(encoding="utf-8"))
        return [n for n in data.get("made_by_stash_backup", []) if isinstance(n, str)]
    except (OSError, ValueError, AttributeError):
        return []


def _keep_last_in_backup_folder(
    folder: Optional[Path], made: Optional[Path], keep_last: int, include_others: bool, report: Reporter
) -> None:
    from ..core.retention import plan_backup_folder

    if not made:
        report.warning(
            f"keep last {keep_last}: Stash's backup folder {folder or ''} is not readable here; nothing removed"
        )
        return
    try:
        verify_backup(made, QUICK, want_sha256=False)  # nothing goes before its replacement is proven good
    except VerificationError as error:
        report.warning(f"keep last {keep_last}: the new backup did not verify ({error}); nothing removed")
        return
    database_name = parse_backup_name(made.name).database_name
    ours = _ours(folder)
    doomed = plan_backup_folder(
        [p.name for p in _backup_files(folder)], ours, keep_last, database_name, include_others, protected=[made.name]
    )
    for name in doomed:
        try:
            (folder / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            report.warning(f"cannot remove {folder / name}: {error.strerror}")
            continue
        report.info(f"removed {folder / name} (keep last {keep_last} in Stash's backup folder)")
    if doomed:
        _write_ours(folder, [n for n in ours if (folder / n).exists()])


def _server_backup_folder(info: ServerInfo) -> Optional[Path]:
    if info.backup_directory:
        return Path(info.backup_directory)
    return Path(info.database_path).parent if info.database_path else None


def _backup_files(folder: Optional[Path]) -> set[Path]:
    return {path for path, _ in backup_files(folder)}
