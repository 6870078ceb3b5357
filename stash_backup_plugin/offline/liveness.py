"""Is Stash running on this database? An idle Stash holds no lock on its database
(its pools close idle connections after 30 s), so three probes are combined: SQLite's
locks on the files, the process table, and the HTTP port. Standard library only."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# SQLite's lock bytes in the database file (PENDING, RESERVED, SHARED range) and the
# WAL "DMS" byte in the -shm file that every open connection holds a read lock on.
DB_LOCK_START, DB_LOCK_LENGTH = 0x40000000, 0x200
SHM_DMS_BYTE = 128
_NOT_STASH = ("stash-restore", "stash-backup", "stashdb")


@dataclass
class Finding:
    running: list[str] = field(default_factory=list)  # evidence that Stash runs
    unknown: list[str] = field(default_factory=list)  # probes that could not run here

    @property
    def certain_stopped(self) -> bool:
        return not self.running and not self.unknown


def probe(database: Path, config_path: Optional[Path], host: str, port: Optional[int]) -> Finding:
    finding = Finding()
    _probe_locks(database, finding)
    _probe_processes(database, config_path, finding)
    if port:
        _probe_port(host, port, finding)
    return finding


# --- locks ---------------------------------------------------------------------------

def lock_holder(path: Path, start: int, length: int) -> Optional[int]:
    """PID of a process holding a lock on the range (0 when it is in another PID
    namespace), or None. fcntl(F_GETLK) works without root and across namespaces."""
    import fcntl
    import struct
    darwin = sys.platform == "darwin" or "bsd" in sys.platform
    layout = "qqihh" if darwin else "hhqqi"  # struct flock's field order differs
    values = (start, length, 0, fcntl.F_WRLCK, os.SEEK_SET) if darwin else (fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
    request = struct.pack(layout, *values).ljust(64, b"\0")
    with open(path, "rb") as handle:
        answer = fcntl.fcntl(handle.fileno(), fcntl.F_GETLK, request)
    fields = struct.unpack(layout, answer[:struct.calcsize(layout)])
    kind, pid = (fields[3], fields[2]) if darwin else (fields[0], fields[4])
    return pid if kind != fcntl.F_UNLCK else None


def _probe_locks(database: Path, finding: Finding) -> None:
    if os.name == "nt":
        finding.unknown.append("SQLite lock check (not available on Windows)")
        return
    checks = [(database, DB_LOCK_START, DB_LOCK_LENGTH, "database"), (Path(f"{database}-shm"), SHM_DMS_BYTE, 1, "-shm")]
    for path, start, length, what in checks:
        if not path.exists():
            continue
        try:
            holder = lock_holder(path, start, length)
        except OSError as error:
            finding.unknown.append(f"lock check on {path} ({error.strerror})")
            continue
        if holder is not None:
            finding.running.append(f"a process{f' (pid {holder})' if holder else ''} has the {what} file open")


# --- processes -----------------------------------------------------------------------

def _is_stash_name(name: str) -> bool:
    base = os.path.basename(name).lower()
    return base.startswith("stash") and not base.startswith(_NOT_STASH) and not base.endswith(".py")


def _probe_processes(database: Path, config_path: Optional[Path], finding: Finding) -> None:
    if Path("/proc/self/cmdline").exists():
        for pid, argv, cwd in _linux_processes():
            if argv and _is_stash_name(argv[0]) and _same_instance(argv, cwd, database, config_path):
                finding.running.append(f"Stash process {pid} ({' '.join(argv)[:80]})")
        return
    listed = _ps_processes()
    if listed is None:
        finding.unknown.append(f"process check (not available on {sys.platform})")
        return
    for pid, name in listed:
        if _is_stash_name(name.split()[0] if name.split() else name):
            finding.running.append(f"Stash process {pid} ({name[:80]})")


def _linux_processes():
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            argv = [a.decode(errors="replace") for a in argv if a]
            cwd = os.readlink(entry / "cwd") if os.access(entry / "cwd", os.R_OK) else None
        except OSError:
            continue
        yield int(entry.name), argv, cwd


def _same_instance(argv: list[str], cwd: Optional[str], database: Path, config_path: Optional[Path]) -> bool:
    """A Stash process serves this database when it runs with this config file (or
    with none, from this config's folder). Others (another instance) are ignored."""
    configured = _config_argument(argv)
    if config_path is None:
        return True  # nothing to tell instances apart by: assume it is ours
    if configured:
        base = Path(cwd) if cwd else Path("/")
        return _same_file(base / configured, config_path)
    home_config = Path.home() / ".stash" / "config.yml"
    return bool(cwd and _same_file(Path(cwd) / "config.yml", config_path)) or _same_file(home_config, config_path)


def _config_argument(argv: list[str]) -> Optional[str]:
    for index, arg in enumerate(argv):
        if arg in ("--config", "-c") and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _ps_processes():
    commands = [["tasklist", "/fo", "csv", "/nh"]] if os.name == "nt" else [["ps", "-axww", "-o", "pid=,command="]]
    for command in commands:
        try:
            output = subprocess.run(command, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        rows = []
        for line in output.splitlines():
            if os.name == "nt":
                parts = [p.strip('"') for p in line.split('","')]
                if len(parts) > 1:
                    rows.append((parts[1], parts[0]))
            else:
                pid, _, command_line = line.strip().partition(" ")
                rows.append((pid, command_line.strip()))
        return rows
    return None


# --- port ------------------------------------------------------------------------------

def _probe_port(host: str, port: int, finding: Finding) -> None:
    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=1):
            pass
    except OSError:
        return
    try:
        with urllib.request.urlopen(f"http://{target}:{port}/healthz", timeout=3) as response:
            if response.status == 200:
                finding.running.append(f"Stash answers on {target}:{port}")
                return
    except Exception:  # noqa: BLE001 - anything but a 200 means "not sure it is Stash"
        pass
    finding.running.append(f"something listens on Stash's port {target}:{port}")
