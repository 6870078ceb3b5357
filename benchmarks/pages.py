"""Page-level database snapshots (issue 21), measured against restic: the archive's
real page store (core/pages.py, core/page_store.py) on a Stash-shaped library.

A real Stash v0.31.1 serves a Stash-shaped library (benchmarks/library.py); each night
about 1 % of rows change and about 50 images are added. Every night:
  - `stash-backup download`: the database Stash serves (its `VACUUM INTO`) stored as
    the pages no pack holds yet, plus the new blobs; growth is the archive's, on disk;
  - what today's gzip -1 snapshot of that database would have cost (the format before);
  - `restic backup --compression auto` of the same database file and blobs folder.
Then: restore of the newest database (pages reassembled with the SHA-256 checked,
against the gzip snapshot's decompression and `restic restore`, each made durable),
and one "hourly" run with 0.05 % of rows changed.

    python -m benchmarks.pages --quick                 # 16 MiB, 300 images, 3 nights
    python -m benchmarks.pages --size-mib 166 --blobs 4000 --nights 5

Needs restic (`apt-get install restic`; installed here when missing)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import cold_cache  # noqa: E402 (after the path is set)

MiB = 1 << 20
GOALS = {"growth": 0.4, "total": 0.5, "nightly": 0.7, "hourly %": 2.0, "restore": 1.0, "first night": 1.0}


@dataclass
class NightFigures:
    number: int
    database_bytes: int
    ours_seconds: float  # stash-backup download: pages + new blobs
    ours_rss: int
    ours_growth: int  # the archive on disk: packs, page list, record, new blobs
    new_pages: int  # bytes of packs the night added (record: snapshot.added)
    list_bytes: int
    gzip_bytes: int  # today's whole gzip -1 snapshot of the same database
    new_blob_bytes: int
    restic_seconds: float
    restic_growth: int


@dataclass
class Result:
    nights: list[NightFigures] = field(default_factory=list)
    restore: dict = field(default_factory=dict)
    hourly: dict = field(default_factory=dict)


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _restic_env(repo: Path) -> dict:
    return dict(
        os.environ,
        RESTIC_REPOSITORY=str(repo),
        RESTIC_PASSWORD="benchmark",
        RESTIC_CACHE_DIR=str(repo.parent / "restic-cache"),
    )


def ensure_restic() -> None:
    if not shutil.which("restic"):
        print("installing restic from Debian's packages", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "restic"], check=True, capture_output=True)


def bench_pages(database_bytes: int, blob_count: int, nights: int, work: Path, gzip: bool = True) -> Result:
    from benchmarks import library
    from benchmarks.archive import _env, _ours
    from benchmarks.harness import run_measured
    from tests.support.stash_server.build import NEW_VERSION, build
    from tests.support.stash_server.server import StashServer

    ensure_restic()
    lib = library.working_copy(library.library(database_bytes, blob_count), work / "stash")
    server = StashServer(build(NEW_VERSION), work / "stash", NEW_VERSION)
    ours, repo, source = work / "ours-archive", work / "restic-repo", work / "restic-source"
    source.mkdir()  # the night's database at one path, beside the blobs folder
    subprocess.run(["restic", "init", "-q"], env=_restic_env(repo), check=True, capture_output=True)
    result = Result()
    measure = (run_measured, _ours, _env, gzip)
    try:
        for number in range(1, nights + 1):
            if number > 1:
                library.night(lib, number, new_blob_share=50 / max(blob_count, 1), changed_row_share=0.01)
            result.nights.append(_night(number, lib, server, ours, repo, source, *measure))
            _print_night(result.nights[-1])
        result.restore = _bench_restore(ours, repo, source, work, run_measured)
        library.night(lib, nights + 1, new_blob_share=1 / max(blob_count, 1), changed_row_share=0.0005)
        hourly = _night(nights + 1, lib, server, ours, repo, source, *measure)
        result.hourly = {
            "database": hourly.database_bytes,
            "pages": hourly.new_pages + hourly.list_bytes,
            "list": hourly.list_bytes,
            "snapshot": hourly.gzip_bytes,
            "restic": hourly.restic_growth,
        }
    finally:
        server.stop()
    return result


def _night(number, lib, server, ours, repo, source, run_measured, ours_command, env, gzip=True) -> NightFigures:
    from stash_backup_plugin.core import snapshot
    from stash_backup_plugin.core.store import Store

    before, before_blobs = (_tree_bytes(ours), _tree_bytes(ours / "blobs")) if ours.exists() else (0, 0)
    server.start()
    try:
        cold_cache()
        today = run_measured(ours_command("download", "--url", server.url, "--dest", str(ours), "-q"), env=env())
    finally:
        server.stop()
    store = Store(ours)
    header = max(store.headers(), key=lambda h: h.added_at)
    database = source / "stash-go.sqlite"
    with open(database, "wb") as out:
        store.read_snapshot(header, out)
    gzip_bytes = 0  # not measured (--skip-gzip: a whole gzip -1 of a 1 GiB database each night costs 15 s)
    if gzip:
        with open(database, "rb") as plain, open(os.devnull, "wb") as nowhere:
            gzip_bytes = snapshot.compress(plain, nowhere).written
    before_restic = _tree_bytes(repo)
    cold_cache()
    restic = run_measured(
        ["restic", "backup", "-q", "--compression", "auto", str(database), str(lib.blobs)], env=_restic_env(repo)
    )
    return NightFigures(
        number,
        database.stat().st_size,
        today.seconds,
        today.max_rss,
        _tree_bytes(ours) - before,
        header.snapshot.added,
        header.snapshot.stored_size,
        gzip_bytes,
        _tree_bytes(ours / "blobs") - before_blobs,
        restic.seconds,
        _tree_bytes(repo) - before_restic,
    )


def _bench_restore(ours: Path, repo: Path, source: Path, work: Path, run_measured) -> dict:
    """The newest database into an empty place, page cache dropped, durable at the end:
    from its pages, from a gzip snapshot of it (the format before), and restic's."""
    from benchmarks.archive import _env
    from stash_backup_plugin.core import snapshot
    from stash_backup_plugin.core.store import Store

    newest = max(Store(ours).headers(), key=lambda h: h.added_at).name
    gzipped = work / "newest.gz"
    with open(source / "stash-go.sqlite", "rb") as plain, open(gzipped, "wb") as out:
        snapshot.compress(plain, out)
    target = work / "restore-place" / "stash-go.sqlite"
    commands = {
        "pages": [sys.executable, "-m", "benchmarks.pages", "restore", str(ours), newest, str(target)],
        "gzip": [sys.executable, "-m", "benchmarks.pages", "restore-gzip", str(gzipped), str(target)],
        "restic": [
            "bash",
            "-c",
            f"restic restore -q latest --target '{target.parent}' --include '{source / 'stash-go.sqlite'}' && sync",
        ],
    }
    times: dict = {which: [] for which in commands}
    for trial in range(3):
        order = list(commands) if trial % 2 == 0 else list(reversed(commands))
        for which in order:
            shutil.rmtree(target.parent, ignore_errors=True)
            target.parent.mkdir()
            cold_cache()
            env = _restic_env(repo) if which == "restic" else _env()
            times[which].append(run_measured(commands[which], env=env).seconds)
    shutil.rmtree(target.parent, ignore_errors=True)
    return {which: statistics.median(seconds) for which, seconds in times.items()}


