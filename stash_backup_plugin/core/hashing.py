"""Hashing, one home: a file's digest, and a copy that hashes what passes through it
(one read of every byte). SHA-256 for backups, MD5 for blobs (Stash names a blob by
the MD5 of its bytes). Standard library only."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional, Protocol

CHUNK = 1024 * 1024  # bytes read at a time by every copy and hash: memory stays flat


class Readable(Protocol):
    def read(self, __size: int) -> bytes: ...


def copy_and_hash(
    source: Readable, target, algorithm: Optional[str] = None, progress: Optional[Callable[[int], None]] = None
) -> tuple[str, int]:
    """Copy an open file into another in chunks: (hex digest, or "" without an
    algorithm; bytes copied). `target` needs only `write` (a zip member, a hasher's
    sink); `progress(count)` is told each chunk's size."""
    digest = hashlib.new(algorithm) if algorithm else None
    size = 0
    while chunk := source.read(CHUNK):
        if digest:
            digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
        if progress:
            progress(len(chunk))
    return (digest.hexdigest() if digest else ""), size


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
