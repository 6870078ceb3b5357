"""Page-level database snapshots (issue 21), measured against restic before the store
is built: what a night would cost if a snapshot stored only the SQLite pages no
earlier snapshot holds.

A real Stash v0.31.1 serves a Stash-shaped library (benchmarks/library.py); each night
about 1 % of rows change and about 50 images are added. Every night:
  - ours today: `stash-backup download` (the whole database, gzip -1, plus new blobs);
  - the database Stash served (read back from that snapshot) goes through a prototype
    page store (`PageStore` below: the format the issue asks for, in ~100 lines):
    pages at the header's page size, content-addressed by SHA-256 truncated to 128
    bits, new pages compressed in zlib frames of up to 1 MiB (level 1) appended to a
    pack, one small index per pack, a compressed page list per snapshot;
  - `restic backup --compression auto` of the same database file and blobs folder.
Then: restore of the newest database (page reassembly, SHA-256 checked, against
`restic restore` + sync), and one "hourly" run with 0.05 % of rows changed.

    python -m benchmarks.pages --quick                 # 16 MiB, 300 images, 3 nights
    python -m benchmarks.pages --size-mib 166 --blobs 4000 --nights 5

Needs restic (`apt-get install restic`; installed here when missing)."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MiB = 1 << 20
HASH_BYTES = 16  # SHA-256 truncated to 128 bits (collisions: see PageStore)
FRAME_BYTES = 1 * MiB  # pages per zlib frame: one decompression per frame on restore
PACK_BYTES = 16 * MiB  # a pack is closed once its frames reach this much compressed
GOALS = {"growth": 0.4, "total": 0.5, "nightly": 0.7, "hourly %": 2.0, "restore": 1.0, "first night": 1.0}


def page_size(header: bytes) -> int:
    """SQLite's page size: bytes 16-17 of the header, big-endian; 1 means 65536."""
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise ValueError("not an SQLite database")
    value = int.from_bytes(header[16:18], "big")
    size = 65536 if value == 1 else value
    if size < 512 or size & (size - 1):
        raise ValueError(f"page size {value} in the header is not a power of two from 512 to 65536")
    return size