def restore_pages(archive: Path, name: str, target: Path) -> None:
    """What stash-restore does with a page snapshot: reassemble it (SHA-256 checked), durably."""
    from stash_backup_plugin.core.store import Store

    store = Store(archive)
    with open(target, "w+b") as out:
        store.read_snapshot(store.header(name), out, durable=True)
        out.flush()
        os.fsync(out.fileno())


def restore_gzip(snapshot_file: Path, target: Path) -> None:
    """What stash-restore did with a gzip snapshot: decompress it (SHA-256 computed), durably."""
    from stash_backup_plugin.core import snapshot

    with open(snapshot_file, "rb") as source, open(target, "wb") as out:
        snapshot.decompress(source, out)
        out.flush()
        os.fsync(out.fileno())


def _print_night(night: NightFigures) -> None:
    print(
        f"  night {night.number}: database {night.database_bytes / MiB:.1f} MiB; download {night.ours_seconds:.2f}s,"
        f" peak RSS {night.ours_rss / MiB:.0f} MiB, archive +{night.ours_growth / MiB:.2f} MiB (new pages "
        f"{night.new_pages / MiB:.2f} MiB, list {night.list_bytes / 1024:.1f} KiB, blobs "
        f"{night.new_blob_bytes / MiB:.2f} MiB; a gzip snapshot would be {night.gzip_bytes / MiB:.2f} MiB); restic "
        f"+{night.restic_growth / MiB:.2f} MiB in {night.restic_seconds:.2f}s",
        flush=True,
    )


