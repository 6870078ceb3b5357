"""A process's peak memory. glibc's malloc serves a large buffer (a 1 MiB frame, a read
buffer) with its own mapping, returned when freed, but each such free raises its
threshold for that (up to 32 MiB): afterwards large buffers come from the arenas of
the threads that use them, which keep what is freed. With the page pass, the blob
copying and SQLite each on threads of their own, a first night of a 2 GiB database and
100,000 images peaked at 87 MiB of RSS; with the threshold held at glibc's default
(128 KiB, which also stops it moving) 76 MiB. glibc on Linux only: elsewhere, or where
the user set MALLOC_MMAP_THRESHOLD_ themselves, nothing changes. Standard library only."""

from __future__ import annotations

import os

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
LARGE_BUFFER = 128 * 1024


def return_large_buffers() -> bool:
    """Keep buffers of LARGE_BUFFER and more in mappings of their own, returned to the
    system when freed. True when glibc took the setting."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not _glibc():
        return False
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER))
    except (OSError, AttributeError):
        return False


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (AttributeError, ValueError, OSError):
        return False
