"""Test hooks that put a fault exactly at a named step of a real run (the crash-safety
tests kill or fail every step of a backup, a prune, an off-site push and a restore).
They cost an environment lookup and do nothing unless a test set the variable."""

from __future__ import annotations

import errno
import os
import signal

CRASH_ENV = "STASH_BACKUP_CRASH_AT"  # die at this step, as kill -9 would
FAIL_ENV = "STASH_BACKUP_FAIL_AT"  # fail at this step once, as a full disk would


def crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(FAIL_ENV) == step:
        del os.environ[FAIL_ENV]  # once, as a passing fault would: the recovery then runs clean
        raise OSError(errno.EIO, f"injected failure at {step}")