def bench_live_copies(database_bytes: int, blob_count: int, nights: int, work: Path) -> list[str]:
    """The same nights, but each snapshot taken with SQLite's online backup of the live
    file (what a run on Stash's host reads: snapshot --offline, open_unchanged) instead
    of Stash's `VACUUM INTO`, which repacks every page after the first changed row:
    unchanged pages stay byte-identical, so only pages that really changed are new."""
    import sqlite3

    from benchmarks import library
    from stash_backup_plugin.core import page_store

    lib = library.working_copy(library.library(database_bytes, blob_count), work / "live")
    archive = work / "live-pages"
    lines = [f"page-level snapshots of SQLite online-backup copies (not VACUUM INTO), {nights} nights + an hourly run:"]
    for number in range(1, nights + 2):
        hourly = number == nights + 1
        if number > 1:
            library.night(
                lib,
                number,
                new_blob_share=(1 if hourly else 50) / max(blob_count, 1),
                changed_row_share=0.0005 if hourly else 0.01,
            )
        copy = work / "live-copy.sqlite"
        source, target = sqlite3.connect(lib.database), sqlite3.connect(copy)
        source.backup(target)
        target.close()
        source.close()
        written = page_store.write_pages(archive, archive / "incoming", copy)
        page_store.commit_page_list(archive / "snapshots" / f"{number}.pages", written.listing)
        size, pages = copy.stat().st_size, written.digest.size // 4096
        copy.unlink()
        new = written.new_pack_bytes + len(written.listing)
        lines.append(
            f"  {'hourly' if hourly else f'night {number}'}: {written.new_pages} of {pages} pages new, "
            f"{new / MiB:.2f} MiB = {100 * new / size:.2f} % of the {size / MiB:.0f} MiB database"
        )
        print(lines[-1], flush=True)
    return lines


