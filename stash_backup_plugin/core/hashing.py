"""Hashing, one home: a file's digest, and a copy that hashes what passes through it
(one read of every byte). SHA-256 for backups, MD5 for blobs (Stash names a blob by
the MD5 of its bytes). Standard library only."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

CHUNK = 1024 * 1024  # bytes read at a time by every copy and hash: memory stays flat


class Readable(Protocol):
    def read(self, __size: int) -> bytes: ...


_reused = threading.local()  # each thread's chunk buffer, while no copy of its own uses it


def copy_and_hash(
    source: Readable, target, algorithm: Optional[str] = None, progress: Optional[Callable[[int], None]] = None
) -> tuple[str, int]:
    """Copy an open file into another in chunks: (hex digest, or "" without an
    algorithm; bytes copied). `target` needs only `write` (a zip member, a hasher's
    sink) and must not keep what it is given; `progress(count)` is told each chunk's
    size. A source with `readinto` is read into the thread's one reused buffer: a new
    1 MiB bytes object per read is a new mapping of memory (core/memory.py), and page
    faults on each, for every one of a first night's images."""
    digest = hashlib.new(algorithm) if algorithm else None
    size = 0
    for chunk in _chunks(source):
        if digest:
            digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
        if progress:
            progress(len(chunk))
    return (digest.hexdigest() if digest else ""), size


def _chunks(source: Readable) -> Iterator:
    readinto = getattr(source, "readinto", None)
    if readinto is None:
        yield from iter(lambda: source.read(CHUNK), b"")
        return
    buffer = getattr(_reused, "buffer", None) or memoryview(bytearray(CHUNK))
    _reused.buffer = None  # a copy within a copy (a target that copies) gets its own
    try:
        while got := readinto(buffer):
            yield buffer[:got]
    finally:
        _reused.buffer = buffer


class Discard:
    """A target that keeps nothing: hash without copying."""

    def write(self, data: bytes) -> int:
        return len(data)


def file_digest(
    path: Path, algorithm: str = "sha256", progress: Optional[Callable[[int, int, str], None]] = None
) -> str:
    """The hex digest of a file read once; `progress(done, total, "checksum")`."""
    total, done = path.stat().st_size, 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress:
            progress(done, total, "checksum")

    with open(path, "rb") as handle:
        return copy_and_hash(handle, Discard(), algorithm, advance if progress else None)[0]
