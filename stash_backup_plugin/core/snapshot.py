"""The database snapshot's compression: gzip, written as a series of independent gzip
members (one per chunk, as pigz does), so that chunks compress on several cores at
once while the stream stays plain gzip: Python's gzip module, `zcat` and
stash-restore read it back with nothing beyond the standard library.

Why gzip at level 1: measured on a Stash-shaped database (README, *Compression*),
level 1 keeps most of the gain of level 6 at several times its speed, and xz/bz2
cost far more time than they save space. Standard library only."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional

from .atomic import write_all
from .errors import VerificationError

CODEC = "gzip"
LEVEL = 1
STORED = 0  # --no-compress: gzip's stored blocks, so every reader stays the same; CRC-32 only
CHUNK = 1024 * 1024  # bytes of database per gzip member
READ_CHUNK = 256 * 1024  # compressed bytes read at a time: what they expand to stays small
THREADS = max(1, min(4, os.cpu_count() or 1))
GZIP_MAGIC = b"\x1f\x8b"
Progress = Optional[Callable[[int], None]]


@dataclass
class Digest:
    """What was read (the database): its size and SHA-256; and what was written."""

    size: int
    sha256: str
    written: int = 0


def _member(data: bytes, level: int) -> bytes:
    # zlib releases the GIL while it works: members compress in parallel.
    worker = zlib.compressobj(level, zlib.DEFLATED, 31, 9)  # memLevel 9: a little smaller, as fast
    return worker.compress(data) + worker.flush()


class StreamCompressor:
    """Compresses what is written to it, in order, into `target`, a chunk per gzip
    member on several threads; fed as a download arrives, compression overlaps the
    transfer. The SHA-256 is of the uncompressed bytes. Memory stays a few chunks."""

    def __init__(self, target: BinaryIO, level: int = LEVEL, threads: int = THREADS, progress: Progress = None):
        self.target, self.level, self.threads, self.progress = target, level, threads, progress
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="snapshot")
        self._pending: deque = deque()
        self._buffer = bytearray()
        self._digest = hashlib.sha256()
        self.size = 0
        self.written = 0

    def write(self, data) -> int:
        self._digest.update(data)
        self.size += len(data)
        self._buffer += data
        while len(self._buffer) >= CHUNK:
            self._submit(bytes(self._buffer[:CHUNK]))
            del self._buffer[:CHUNK]
        return len(data)

    def _submit(self, chunk: bytes) -> None:
        self._pending.append((self._pool.submit(_member, chunk, self.level), len(chunk)))
        while len(self._pending) > self.threads:  # the oldest is written first: the order is the stream's
            self._drain_one()

    def _drain_one(self) -> None:
        future, raw = self._pending.popleft()
        self.written += write_all(self.target, future.result())
        if self.progress:
            self.progress(raw)

    def finish(self) -> Digest:
        if self._buffer or self.size == 0:  # an empty stream is still one valid gzip member
            self._submit(bytes(self._buffer))
            self._buffer.clear()
        while self._pending:
            self._drain_one()
        self.close()
        return Digest(self.size, self._digest.hexdigest(), self.written)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def compress(
    source: BinaryIO, target: BinaryIO, level: int = LEVEL, threads: int = THREADS, progress: Progress = None
) -> Digest:
    """Compress `source` into `target` (both open binary files)."""
    compressor = StreamCompressor(target, level, threads, progress)
    try:
        while chunk := source.read(CHUNK):
            compressor.write(chunk)
        return compressor.finish()
    finally:
        compressor.close()


def decompress(source: BinaryIO, target, progress: Progress = None) -> Digest:
    """Stream the snapshot back into `target` (anything with write()); every member's
    CRC and length are checked by zlib. A truncated or damaged stream raises
    VerificationError. Hashing and writing run on a second thread, beside the
    decompression (both release the GIL)."""
    size, read = 0, 0
    worker, in_member = zlib.decompressobj(31), False
    with Sink(target, progress) as sink:
        try:
            while data := source.read(READ_CHUNK):
                read += len(data)
                while data:
                    in_member = True
                    out = worker.decompress(data)
                    if out:
                        size += len(out)
                        sink.put(out)
                    data = b""
                    if worker.eof:  # a member ended: the next one starts in unused_data
                        data, worker, in_member = worker.unused_data, zlib.decompressobj(31), False
        except zlib.error as error:
            raise VerificationError(f"the compressed database is damaged ({error})") from error
    if in_member or read == 0:
        raise VerificationError("the compressed database ends in the middle: the file is truncated")
    return Digest(size, sink.sha256, read)


class Sink:
    """Hashes and writes decompressed chunks on its own thread, in order."""

    _END = object()

    def __init__(self, target, progress: Progress):
        self.target, self.progress = target, progress
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._digest = hashlib.sha256()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="snapshot-sink", daemon=True)
        self.sha256 = ""

    def __enter__(self) -> "Sink":
        self._thread.start()
        return self

    def put(self, chunk: bytes) -> None:
        if self._error:
            raise self._error
        self._queue.put(chunk)

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not self._END:
            if self._error:
                continue  # drain: the producer stops at its next put
            try:
                self._digest.update(chunk)
                write_all(self.target, chunk)
                if self.progress:
                    self.progress(len(chunk))
            except BaseException as error:
                self._error = error

    def __exit__(self, *exc) -> None:
        self._queue.put(self._END)
        self._thread.join()
        if self._error and exc[0] is None:
            raise self._error
        self.sha256 = self._digest.hexdigest()
