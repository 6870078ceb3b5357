"""The *Verify archive* job: every backup of the archive (or the files given) checked
again: its database, and every image it refers to present (re-hashed with read-data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core import stored
from ..core.archive import Archive, Entry, entry_from_name, utc_now
from ..core.errors import VerificationError
from ..core.reporting import Reporter
from ..core.verify import BackupReport, require_blobs, verify_backup
from ..server.api import UNKNOWN_SERVER, ServerInfo


@dataclass
class VerifySummary:
    checked: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    read_data: str = ""  # which blobs' contents were re-hashed: "", "all" or "N/M"

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        text = f"Verified {self.checked} backup(s): {self.checked - len(self.failed)} good, {len(self.failed)} bad"
        if self.read_data:
            text += "; blob contents read: " + ("all" if self.read_data == "all" else f"part {self.read_data}")
        return text + (f"; adopted {len(self.adopted)} unrecorded file(s)" if self.adopted else "")


def verify_archive(
    archive: Archive,
    level: str,
    report: Reporter,
    read_data: Optional[stored.ReadData] = None,
    stash: Optional[ServerInfo] = None,
) -> VerifySummary:
    """Every backup: stored ones (database and blobs, each blob looked at once; with
    `read_data` its content re-hashed) and older per-backup files. Given the server
    (`stash`, the plugin's verify), Stash's pre-migration backups are adopted first."""
    summary = VerifySummary()
    with archive.locked():
        if stash is not None:
            _adopt_from(archive, stash, level, report)
        entries = archive.entries()
        for problem in archive.manifest_problems:
            report.warning(problem)
        work = [(e, archive.path_of(e)) for e in entries if not e.is_stored]
        work += [(None, p) for p in archive.unregistered_files()]
        kept = [e for e in entries if e.is_stored]
        share = len(kept) / (len(kept) + len(work)) if kept else 0.0
        for index, (entry, path) in enumerate(work):
            step = report.phase(share + (1 - share) * index / len(work), share + (1 - share) * (index + 1) / len(work))
            summary.checked += 1
            _report_check(summary, report, path.name, _verify_one(archive, entry, path, level, step, summary))
        if kept:
            problems = _verify_stored(archive, kept, level, read_data, report.phase(0.0, share))
            for entry in kept:
                summary.checked += 1
                _record_check(archive, entry, level, "; ".join(problems[entry.file][:3]))
                _report_check(summary, report, entry.file, "; ".join(problems[entry.file][:3]))
            if read_data:
                summary.read_data = str(read_data)
    report.progress(1.0)
    return summary  # the caller shows summary.line(): the plugin answers it as its error when bad


def _report_check(summary: VerifySummary, report: Reporter, name: str, problem: str) -> None:
    if problem:
        summary.failed.append((name, problem))
        report.error(f"BAD {name}: {problem}")
    else:
        report.info(f"ok  {name}")


def _verify_stored(
    archive: Archive, entries: list[Entry], level: str, read_data: Optional[stored.ReadData], report: Reporter
) -> dict[str, list[str]]:
    """Each database, then every blob of every backup in one merged pass."""
    store = archive.store
    problems: dict[str, list[str]] = {e.file: [] for e in entries}
    readable = []
    for index, entry in enumerate(entries):
        step = report.phase(0.5 * index / len(entries), 0.5 * (index + 1) / len(entries))
        try:
            header = store.header(entry.file)
        except VerificationError as error:
            problems[entry.file].append(str(error))
            continue
        readable.append(entry.file)
        problems[entry.file] += stored.check_snapshot(store, header, level, step)
    blob_problems = stored.check_blobs(
        store, readable, read_data, report.phase(0.5, 1.0), total_hint=max((e.blob_count for e in entries), default=0)
    )
    for name, found in blob_problems.items():
        if found:
            problems[name].append(f"{len(found)} blob problem(s): {found[0]}")
    if read_data:
        for name, found in stored.check_packs(store, readable, read_data).items():
            problems[name] += found
    return problems


def _record_check(archive: Archive, entry: Entry, level: str, problem: str) -> None:
    entry.verified_at, entry.verified_level, entry.verified_ok, entry.verify_error = (
        utc_now(),
        level,
        not problem,
        problem,
    )
    archive.record(entry)


def _verify_one(
    archive: Archive, entry: Optional[Entry], path: Path, level: str, report: Reporter, summary: VerifySummary
) -> str:
    try:
        verified = verify_backup(
            path,
            level,
            expected_size=entry.size if entry else None,
            expected_sha256=entry.sha256 if entry else None,
            progress=report.bytes_progress("verifying"),
        )
        if verified.kind == "zip":
            require_blobs(verified, tolerated=entry.blobs_not_included if entry else 0)
    except VerificationError as error:
        if entry:
            entry.verified_at, entry.verified_level, entry.verified_ok, entry.verify_error = (
                utc_now(),
                level,
                False,
                str(error),
            )
            archive.record(entry)
        return str(error)
    if entry is None:
        entry = _entry(path.name, verified, UNKNOWN_SERVER, "adopted", level)
        summary.adopted.append(path.name)
    entry.verified_at, entry.verified_level, entry.verified_ok, entry.verify_error = utc_now(), level, True, ""
    archive.record(entry)
    return ""


def _entry(name: str, verified: BackupReport, info: ServerInfo, source: str, level: str) -> Entry:
    return Entry(
        file=name,
        size=verified.size,
        sha256=verified.sha256,
        **entry_from_name(name),
        kind=verified.kind,
        blob_count=verified.blob_count,
        includes_blobs=verified.kind == "zip",
        blobs_not_included=len(verified.blobs_not_included),
        source=source,
        server_version=info.version or "",
        verified_at=utc_now(),
        verified_level=level,
        verified_ok=True,
    )


def _adopt_from(archive: Archive, stash: ServerInfo, level: str, report: Reporter) -> None:
    """jobs/adopt, where this process reads Stash's folders (the plugin, on Stash's host)."""
    from .adopt import adopt_pre_upgrade, stash_backup_folders

    if not stash.database_path or stash.schema_version is None:
        return
    blobs = Path(stash.blobs_path) if stash.blobs_on_filesystem and stash.blobs_path else None
    adopt_pre_upgrade(
        archive,
        stash_backup_folders(stash.database_path, stash.backup_directory),
        Path(stash.database_path).name,
        stash.schema_version,
        [blobs] if blobs is not None and blobs.is_dir() else [],
        level,
        report,
    )
