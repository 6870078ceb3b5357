"""A process's memory, tuned for what counts in it. glibc's malloc serves a large buffer
(a 1 MiB frame, a read buffer) with its own mapping, returned when freed, but each such
free raises its threshold for that (up to 32 MiB): afterwards large buffers come from
the arenas of the threads that use them, which keep what is freed, except what lies at
an arena's top beyond twice the threshold, given back and faulted in again when next
asked for.

- Beside Stash the peak counts: with the page pass, the blob copying and SQLite each on
  threads of their own, a first night of a 2 GiB database and 100,000 images peaked at
  87 MiB of RSS; with the threshold held at glibc's default (128 KiB, which also stops it
  moving) 76 MiB (`return_large_buffers`). requests' charset detection, which nothing
  here needs, is left out: 3.8 MiB more (`leave_out_charset_detection`).
- With Stash stopped (stash-restore) the time counts: a 1 GiB database reassembled from
  its pages took 620,000 page faults, its 1 MiB frames given back at the arenas' top
  and faulted in again, 2.7 rather than 3.2 s when what is freed is kept
  (`keep_freed_memory`), at the same peak (29-30 MiB).

glibc on Linux only: elsewhere, or where the user set the variable themselves, nothing
changes. Standard library only."""

from __future__ import annotations

import os

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
LARGE_BUFFER = 128 * 1024
KEPT_BUFFER = 32 * 1024 * 1024  # the highest glibc's moving threshold reaches by itself
KEPT_FREE = 64 * 1024 * 1024

REQUESTS_WITHOUT_DETECTOR = (2, 32)  # the first requests that imports without one

_VARIABLES = {M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_", M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_"}


def beside_stash() -> None:
    """For a process that runs beside Stash, where its peak counts: call it before
    anything imports requests."""
    return_large_buffers()
    leave_out_charset_detection()


def return_large_buffers() -> bool:
    """Keep buffers of LARGE_BUFFER and more in mappings of their own, returned to the
    system when freed. True when glibc took the setting."""
    return _mallopt({M_MMAP_THRESHOLD: LARGE_BUFFER})


def keep_freed_memory() -> bool:
    """Serve buffers below KEPT_BUFFER from the arenas, and keep up to KEPT_FREE freed at
    an arena's top for the next one. True when glibc took both settings."""
    return _mallopt({M_MMAP_THRESHOLD: KEPT_BUFFER, M_TRIM_THRESHOLD: KEPT_FREE})


def leave_out_charset_detection() -> bool:
    """requests guesses the charset of a text body that names none with
    charset_normalizer (or chardet): 3.8 MiB of RSS in a process that reads JSON (UTF-8 by
    its content type), files and rclone's JSON. Without one, requests since 2.32 takes
    UTF-8; an older one would not import at all, so it is left as it is. True when
    requests will not load one; nothing changes once it has."""
    import sys
    import warnings

    if "requests" in sys.modules:
        return sys.modules["requests"].compat.chardet is None
    if _requests_version() < REQUESTS_WITHOUT_DETECTOR:
        return False
    detectors = ("charset_normalizer", "chardet")
    for name in detectors:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # an import of it raises ImportError
    warnings.filterwarnings("ignore", message="Unable to find acceptable character detection dependency")
    return all(sys.modules[name] is None for name in detectors)


def _requests_version() -> tuple[int, ...]:
    """The installed requests' (major, minor), read from its __version__.py without
    importing it: every command runs this first, and the metadata's lookup took 12 ms of
    that start, this 0.3 ms. (0,) when it cannot be told."""
    import importlib.util
    import re

    try:
        origin = importlib.util.find_spec("requests").origin  # type: ignore[union-attr]
        with open(os.path.join(os.path.dirname(origin), "__version__.py"), encoding="utf-8") as handle:  # type: ignore[arg-type]
            found = re.search(r"^__version__\s*=\s*[\"'](\d+)\.(\d+)", handle.read(), re.MULTILINE)
    except (ImportError, ValueError, AttributeError, TypeError, OSError):  # not there, in a zip, odd
        return (0,)
    return tuple(int(number) for number in found.groups()) if found else (0,)


def _mallopt(settings: dict[int, int]) -> bool:
    if any(_VARIABLES[option] in os.environ for option in settings) or not _glibc():
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
        return all([bool(mallopt(option, value)) for option, value in settings.items()])
    except (OSError, AttributeError):
        return False


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (AttributeError, ValueError, OSError):
        return False
