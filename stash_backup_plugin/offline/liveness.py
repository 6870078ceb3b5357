"""Is Stash running on this database? An idle Stash holds no lock on its database
(its pools close idle connections after 30 s), so three probes are combined: SQLite's
locks on the files, the process table, and the HTTP port. Standard library (and
PyYAML, to read another Stash's config)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.addresses import reachable_host, url_host
from ..core.config_text import config_line_value
from ..core.errors import RestoreRefused

# SQLite's lock bytes in the database file (PENDING, RESERVED, SHARED range) and the
# WAL "DMS" byte in the -shm file that every open connection holds a read lock on.
DB_LOCK_START, DB_LOCK_LENGTH = 0x40000000, 0x200
SHM_DMS_BYTE = 128
_NOT_STASH = ("stash-restore", "stash-backup", "stashdb")


@dataclass
class Finding:
    running: list[str] = field(default_factory=list)  # proof that Stash runs: nothing overrides it
    suspected: list[str] = field(default_factory=list)  # something that may be Stash (a busy port)
    unknown: list[str] = field(default_factory=list)  # probes that could not run here

    @property
    def doubts(self) -> list[str]:
        """What the user may overrule by vouching that Stash is stopped."""
        return self.suspected + self.unknown

    @property
    def certain_stopped(self) -> bool:
        return not self.running and not self.doubts


def ensure_stopped(database: Path, config_path: Optional[Path], host: str, port: Optional[int], vouched: bool) -> None:
    """Proof that Stash runs (its process, its lock, its /healthz) refuses, whatever the
    user says; `vouched` (--stash-stopped) only overrules doubts (a busy port, a probe
    not possible here). The restore and `snapshot --offline` both ask this."""
    finding = probe(database, config_path, host, port)
    if finding.running:
        raise RestoreRefused(
            f"Stash seems to be running ({finding.running[0]}): stop Stash, then run this again. Nothing was changed"
        )
    if finding.doubts and not vouched:
        raise RestoreRefused(
            f"cannot tell whether Stash is stopped here ({'; '.join(finding.doubts)}): stop Stash "
            "and pass --stash-stopped to confirm. Nothing was changed"
        )


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
    values = (
        (start, length, 0, fcntl.F_WRLCK, os.SEEK_SET) if darwin else (fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
    )
    request = struct.pack(layout, *values).ljust(64, b"\0")
    with open(path, "rb") as handle:
        answer = fcntl.fcntl(handle.fileno(), fcntl.F_GETLK, request)
    fields = struct.unpack(layout, answer[: struct.calcsize(layout)])
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
        for process in _linux_processes():
            if process.argv and _is_stash_name(process.argv[0]):
                _judge_linux_process(process, database, config_path, finding)
        return
    listed = _ps_processes()
    if listed is None:
        finding.unknown.append(f"process check (not available on {sys.platform})")
        return
    for pid, name in listed:
        if _is_stash_name(name.split()[0] if name.split() else name):
            finding.running.append(f"Stash process {pid} ({name[:80]})")


@dataclass
class LinuxProcess:
    pid: int
    argv: list[str]
    environ: Optional[dict[str, str]]  # None: not readable (another user's process)

    def view(self, path: str) -> Path:
        """`path` as this process sees it: relative to its working directory, absolute
        from its root (a container's root is not ours)."""
        if os.path.isabs(path):
            return Path(f"/proc/{self.pid}/root") / path.lstrip("/")
        return Path(f"/proc/{self.pid}/cwd") / path


def _linux_processes():
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue  # gone meanwhile
        yield LinuxProcess(int(entry.name), argv, _read_environ(entry))


def _read_environ(entry: Path) -> Optional[dict[str, str]]:
    try:
        raw = (entry / "environ").read_bytes()
    except OSError:
        return None
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def _judge_linux_process(process: LinuxProcess, database: Path, config_path: Optional[Path], finding: Finding) -> None:
    """A Stash process counts when it serves this install. One we cannot look into
    (another user's, without root) cannot be ruled out: it is a doubt."""
    described = f"Stash process {process.pid} ({' '.join(process.argv)[:80]})"
    try:
        ours = _same_instance(process, database, config_path)
    except PermissionError:
        finding.unknown.append(f"{described}: its config file cannot be read here (run as its user or root)")
        return
    if ours:
        finding.running.append(described)


def _same_instance(process: LinuxProcess, database: Path, config_path: Optional[Path]) -> bool:
    """With our config: does the process read that very file? Without one (a restore
    given --database): does the process's config name this database? Files are
    compared by device and inode: paths differ between a container and the host.
    Whatever stays unclear counts as ours."""
    used = _config_in_use(process)
    if config_path is not None:
        return used is not None and _same_file(used, config_path)
    if used is None:
        return True
    written = _database_setting(used)
    return _same_file(process.view(written), database) if written else True


def _config_in_use(process: LinuxProcess) -> Optional[Path]:
    """The config file the process reads, as a path into its view of the files,
    found as Stash finds it: --config, then STASH_CONFIG_FILE, then config.yml in its
    working directory, then ~/.stash (the first that exists). None when none does."""
    for candidate in _config_candidates(process):
        seen = process.view(candidate)
        try:
            os.stat(seen)
        except PermissionError:
            raise
        except OSError:
            continue  # not there: Stash would not use it either
        return seen
    return None


def _database_setting(config: Path) -> Optional[str]:
    """The `database` another Stash's config names; None when it cannot be told (the
    caller then counts that Stash as ours: fail closed). Without PyYAML (the plugin's
    Python, which runs the restore drill) its top-level line is read as Stash writes it."""
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
    except PermissionError:
        raise
    except OSError:
        return None
    try:
        import yaml  # only here: the rest of this module is standard library
    except ImportError:
        return config_line_value(text, "database") or None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    written = values.get("database") if isinstance(values, dict) else None
    return written if isinstance(written, str) and written else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        first = os.stat(a)
        second = os.stat(b)
    except PermissionError:
        raise
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _config_candidates(process: LinuxProcess) -> list[str]:
    explicit = _config_argument(process.argv)
    if explicit:
        return [explicit]
    if process.environ is None:
        raise PermissionError(f"cannot read the environment of process {process.pid}")
    if process.environ.get("STASH_CONFIG_FILE"):
        return [process.environ["STASH_CONFIG_FILE"]]
    home = process.environ.get("HOME", "")
    return ["config.yml", os.path.join(home, ".stash", "config.yml") if home else ".stash/config.yml"]


def _config_argument(argv: list[str]) -> Optional[str]:
    """The --config/-c value in any of the spellings Go's pflag accepts."""
    for index, arg in enumerate(argv[1:], 1):
        if arg in ("--config", "-c") and index + 1 < len(argv):
            return argv[index + 1]
        for prefix in ("--config=", "-c="):
            if arg.startswith(prefix):
                return arg[len(prefix) :]
        if arg.startswith("-c") and not arg.startswith("--") and len(arg) > 2:
            return arg[2:]
    return None


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
    """Stash's /healthz answering on its port is proof (it answers without a login);
    anything else listening there is only a suspicion."""
    target = reachable_host(host)
    try:
        with socket.create_connection((target, port), timeout=1):
            pass
    except OSError:
        return
    shown = url_host(target)
    for scheme in ("http", "https"):  # https when Stash has a stash.crt
        answer = _ask_healthz(f"{scheme}://{shown}:{port}/healthz")
        if answer == HEALTHY:
            finding.running.append(f"Stash answers on {shown}:{port}")
            return
        if answer == SILENT:
            break  # a TLS server answers plain HTTP at once (with a 400): no need to wait twice
    finding.suspected.append(f"something listens on Stash's port {shown}:{port}")


HEALTHY, SILENT, OTHER = "healthy", "silent", "other"


def _ask_healthz(url: str) -> str:
    # Only liveness is asked and nothing is sent: the certificate (made for Stash's
    # public name) need not be checked. No proxy: one from the environment would
    # answer for a port on loopback.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl._create_unverified_context())
    )
    try:
        with opener.open(url, timeout=3) as response:
            return HEALTHY if response.status == 200 else OTHER
    except (socket.timeout, TimeoutError):
        return SILENT
    except urllib.error.URLError as error:
        return SILENT if isinstance(error.reason, (socket.timeout, TimeoutError)) else OTHER
    except Exception:  # noqa: BLE001 - anything but a 200 means "not sure it is Stash"
        return OTHER
