"""Child processes that must not outlive us (the drill's Stash, rclone's daemon)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable, Optional

PR_SET_PDEATHSIG = 1


def dies_with_us(parent: Optional[int] = None) -> Callable[[], None]:
    """A `preexec_fn`: on Linux the kernel sends the child SIGKILL when this process
    dies (prctl PR_SET_PDEATHSIG), kill -9 included; and a child whose parent died
    before that took hold is already an orphan and ends itself instead of running
    unwatched (`parent`: the process it was started by; default this one). libc is
    loaded here, not in the child, where importing is unsafe."""
    parent, prctl = parent or os.getpid(), None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes
            prctl = ctypes.CDLL(None, use_errno=True).prctl

    def in_child() -> None:
        if prctl:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return in_child
