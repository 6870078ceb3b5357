"""Decisions about the remote, from sorted streams: which blobs to send, which are wrong
there. Like store_plan.py, memory does not grow with the number of blobs: the local
records' lists and the remote's listing are walked side by side. Pure logic: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from ..core.naming import blob_checksum  # noqa: F401 (the remote's listing names blobs as the store does)


@dataclass(frozen=True)
class RemoteBlob:
    checksum: str
    size: int
    md5: str = ""  # the hash the backend reports, when it has one
    mtime: float = 0.0  # unused on the remote (store_plan.plan_gc reads it)


def to_send(wanted: Iterable[tuple[str, int]], present: Iterable[RemoteBlob]) -> Iterator[tuple[str, int]]:
    """Blobs in `wanted` (sorted, repeats allowed) that the remote lacks or holds with
    another size or a hash that is not its name: those are sent (again)."""
    remote = iter(present)
    have = next(remote, None)
    previous = None
    for checksum, size in wanted:
        if checksum == previous:
            continue
        previous = checksum
        while have is not None and have.checksum < checksum:
            have = next(remote, None)
        if have is None or have.checksum != checksum or not _sound(have, size):
            yield checksum, size


def _sound(blob: RemoteBlob, size: int) -> bool:
    return blob.size == size and (not blob.md5 or blob.md5 == blob.checksum)


def problems(wanted: Iterable[tuple[str, int, str]], present: Iterable[RemoteBlob]) -> Iterator[tuple[str, str, list]]:
    """For verify: (checksum, problem, backup names) for every listed blob that is
    missing on the remote, has another size, or whose backend hash is not its name.
    `wanted` is (checksum, size, backup name), sorted by checksum."""
    remote = iter(present)
    have = next(remote, None)
    group: list = []

    def judge(group: list) -> Optional[tuple[str, str, list]]:
        nonlocal have
        checksum, size = group[0][0], group[0][1]
        while have is not None and have.checksum < checksum:
            have = next(remote, None)
        names = [name for _, _, name in group]
        path = f"{checksum[:2]}/{checksum[2:4]}/{checksum}"
        if have is None or have.checksum != checksum:
            return checksum, f"blob {path} is missing on the remote", names
        if have.size != size:
            return checksum, f"blob {path} is {have.size} bytes on the remote, the record says {size}", names
        if have.md5 and have.md5 != checksum:
            return checksum, f"blob {path} has MD5 {have.md5} on the remote: it is damaged", names
        return None

    for item in wanted:
        if group and item[0] != group[0][0]:
            found = judge(group)
            if found:
                yield found
            group = []
        group.append(item)
    if group:
        found = judge(group)
        if found:
            yield found