def report(result: Result) -> list[str]:
    later = result.nights[1:] or result.nights
    ours_growth = statistics.median(n.ours_growth for n in later)
    gzip_growth = statistics.median(n.gzip_bytes + n.new_blob_bytes for n in later)
    restic_growth = statistics.median(n.restic_growth for n in later)
    ours_total = sum(n.ours_growth for n in result.nights)
    gzip_total = sum(n.gzip_bytes + n.new_blob_bytes for n in result.nights)
    restic_total = sum(n.restic_growth for n in result.nights)
    first = result.nights[0]
    ours_night = statistics.median(n.ours_seconds for n in later)
    restic_night = statistics.median(n.restic_seconds for n in later)
    hourly, restore = result.hourly, result.restore
    return [
        f"page-level snapshots (the archive's store) vs restic --compression auto, {len(result.nights)} nights "
        f"(database {first.database_bytes / MiB:.0f} MiB):",
        f"  growth per night (median, nights 2+): archive {ours_growth / MiB:.2f} MiB, with gzip snapshots "
        f"{gzip_growth / MiB:.2f} MiB, restic {restic_growth / MiB:.2f} MiB: ratio {ours_growth / restic_growth:.2f}x "
        f"(goal <= {GOALS['growth']}x; gzip {gzip_growth / restic_growth:.2f}x)",
        f"  archive after {len(result.nights)} nights: {ours_total / MiB:.1f} MiB, with gzip snapshots "
        f"{gzip_total / MiB:.1f} MiB, restic {restic_total / MiB:.1f} MiB: ratio {ours_total / restic_total:.2f}x "
        f"(goal <= {GOALS['total']}x)",
        f"  nightly download (median) {ours_night:.2f}s, restic backup {restic_night:.2f}s: "
        f"{ours_night / restic_night:.2f}x; first night {first.ours_seconds:.2f}s, restic {first.restic_seconds:.2f}s",
        f"  download peak RSS: {max(n.ours_rss for n in result.nights) / MiB:.0f} MiB (goal <= 64 MiB at 2 GiB)",
        f"  restore of the newest database (cold cache, durable): pages {restore['pages']:.2f}s, gzip snapshot "
        f"{restore['gzip']:.2f}s, restic restore + sync {restore['restic']:.2f}s: pages/gzip "
        f"{restore['pages'] / restore['gzip']:.2f}x, pages/restic {restore['pages'] / restore['restic']:.2f}x",
        f"  hourly (0.05 % of rows): pages {hourly['pages'] / 1024:.0f} KiB (list {hourly['list'] / 1024:.1f} KiB) ="
        f" {100 * hourly['pages'] / hourly['database']:.2f} % of the database (goal <= {GOALS['hourly %']} %); a gzip"
        f" snapshot {100 * hourly['snapshot'] / hourly['database']:.1f} %; restic "
        f"{100 * hourly['restic'] / hourly['database']:.1f} %",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    restore = commands.add_parser("restore", help="(internal) reassemble one stored backup's database")
    restore.add_argument("archive", type=Path)
    restore.add_argument("name")
    restore.add_argument("target", type=Path)
    gzipped = commands.add_parser("restore-gzip", help="(internal) decompress a gzip snapshot")
    gzipped.add_argument("snapshot", type=Path)
    gzipped.add_argument("target", type=Path)
    parser.add_argument("--quick", action="store_true", help="16 MiB, 300 images, 3 nights (CI)")
    parser.add_argument("--size-mib", type=int, default=166)
    parser.add_argument("--blobs", type=int, default=4000)
    parser.add_argument("--nights", type=int, default=5)
    parser.add_argument("--skip-gzip", action="store_true", help="do not measure what whole gzip snapshots would cost")
    parser.add_argument(
        "--live-copy", action="store_true", help="also: snapshots taken with SQLite's online backup of the live file"
    )
    args = parser.parse_args(argv)
    if args.command in ("restore", "restore-gzip"):
        from stash_backup_plugin.core.memory import keep_freed_memory

        keep_freed_memory()  # as stash-restore does
    if args.command == "restore":
        restore_pages(args.archive, args.name, args.target)
        return 0
    if args.command == "restore-gzip":
        restore_gzip(args.snapshot, args.target)
        return 0
    size, blobs, nights = (16, 300, 3) if args.quick else (args.size_mib, args.blobs, args.nights)
    from benchmarks.data import CACHE

    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-pages-", dir=CACHE) as folder:
        lines = report(bench_pages(size * MiB, blobs, nights, Path(folder), gzip=not args.skip_gzip))
        if args.live_copy:
            lines += bench_live_copies(size * MiB, blobs, nights, Path(folder))
        for line in lines:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
