"""Which codec for the archived database snapshot: every codec the standard library
can read back (stash-restore needs nothing else), on a Stash-shaped database.

    python benchmarks/compression.py [--size-mib 256] [--runs 3]

Prints size ratio, compress and decompress speed (MiB/s of database, median of runs,
one core unless the row says threads), and the same for our snapshot writer
(core/snapshot.py), which compresses chunks on several threads."""

from __future__ import annotations

import argparse
import bz2
import lzma
import os
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import library  # noqa: E402

MiB = 1 << 20
CHUNK = 1 << 20

CODECS = {
    "gzip -1": (lambda: zlib.compressobj(1, zlib.DEFLATED, 31), lambda: zlib.decompressobj(31)),
    "gzip -3": (lambda: zlib.compressobj(3, zlib.DEFLATED, 31), lambda: zlib.decompressobj(31)),
    "gzip -6": (lambda: zlib.compressobj(6, zlib.DEFLATED, 31), lambda: zlib.decompressobj(31)),
    "gzip -9": (lambda: zlib.compressobj(9, zlib.DEFLATED, 31), lambda: zlib.decompressobj(31)),
    "bz2 -1": (lambda: bz2.BZ2Compressor(1), lambda: bz2.BZ2Decompressor()),
    "bz2 -9": (lambda: bz2.BZ2Compressor(9), lambda: bz2.BZ2Decompressor()),
    "xz -0": (lambda: lzma.LZMACompressor(preset=0), lambda: lzma.LZMADecompressor()),
    "xz -1": (lambda: lzma.LZMACompressor(preset=1), lambda: lzma.LZMADecompressor()),
    "xz -6": (lambda: lzma.LZMACompressor(preset=6), lambda: lzma.LZMADecompressor()),
}


def _stream(data: bytes, make) -> tuple[bytes, float]:
    started = time.perf_counter()
    worker, out = make(), []
    view = memoryview(data)
    for offset in range(0, len(data), CHUNK):
        out.append(worker.compress(view[offset : offset + CHUNK]))
    out.append(worker.flush())
    return b"".join(out), time.perf_counter() - started


def _unstream(data: bytes, make) -> float:
    started = time.perf_counter()
    worker, view = make(), memoryview(data)
    for offset in range(0, len(data), CHUNK):
        worker.decompress(view[offset : offset + CHUNK])
    return time.perf_counter() - started


def measure(database: Path, runs: int) -> list[tuple[str, float, float, float]]:
    data = database.read_bytes()
    rows = []
    for name, (compressor, decompressor) in CODECS.items():
        packed, times = b"", []
        for _ in range(runs if not name.startswith(("xz -6", "bz2 -9")) else 1):
            packed, seconds = _stream(data, compressor)
            times.append(seconds)
        back = [_unstream(packed, decompressor) for _ in range(runs)]
        rows.append(
            (
                name,
                len(packed) / len(data),
                len(data) / MiB / statistics.median(times),
                len(data) / MiB / statistics.median(back),
            )
        )
    rows += _ours(database, runs)
    return rows


def _ours(database: Path, runs: int) -> list[tuple[str, float, float, float]]:
    from stash_backup_plugin.core import snapshot

    rows = []
    with tempfile.TemporaryDirectory(dir=database.parent) as folder:
        target = Path(folder) / "snap"
        for level in (snapshot.STORED, snapshot.LEVEL, 6):  # --no-compress, the default, a slower level
            times, back = [], []
            for _ in range(runs):
                started = time.perf_counter()
                with open(database, "rb") as source, open(target, "wb") as out:
                    snapshot.compress(source, out, level=level)
                times.append(time.perf_counter() - started)
                started = time.perf_counter()
                with open(target, "rb") as source:
                    snapshot.decompress(source, _Null())
                back.append(time.perf_counter() - started)
            size = database.stat().st_size
            rows.append(
                (
                    f"ours: gzip -{level}, {snapshot.THREADS} threads",
                    target.stat().st_size / size,
                    size / MiB / statistics.median(times),
                    size / MiB / statistics.median(back),
                )
            )
    return rows


class _Null:
    def write(self, data) -> int:
        return len(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--blobs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    lib = library.library(args.size_mib * MiB, args.blobs)
    size = lib.database.stat().st_size
    print(
        f"Stash-shaped database: {size / MiB:.0f} MiB (Stash v0.31 schema, {args.blobs} blobs referenced); "
        f"{os.cpu_count()} cores; median of {args.runs}"
    )
    print("| Codec | Size | Compress | Decompress |\n| --- | --- | --- | --- |")
    for name, ratio, comp, decomp in measure(lib.database, args.runs):
        print(f"| {name} | {ratio * 100:.1f} % | {comp:.0f} MiB/s | {decomp:.0f} MiB/s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
