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
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional

from .errors import VerificationError

CODEC = "gzip"
LEVEL = 1
CHUNK = 2 * 1024 * 1024  # bytes of database per gzip member
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
    worker = zlib.compressobj(level, zlib.DEFLATED, 31)
    return worker.compress(data) + worker.flush()


def compress(source: BinaryIO, target: BinaryIO, level: int = LEVEL, threads: int = THREADS,
             progress: Progress = None) -> Digest:
    """Compress `source` into `target` (both open binary files); the SHA-256 is of the
    uncompressed bytes, so it matches the database Stash made. Memory stays a few
    chunks whatever the size."""
    digest, size, written = hashlib.sha256(), 0, 0
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="snapshot") as pool:
        while True:
            chunk = source.read(CHUNK)
            if chunk:
                digest.update(chunk)
                size += len(chunk)
                pending.append((pool.submit(_member, chunk, level), len(chunk)))
            while pending and (len(pending) > threads or not chunk):
                future, raw = pending.popleft()
                written += _write_all(target, future.result())
                if progress:
                    progress(raw)
            if not chunk:
                break
    if size == 0:  # an empty stream is still one valid gzip member
        written += _write_all(target, _member(b"", level))
    return Digest(size, digest.hexdigest(), written)


def _write_all(target: BinaryIO, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[target.write(view):]
    return len(data)


def decompress(source: BinaryIO, target, progress: Progress = None) -> Digest:
    """Stream the snapshot back into `target` (anything with write()); every member's
    CRC and length are checked by zlib. A truncated or damaged stream raises
    VerificationError."""
    digest, size, read = hashlib.sha256(), 0, 0
    worker, in_member = zlib.decompressobj(31), False
    try:
        while data := source.read(CHUNK):
            read += len(data)
            while data:
                in_member = True
                out = worker.decompress(data)
                if out:
                    digest.update(out)
                    size += len(out)
                    _write_all(target, out)
                    if progress:
                        progress(len(out))
                data = b""
                if worker.eof:  # a member ended: the next one starts in unused_data
                    data, worker, in_member = worker.unused_data, zlib.decompressobj(31), False
    except zlib.error as error:
        raise VerificationError(f"the compressed database is damaged ({error})") from error
    if in_member or read == 0:
        raise VerificationError("the compressed database ends in the middle: the file is truncated")
    return Digest(size, digest.hexdigest(), read)
