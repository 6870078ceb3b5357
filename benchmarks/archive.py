"""The archive's store, night after night, against what a user would script: a real
Stash v0.31 serving a Stash-shaped library (benchmarks/library.py), changed each night
(about 1 % new blobs, 0.5 % of rows), backed up by our CLI on Stash's host (the
plugin's path: blobs read from Stash's folder) and by `curl` of Stash's own backup +
`rsync -a --ignore-existing` of the blobs folder, alternating which goes first.

Reported: nightly time (and compression's own cost), the archive's size after N
nights against (each blob once + the N snapshots) and against per-backup zips, a
restore into an empty blobs folder against the same backup as a Stash v0.31 zip, and
peak memory (RSS) as the number of blobs grows."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import library
from benchmarks.harness import Sample, cold_cache, run_measured

PY = sys.executable
MiB = 1 << 20
ZIP_ENTRY_OVERHEAD = 30 + 46 + 2 * 46  # local header, central directory entry, a blob's name in each


@dataclass
class Night:
    number: int
    ours: Sample
    reference: Sample
    compressing_reference: Sample
    uncompressed: Sample  # ours with --no-compress
    compress_seconds: float
    database_bytes: int


@dataclass
class ArchiveResult:
    nights: list[Night] = field(default_factory=list)
    archive_bytes: int = 0
    archive_disk_bytes: int = 0
    ideal_bytes: int = 0
    zips_bytes: int = 0
    reference_bytes: int = 0
    restore: list[tuple[str, Sample]] = field(default_factory=list)
    blob_count: int = 0


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))


def _ours(*args: str) -> list[str]:
    return [PY, "-m", "stash_backup_plugin", *args]


def _reference_command(url: str, blobs: Path, target: Path, compress: bool = False) -> list[str]:
    """What a user would script: ask Stash for a backup, curl it (piped through
    `gzip -1` when `compress`: the user who compresses too), rsync the blobs."""
    query = '{"query": "mutation { backupDatabase(input: {download: true}) }"}'
    fetch = (
        'curl -sf "$link" | gzip -1 > \'{db}/\'"$(basename "$link").gz"'
        if compress
        else 'curl -sf -o \'{db}/\'"$(basename "$link")" "$link"'
    ).format(db=target / "db")
    script = (
        f"set -eo pipefail; link=$(curl -sf -H 'Content-Type: application/json' --data '{query}' '{url}/graphql' "
        '| sed -E \'s/.*"backupDatabase":"([^"]+)".*/\\1/\'); '
        f"{fetch}; rsync -a --ignore-existing '{blobs}/' '{target}/blobs/'"
    )
    return ["bash", "-c", script]


def _compress_seconds(database: Path) -> float:
    """Compression alone, as the store does it (several threads), into nothing."""
    from stash_backup_plugin.core import snapshot

    class Null(io.RawIOBase):
        def write(self, data) -> int:
            return len(data)

    started = time.perf_counter()
    with open(database, "rb") as source:
        snapshot.compress(source, Null())
    return time.perf_counter() - started


def _take_databases(folder: Path, count_factor: int = 1) -> int:
    """The reference's databases of the night (their bytes, times `count_factor`),
    removed: at the issue's scale 30 uncompressed 1 GiB copies would not fit beside
    the rest, and only their size is reported."""
    total = 0
    for path in folder.iterdir():
        total += path.stat().st_size * count_factor
        path.unlink()
    return total


def _bytes(folder: Path) -> tuple[int, int]:
    """(apparent bytes, bytes on disk) of every file under `folder`."""
    apparent = disk = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            info = path.stat()
            apparent += info.st_size
            disk += info.st_blocks * 512
    return apparent, disk


def _blob_sizes(blobs: Path) -> dict:
    return {p.name: p.stat().st_size for p in blobs.glob("??/??/*")}


def bench_nights(database_bytes: int, blob_count: int, nights: int, work: Path) -> ArchiveResult:
    from tests.support.stash_server.build import NEW_VERSION, build
    from tests.support.stash_server.server import StashServer

    pristine = library.library(database_bytes, blob_count)
    stash_root = work / "stash"
    lib = library.working_copy(pristine, stash_root)
    server = StashServer(build(NEW_VERSION), stash_root, NEW_VERSION)
    ours_archive, reference, gz_reference = work / "ours-archive", work / "reference", work / "reference-gz"
    plain_archive = work / "ours-uncompressed"
    for folder in (reference, gz_reference):
        (folder / "db").mkdir(parents=True)
        (folder / "blobs").mkdir()
    reference_databases = 0
    result = ArchiveResult()
    seen_blobs: dict = {}
    zips = 0
    try:
        for number in range(1, nights + 1):
            if number > 1:
                library.night(lib, number)
            server.start()
            database_size = lib.database.stat().st_size
            ours_cmd = _ours("download", "--url", server.url, "--dest", str(ours_archive), "-q")
            plain_cmd = _ours("download", "--url", server.url, "--dest", str(plain_archive), "-q", "--no-compress")
            order = [
                ("ours", ours_cmd),
                ("reference", _reference_command(server.url, lib.blobs, reference)),
                ("plain", plain_cmd),
                ("gzip", _reference_command(server.url, lib.blobs, gz_reference, compress=True)),
            ]
            samples = {}
            for which, command in order if number % 2 else order[::-1]:
                samples[which] = run_measured(command, env=_env())
            server.stop()
            reference_databases += _take_databases(reference / "db") + _take_databases(gz_reference / "db", 0)
            _take_databases(plain_archive / "snapshots", 0)  # timed only: its uncompressed nights need no disk
            sizes = _blob_sizes(lib.blobs)
            seen_blobs.update(sizes)
            zips += database_size + sum(sizes.values()) + ZIP_ENTRY_OVERHEAD * (len(sizes) + 1)
            night = Night(
                number,
                samples["ours"],
                samples["reference"],
                samples["gzip"],
                samples["plain"],
                _compress_seconds(lib.database),
                database_size,
            )
            result.nights.append(night)
            print(
                f"  night {number:>2}: ours {night.ours.seconds:6.2f}s (peak RSS {night.ours.max_rss / MiB:5.1f} MiB)"
                f"  curl+rsync {night.reference.seconds:6.2f}s  ratio {night.ours.seconds / night.reference.seconds:4.2f}x"
                f"  curl|gzip -1+rsync {night.compressing_reference.seconds:6.2f}s"
                f"  ours --no-compress {night.uncompressed.seconds:6.2f}s"
                f"  compression alone {night.compress_seconds:5.2f}s",
                flush=True,
            )
        result.archive_bytes, result.archive_disk_bytes = _bytes(ours_archive)
        # the databases as the store keeps them: page lists and the packs of their pages
        # (gzip snapshots before issue 21); the rest (records, manifest) is the overhead
        databases = [p for folder in ("snapshots", "packs") for p in (ours_archive / folder).rglob("*") if p.is_file()]
        result.ideal_bytes = sum(seen_blobs.values()) + sum(p.stat().st_size for p in databases)
        result.zips_bytes = zips
        result.reference_bytes = _bytes(reference)[0] + reference_databases
        result.blob_count = len(_blob_sizes(lib.blobs))
        result.restore = _bench_restore(ours_archive, stash_root, work)
    finally:
        server.stop()
    return result


def _bench_restore(archive: Path, stash_root: Path, work: Path) -> list[tuple[str, Sample]]:
    """The newest backup into an empty blobs folder and a fresh database place: from
    the store, and from the same backup exported as a Stash v0.31 zip (today's)."""
    newest = sorted(p.name[: -len(".record")] for p in (archive / "backups").glob("*.record"))[-1]
    exported = work / "today.zip"
    subprocess.run(
        _ours("export", newest, "--output", str(exported), "--dest", str(archive), "-q"),
        env=_env(),
        check=True,
        capture_output=True,
    )
    place = work / "restore-place"
    samples = []
    for trial in range(2):
        for label, backup in (
            (("store", newest), ("zip", str(exported)))
            if trial % 2 == 0
            else (("zip", str(exported)), ("store", newest))
        ):
            shutil.rmtree(place, ignore_errors=True)
            (place / "blobs").mkdir(parents=True)
            config = place / "config.yml"
            config.write_text(
                f"database: {place / 'stash-go.sqlite'}\nblobs_path: {place / 'blobs'}\n"
                f"blobs_storage: FILESYSTEM\nport: 1\n"
            )
            command = [
                PY,
                "-m",
                "stash_backup_plugin.offline",
                backup,
                "--config",
                str(config),
                "--archive",
                str(archive),
                "--yes",
            ]
            cold_cache()
            samples.append((label, run_measured(command, env=_env())))
    shutil.rmtree(place, ignore_errors=True)
    return samples


def report(result: ArchiveResult, database_bytes: int, blob_count: int) -> list[str]:
    ours = statistics.median(n.ours.seconds for n in result.nights[1:] or result.nights)
    ref = statistics.median(n.reference.seconds for n in result.nights[1:] or result.nights)
    gz_ref = statistics.median(n.compressing_reference.seconds for n in result.nights[1:] or result.nights)
    plain = statistics.median(n.uncompressed.seconds for n in result.nights[1:] or result.nights)
    compress = statistics.median(n.compress_seconds for n in result.nights)
    peak = max(n.ours.max_rss for n in result.nights) / MiB
    nights = len(result.nights)
    restore = {
        label: statistics.median(s.seconds for kind, s in result.restore if kind == label) for label in ("store", "zip")
    }
    restore_rss = {
        label: max(s.max_rss for kind, s in result.restore if kind == label) / MiB for label in ("store", "zip")
    }
    ratio = result.archive_bytes / result.ideal_bytes
    lines = [
        f"archive: {database_bytes // MiB} MiB database, {result.blob_count} blobs, {nights} nights",
        f"  nightly backup (median of nights 2-{nights}): ours {ours:.2f}s vs curl+rsync {ref:.2f}s: {ours / ref:.2f}x "
        f"[goal <= 1.2x: {'met' if ours / ref <= 1.2 else 'MISSED'}]; peak RSS {peak:.1f} MiB",
        f"  compression alone (gzip -1, threads): {compress:.2f}s a night, overlapped with the blob copy",
        f"  against a script that compresses too (curl | gzip -1, rsync): {gz_ref:.2f}s: {ours / gz_ref:.2f}x",
        f"  ours with --no-compress: {plain:.2f}s: {plain / ref:.2f}x curl+rsync [goal <= 1.2x: "
        f"{'met' if plain / ref <= 1.2 else 'MISSED'}]",
        f"  archive after {nights} nights: {result.archive_bytes / MiB:.0f} MiB ({result.archive_disk_bytes / MiB:.0f} MiB "
        f"on disk) vs blobs once + {nights} nights' database pages {result.ideal_bytes / MiB:.0f} MiB: {ratio:.3f}x "
        f"[goal <= 1.05x: {'met' if ratio <= 1.05 else 'MISSED'}]",
        f"  per-backup zips for the same {nights} nights: {result.zips_bytes / MiB:.0f} MiB "
        f"({result.zips_bytes / result.archive_bytes:.1f}x ours); curl+rsync folder: {result.reference_bytes / MiB:.0f} MiB "
        "(databases uncompressed)",
        f"  restore into an empty blobs folder (cold cache): store {restore['store']:.2f}s vs the same backup as a zip "
        f"{restore['zip']:.2f}s: {restore['store'] / restore['zip']:.2f}x [goal: not slower: "
        f"{'met' if restore['store'] <= restore['zip'] * 1.05 else 'MISSED'}]; peak RSS {restore_rss['store']:.1f} / "
        f"{restore_rss['zip']:.1f} MiB",
    ]
    for line in lines:
        print(line, flush=True)
    return lines


# --- memory as blobs grow ------------------------------------------------------------------


def memory_library(count: int) -> tuple[Path, Path]:
    """`count` small blobs (1 KiB: the number is what matters here) and a Stash-like
    database referring to each. Cached."""
    root = library.CACHE / f"memory-{count}"
    database, blobs = root / "stash-go.sqlite", root / "blobs"
    if (root / ".complete").exists():
        return database, blobs
    shutil.rmtree(root, ignore_errors=True)
    blobs.mkdir(parents=True)
    connection = sqlite3.connect(database)
    connection.executescript("""
        CREATE TABLE schema_migrations (version uint64, dirty bool); INSERT INTO schema_migrations VALUES (85, 0);
        CREATE TABLE blobs (checksum varchar(255) NOT NULL PRIMARY KEY, blob blob);
        CREATE TABLE performers (id integer PRIMARY KEY, name text, image_blob varchar(255) REFERENCES blobs(checksum));
    """)
    rows = []
    for index in range(count):
        data = os.urandom(1024)
        checksum = hashlib.md5(data).hexdigest()
        target = blobs / checksum[:2] / checksum[2:4] / checksum
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        rows.append((checksum, f"performer {index}"))
    connection.executemany("INSERT INTO blobs VALUES (?, NULL)", [(c,) for c, _ in rows])
    connection.executemany("INSERT INTO performers (name, image_blob) VALUES (?, ?)", [(n, c) for c, n in rows])
    connection.commit()
    connection.close()
    (root / ".complete").write_text("ok")
    return database, blobs


def bench_memory(counts: list[int], work: Path) -> list[str]:
    """Peak RSS of each archive operation at each blob count: it must not grow with it."""
    lines = []
    for count in counts:
        database, blobs = memory_library(count)
        archive, place = work / f"memory-archive-{count}", work / f"memory-place-{count}"
        shutil.rmtree(archive, ignore_errors=True)
        peaks = {}
        peaks["backup"] = run_measured(
            [
                PY,
                "-m",
                "benchmarks.ours",
                "store",
                str(database),
                str(blobs),
                str(archive),
                "stash-go.sqlite.85.20260101_000000",
            ],
            env=_env(),
        ).max_rss
        half = work / f"memory-half-{count}.sqlite"
        shutil.copyfile(database, half)
        connection = sqlite3.connect(half)
        connection.execute("UPDATE performers SET image_blob = NULL WHERE id % 2 = 0")
        connection.commit()
        connection.close()
        run_measured(
            [
                PY,
                "-m",
                "benchmarks.ours",
                "store",
                str(half),
                str(blobs),
                str(archive),
                "stash-go.sqlite.85.20260102_000000",
            ],
            env=_env(),
        )
        peaks["verify --read-data"] = run_measured(
            _ours("verify", "--read-data", "--dest", str(archive), "-q"), env=_env()
        ).max_rss
        shutil.rmtree(place, ignore_errors=True)
        (place / "blobs").mkdir(parents=True)
        (place / "config.yml").write_text(
            f"database: {place / 'stash-go.sqlite'}\nblobs_path: {place / 'blobs'}\n"
            "blobs_storage: FILESYSTEM\nport: 1\n"
        )
        peaks["restore"] = run_measured(
            [
                PY,
                "-m",
                "stash_backup_plugin.offline",
                "stash-go.sqlite.85.20260101_000000",
                "--config",
                str(place / "config.yml"),
                "--archive",
                str(archive),
                "--yes",
            ],
            env=_env(),
        ).max_rss
        peaks["prune + GC"] = run_measured(
            _ours("prune", "--keep-last", "1", "--dest", str(archive), "-q"), env=_env()
        ).max_rss
        line = f"  {count:>7} blobs: " + ", ".join(f"{name} {rss / MiB:.1f} MiB" for name, rss in peaks.items())
        worst = max(peaks.values()) / MiB
        line += f"  [goal <= 64 MiB: {'met' if worst <= 64 else 'MISSED'}]"
        print(line, flush=True)
        lines.append(line)
        shutil.rmtree(archive, ignore_errors=True)
        shutil.rmtree(place, ignore_errors=True)
        half.unlink()
    return lines
