"""Processes, one home for each question about them: does a process live; was a
record (a temp file's name, a pending marker) made on this machine, where its PID
means something; stop a process group; a child that dies with us. The archive's
temp files and pending markers, the remote's lock, the drill's Stash and rclone's
daemon all ask here, so the answers cannot drift apart.

Standard library only (stash-restore uses it)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Optional

PR_SET_PDEATHSIG = 1


# --- is it alive ---------------------------------------------------------------------------


def alive(pid) -> Optional[bool]:
    """Whether process `pid` runs here: True (also when it is another user's), False
    (none, no valid pid, or one that has exited and waits to be reaped: a zombie runs
    nothing, and its pid is not reused before it is reaped), None when the system
    cannot be asked (Windows, where os.kill would end the process instead)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False  # 0 and -1 would ask about our process group, or every process
    if os.name == "nt":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, as another user; anything else: do not call it dead
    return not _exited(pid)


def _exited(pid: int) -> bool:
    """A zombie (or a dying process) by /proc; False where /proc cannot say."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return bool(fields) and fields[0] in EXITED


EXITED = ("Z", "X")  # /proc states of a process that has exited: it runs nothing


def _stat_fields(stat: Path) -> list[str]:
    """The fields of /proc/<pid>/stat after "(command name)": state, ppid, pgrp, ...;
    none when it cannot be read (gone, or no /proc)."""
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()
    return []


# --- which machine -------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def machine_id() -> str:
    """This boot of this host, in this PID namespace, as 8 hex digits: only there does
    a PID name the same process. A container sharing the host's name has another PID
    namespace (its PIDs mean nothing on the host), and a host sharing the folder
    another boot id."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError, AttributeError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def identity() -> dict:
    """What a marker records about the run that wrote it: `host` to show to people,
    `machine` and `pid` to tell later whether that run still lives."""
    return {"host": socket.gethostname(), "machine": machine_id(), "pid": os.getpid()}


def dead_here(machine, pid) -> bool:
    """Whether a record's maker provably no longer runs: it was made on this machine
    (same boot, same PID namespace) by a process that is gone. Records without a
    machine (older versions wrote the host name alone) are never provably ours: a
    container with the host's name may be running them. Fail closed."""
    return isinstance(machine, str) and machine == machine_id() and alive(pid) is False


# --- stopping a process group ----------------------------------------------------------------


def stop_group(pid: int, reap: Callable[[], object] = lambda: None, grace: float = 5.0) -> bool:
    """TERM the process group `pid` leads, KILL what is left after `grace` seconds;
    whether the group is gone. `reap`: the parent's poll, without which its own
    child's zombie would count as running until the grace ran out."""
    try:
        os.killpg(pid, signal.SIGTERM)
        if _group_gone(pid, reap, grace):
            return True
        os.killpg(pid, signal.SIGKILL)
        return _group_gone(pid, reap, 5.0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False


def _group_gone(pid: int, reap: Callable[[], object], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        reap()
        if not group_runs(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def group_runs(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not: a child whose parent
    was killed is reaped by whoever adopted it, which may never do so."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    if not os.path.isdir("/proc/self"):
        return True  # no /proc: a zombie counts as running, and a refusal is the safe side
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(stat)
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in EXITED:
            return True
    return False


# --- children that die with us ---------------------------------------------------------------


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