class PageStore:
    """The prototype, as the store would hold it:

        packs/<aa>/<sha256>.pack   zlib frames (level 1) of new pages, up to 1 MiB of pages each
        packs/<aa>/<sha256>.idx    the pack's index: per frame its offset, length and the
                                   16-byte hashes of its pages, in order (zlib)
        lists/<name>.list          the snapshot's page list (zlib): a JSON line (size, SHA-256
                                   and page size of the database, the packs it uses), then runs
                                   of pages stored one after another: (pack, first page, count)

    A page list names where its pages are, not their hashes: the pages a snapshot
    shares with an earlier one were stored in the order of that earlier database, so a
    few hundred runs describe tens of thousands of pages (a list of hashes would cost
    16 bytes a page, 0.4 % of the database every snapshot, whatever changed). It needs
    no other list to be read (forgetting one snapshot never breaks another), names
    every pack it needs (garbage collection keeps exactly those), and reassembly reads
    only those packs' indexes and the frames it needs.

    Dedup reads the indexes: hash -> (pack, page), a dict here; the store would keep a
    sorted array of 24-byte entries (12 MiB for a 2 GiB database of 4 KiB pages).

    128-bit hashes: among a billion distinct pages the chance of any collision is about
    n^2 / 2^129 = 1.5e-21; and the database's whole SHA-256 is checked on every
    reassembly, so a collision can never restore a wrong database silently."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "packs").mkdir(parents=True, exist_ok=True)
        (folder / "lists").mkdir(parents=True, exist_ok=True)

    def _indexes(self):
        for path in sorted((self.folder / "packs").glob("*/*.idx")):
            yield path.stem, json.loads(zlib.decompress(path.read_bytes()))

    def known_pages(self) -> dict:
        known = {}
        for pack, frames in self._indexes():
            number = 0
            for _, _, keys in frames:
                for key in keys:
                    known.setdefault(bytes.fromhex(key), (pack, number))
                    number += 1
        return known

    def add(self, name: str, database: Path) -> dict:
        known = self.known_pages()
        whole, places, new_pages = hashlib.sha256(), [], 0
        writer = _PackWriter(self.folder / "packs")
        with open(database, "rb") as source:
            size = page_size(source.read(100))
            source.seek(0)
            while page := source.read(size):
                whole.update(page)
                key = hashlib.sha256(page).digest()[:HASH_BYTES]
                place = known.get(key)
                if place is None:
                    place = known[key] = writer.add(page, key)
                    new_pages += 1
                places.append(place)
        written, sealed = writer.close()
        places = [(sealed[pack] if isinstance(pack, int) else pack, number) for pack, number in places]
        packs, runs = _runs(places)
        header = json.dumps(
            {"size": database.stat().st_size, "sha256": whole.hexdigest(), "page_size": size, "packs": packs}
        )
        body = b"".join(struct.pack("<III", *run) for run in runs)
        listing = zlib.compress(header.encode() + b"\n" + body, 6)
        _write_durable(self.folder / "lists" / f"{name}.list", listing)
        return {
            "pack_bytes": written,
            "list_bytes": len(listing),
            "pages": len(places),
            "new_pages": new_pages,
            "runs": len(runs),
        }

    def restore(self, name: str, target: Path) -> None:
        """Frame by frame, each decompressed once, its pages written where the list puts
        them; then the file is read back in order for its SHA-256 (from the page cache)."""
        line, body = zlib.decompress((self.folder / "lists" / f"{name}.list").read_bytes()).split(b"\n", 1)
        header = json.loads(line)
        size = header["page_size"]
        per_frame = FRAME_BYTES // size
        wanted: dict = {}  # (pack, frame) -> [(page in frame, page in the database)]
        position = 0
        for pack_number, first, count in struct.iter_unpack("<III", body):
            for number in range(first, first + count):
                frame, index = divmod(number, per_frame)
                wanted.setdefault((header["packs"][pack_number], frame), []).append((index, position))
                position += 1
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            indexes: dict = {}
            for (pack, frame), pages in sorted(wanted.items()):
                path = self.folder / "packs" / pack[:2] / f"{pack}.pack"
                if pack not in indexes:
                    indexes.clear()
                    indexes[pack] = json.loads(zlib.decompress(path.with_suffix(".idx").read_bytes()))
                offset, length, _ = indexes[pack][frame]
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = zlib.decompress(handle.read(length))
                for index, at in pages:
                    os.pwrite(descriptor, data[index * size : (index + 1) * size], at * size)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        whole = hashlib.sha256()
        with open(target, "rb") as written:
            while chunk := written.read(MiB):
                whole.update(chunk)
        if whole.hexdigest() != header["sha256"] or position * size != header["size"]:
            raise SystemExit(f"{target}: SHA-256 {whole.hexdigest()} is not the recorded {header['sha256']}")


def _runs(places: list) -> tuple[list, list]:
    """(packs used, [(pack number, first page, count)]): consecutive pages of one pack
    become one run."""
    packs, numbers, runs = [], {}, []
    for pack, number in places:
        if pack not in numbers:
            numbers[pack] = len(packs)
            packs.append(pack)
        index = numbers[pack]
        if runs and runs[-1][0] == index and runs[-1][1] + runs[-1][2] == number:
            runs[-1][2] += 1
        else:
            runs.append([index, number, 1])
    return packs, runs


class _PackWriter:
    """New pages into packs: a page's place is (pack, page number); a pack still open is
    named by its ordinal until it is sealed (named by the SHA-256 of its bytes)."""

    def __init__(self, folder: Path):
        self.folder, self.written, self.sealed = folder, 0, {}
        self._handle, self._frames, self._digest, self._temp = None, [], None, None
        self._frame, self._keys, self._pages, self._ordinal = bytearray(), [], 0, 0

    def add(self, page: bytes, key: bytes) -> tuple:
        place = (self._ordinal, self._pages)
        self._frame += page
        self._keys.append(key.hex())
        self._pages += 1
        if len(self._frame) >= FRAME_BYTES:
            self._flush_frame()
        return place

    def _flush_frame(self) -> None:
        if self._handle is None:
            self._temp = self.folder / f"incoming-{os.getpid()}.pack"
            self._handle, self._frames, self._digest = open(self._temp, "wb"), [], hashlib.sha256()
        compressed = zlib.compress(bytes(self._frame), 1)
        self._frames.append((self._handle.tell(), len(compressed), self._keys))
        self._handle.write(compressed)
        self._digest.update(compressed)
        self._frame, self._keys = bytearray(), []
        if self._handle.tell() >= PACK_BYTES:
            self._seal()

    def _seal(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        pack_id = self._digest.hexdigest()
        final = self.folder / pack_id[:2] / f"{pack_id}.pack"
        final.parent.mkdir(exist_ok=True)
        os.replace(self._temp, final)
        index = zlib.compress(json.dumps(self._frames).encode(), 6)
        _write_durable(final.with_suffix(".idx"), index)
        self.written += final.stat().st_size + len(index)
        self.sealed[self._ordinal] = pack_id
        self._handle, self._ordinal, self._pages = None, self._ordinal + 1, 0

    def close(self) -> tuple[int, dict]:
        if self._frame:
            self._flush_frame()
        if self._handle is not None:
            self._seal()
        return self.written, self.sealed


def _write_durable(path: Path, data: bytes) -> None:
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


# --- the side-by-side run ------------------------------------------------------------------


@dataclass
class NightFigures:
    number: int
    database_bytes: int
    ours_today_seconds: float  # stash-backup download: whole snapshot + new blobs
    snapshot_bytes: int  # today's whole gzip -1 snapshot
    new_blob_bytes: int
    page_seconds: float  # the prototype's pass over the database (hash, compress new pages, write)
    page_rss: int
    page_bytes: int  # new packs + indexes + page list
    list_bytes: int
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


def bench_pages(database_bytes: int, blob_count: int, nights: int, work: Path) -> Result:
    from benchmarks import library
    from benchmarks.archive import _env, _ours
    from benchmarks.harness import run_measured
    from tests.support.stash_server.build import NEW_VERSION, build
    from tests.support.stash_server.server import StashServer

    ensure_restic()
    lib = library.working_copy(library.library(database_bytes, blob_count), work / "stash")
    server = StashServer(build(NEW_VERSION), work / "stash", NEW_VERSION)
    ours, pages, repo = work / "ours-archive", work / "pages", work / "restic-repo"
    source = work / "restic-source"  # the night's database at one path, beside the blobs folder
    source.mkdir()
    subprocess.run(["restic", "init", "-q"], env=_restic_env(repo), check=True, capture_output=True)
    result = Result()
    new_images = 50 / max(blob_count, 1)
    try:
        for number in range(1, nights + 1):
            if number > 1:
                library.night(lib, number, new_blob_share=new_images, changed_row_share=0.01)
            result.nights.append(_night(number, lib, server, ours, pages, repo, source, run_measured, _ours, _env))
            _print_night(result.nights[-1])
        result.restore = _bench_restore(pages, repo, source, work, run_measured)
        library.night(lib, nights + 1, new_blob_share=1 / max(blob_count, 1), changed_row_share=0.0005)
        hourly = _night(nights + 1, lib, server, ours, pages, repo, source, run_measured, _ours, _env)
        result.hourly = {
            "database": hourly.database_bytes,
            "pages": hourly.page_bytes,
            "list": hourly.list_bytes,
            "snapshot": hourly.snapshot_bytes,
            "restic": hourly.restic_growth,
            "restic_seconds": hourly.restic_seconds,
            "page_seconds": hourly.page_seconds,
        }
    finally:
        server.stop()
    return result


def _night(number, lib, server, ours, pages, repo, source, run_measured, ours_command, env) -> NightFigures:
    server.start()
    try:
        before_blobs = _tree_bytes(ours / "blobs") if (ours / "blobs").is_dir() else 0
        today = run_measured(ours_command("download", "--url", server.url, "--dest", str(ours), "-q"), env=env())
    finally:
        server.stop()
    snapshot = max((ours / "snapshots").glob("*.gz"), key=lambda p: p.stat().st_mtime)
    database = source / "stash-go.sqlite"
    with open(snapshot, "rb") as packed, open(database, "wb") as out:
        shutil.copyfileobj(gzip.GzipFile(fileobj=packed), out, MiB)
    name = snapshot.name[:-3]
    before_pages, before_restic = _tree_bytes(pages) if pages.exists() else 0, _tree_bytes(repo)
    page_run = run_measured(
        [sys.executable, "-m", "benchmarks.pages", "add", str(pages), name, str(database)], env=env()
    )
    list_bytes = (pages / "lists" / f"{name}.list").stat().st_size
    restic = run_measured(
        ["restic", "backup", "-q", "--compression", "auto", str(database), str(lib.blobs)], env=_restic_env(repo)
    )
    return NightFigures(
        number,
        database.stat().st_size,
        today.seconds,
        snapshot.stat().st_size,
        _tree_bytes(ours / "blobs") - before_blobs,
        page_run.seconds,
        page_run.max_rss,
        _tree_bytes(pages) - before_pages,
        list_bytes,
        restic.seconds,
        _tree_bytes(repo) - before_restic,
    )


def _bench_restore(pages: Path, repo: Path, source: Path, work: Path, run_measured) -> dict:
    """The newest database into an empty place, page cache dropped, durable at the end."""
    from benchmarks.archive import _cold_cache, _env

    newest = sorted(p.name[:-5] for p in (pages / "lists").glob("*.list"))[-1]
    times: dict = {"pages": [], "restic": []}
    for trial in range(3):
        for which in ("pages", "restic") if trial % 2 == 0 else ("restic", "pages"):
            place = work / "restore-place"
            shutil.rmtree(place, ignore_errors=True)
            place.mkdir()
            _cold_cache()
            if which == "pages":
                sample = run_measured(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.pages",
                        "restore",
                        str(pages),
                        newest,
                        str(place / "stash-go.sqlite"),
                    ],
                    env=_env(),
                )
            else:
                sample = run_measured(
                    [
                        "bash",
                        "-c",
                        f"restic restore -q latest --target '{place}' --include '{source / 'stash-go.sqlite'}' && sync",
                    ],
                    env=_restic_env(repo),
                )
            times[which].append(sample.seconds)
    shutil.rmtree(work / "restore-place", ignore_errors=True)
    return {which: statistics.median(seconds) for which, seconds in times.items()}


def _print_night(night: NightFigures) -> None:
    print(
        f"  night {night.number}: database {night.database_bytes / MiB:.1f} MiB; today's snapshot "
        f"{night.snapshot_bytes / MiB:.2f} MiB + blobs {night.new_blob_bytes / MiB:.2f} MiB in "
        f"{night.ours_today_seconds:.2f}s; pages {night.page_bytes / MiB:.2f} MiB (list {night.list_bytes / 1024:.0f} KiB)"
        f" in {night.page_seconds:.2f}s, peak RSS {night.page_rss / MiB:.0f} MiB; restic +{night.restic_growth / MiB:.2f}"
        f" MiB in {night.restic_seconds:.2f}s",
        flush=True,
    )


def bench_live_copies(database_bytes: int, blob_count: int, nights: int, work: Path) -> list[str]:
    """The same nights, but each snapshot taken with SQLite's online backup of the live
    file (what a run on Stash's host could read) instead of Stash's `VACUUM INTO`,
    which repacks every page after the first changed row: unchanged pages stay
    byte-identical, so only pages that really changed are new."""
    from benchmarks import library
    import sqlite3

    lib = library.working_copy(library.library(database_bytes, blob_count), work / "live")
    store = PageStore(work / "live-pages")
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
        added = store.add(f"{number}", copy)
        size = copy.stat().st_size
        copy.unlink()
        new = added["pack_bytes"] + added["list_bytes"]
        lines.append(
            f"  {'hourly' if hourly else f'night {number}'}: {added['new_pages']} of {added['pages']} pages new, "
            f"{new / MiB:.2f} MiB = {100 * new / size:.2f} % of the {size / MiB:.0f} MiB database"
        )
        print(lines[-1], flush=True)
    return lines


def report(result: Result) -> list[str]:
    later = result.nights[1:] or result.nights
    ours_growth = statistics.median(n.page_bytes + n.new_blob_bytes for n in later)
    today_growth = statistics.median(n.snapshot_bytes + n.new_blob_bytes for n in later)
    restic_growth = statistics.median(n.restic_growth for n in later)
    ours_total = sum(n.page_bytes + n.new_blob_bytes for n in result.nights)
    today_total = sum(n.snapshot_bytes + n.new_blob_bytes for n in result.nights)
    restic_total = sum(n.restic_growth for n in result.nights)
    first = result.nights[0]
    page_pass = statistics.median(n.page_seconds for n in later)
    today = statistics.median(n.ours_today_seconds for n in later)
    restic_night = statistics.median(n.restic_seconds for n in later)
    hourly = result.hourly
    lines = [
        f"page-level snapshots (prototype) vs restic --compression auto, {len(result.nights)} nights "
        f"(database {first.database_bytes / MiB:.0f} MiB):",
        f"  growth per night (median, nights 2+): pages+blobs {ours_growth / MiB:.2f} MiB, today's whole snapshot+blobs "
        f"{today_growth / MiB:.2f} MiB, restic {restic_growth / MiB:.2f} MiB: ratio {ours_growth / restic_growth:.2f}x "
        f"(goal <= {GOALS['growth']}x; today {today_growth / restic_growth:.2f}x)",
        f"  archive after {len(result.nights)} nights: pages {ours_total / MiB:.1f} MiB, today {today_total / MiB:.1f} MiB,"
        f" restic {restic_total / MiB:.1f} MiB: ratio {ours_total / restic_total:.2f}x (goal <= {GOALS['total']}x;"
        f" today {today_total / restic_total:.2f}x)",
        f"  nightly run (median): today's download {today:.2f}s; the page pass alone {page_pass:.2f}s (replaces the"
        f" snapshot's compression); restic {restic_night:.2f}s: today {today / restic_night:.2f}x (goal <= {GOALS['nightly']}x)",
        f"  first night: today's download {first.ours_today_seconds:.2f}s + page pass {first.page_seconds:.2f}s, "
        f"restic {first.restic_seconds:.2f}s",
        f"  page pass peak RSS: {max(n.page_rss for n in result.nights) / MiB:.0f} MiB (goal <= 64 MiB at 2 GiB)",
        f"  restore of the newest database (cold cache, durable): pages {result.restore['pages']:.2f}s, restic restore"
        f" + sync {result.restore['restic']:.2f}s: ratio {result.restore['pages'] / result.restore['restic']:.2f}x",
        f"  hourly (0.05 % of rows): pages {hourly['pages'] / 1024:.0f} KiB (list {hourly['list'] / 1024:.0f} KiB) ="
        f" {100 * hourly['pages'] / hourly['database']:.2f} % of the database (goal <= {GOALS['hourly %']} %); today's"
        f" snapshot {100 * hourly['snapshot'] / hourly['database']:.1f} %; restic {100 * hourly['restic'] / hourly['database']:.1f} %",
    ]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    add = commands.add_parser("add", help="(internal) one snapshot into the prototype store")
    add.add_argument("store", type=Path)
    add.add_argument("name")
    add.add_argument("database", type=Path)
    restore = commands.add_parser("restore", help="(internal) reassemble one snapshot")
    restore.add_argument("store", type=Path)
    restore.add_argument("name")
    restore.add_argument("target", type=Path)
    parser.add_argument("--quick", action="store_true", help="16 MiB, 300 images, 3 nights (CI)")
    parser.add_argument("--size-mib", type=int, default=166)
    parser.add_argument("--blobs", type=int, default=4000)
    parser.add_argument("--nights", type=int, default=5)
    parser.add_argument(
        "--live-copy", action="store_true", help="also: snapshots taken with SQLite's online backup of the live file"
    )
    args = parser.parse_args(argv)
    if args.command == "add":
        print(json.dumps(PageStore(args.store).add(args.name, args.database)))
        return 0
    if args.command == "restore":
        PageStore(args.store).restore(args.name, args.target)
        return 0
    size, blobs, nights = (16, 300, 3) if args.quick else (args.size_mib, args.blobs, args.nights)
    from benchmarks.data import CACHE

    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-pages-", dir=CACHE) as folder:
        lines = report(bench_pages(size * MiB, blobs, nights, Path(folder)))
        if args.live_copy:
            lines += bench_live_copies(size * MiB, blobs, nights, Path(folder))
        for line in lines:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
