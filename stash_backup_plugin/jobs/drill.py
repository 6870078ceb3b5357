"""The restore drill: prove that a backup boots. Restore it with the offline restore's
own engine into a scratch folder beside the archive, start the Stash binary the user
runs on it (its own config: its own database, blobs, generated, cache, an empty
library, no plugins, no scrapers, credentials of its own, a free 127.0.0.1 port), migrate when
the backup's schema is older, compare what Stash reports with what the archive
recorded when the backup was made, stop that Stash and remove the folder.

Why a module of its own, above jobs: it joins the offline restore (which jobs may not
import) with a Stash process, and both products run it. It speaks to its scratch
Stash with the standard library (its own API key, loopback only), so it runs wherever
the restore runs."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..core.archive import Archive, Entry, utc_now
from ..core.atomic import RUNNING_PID_FILE, discard, is_abandoned, scratch_folder, write_bytes_atomic
from ..core.bounded import one_line, read_bounded
from ..core.errors import RestoreRefused, StashBackupError, UsageError
from ..core.naming import TEMP_MARKER
from ..core.processes import alive, dies_with_us, stop_group
from ..core.reporting import Reporter, human_size
from ..core.retention import parse_duration
from ..core.status import parse_time
from ..core.library import STATS_SELECTION, compare_counts, counts_from_stats
from ..core.sqlite_check import image_samples, library_counts
from ..offline.restore import RestoreOptions, restore
from ..offline.stash_config import FILESYSTEM, StashConfig, Target
from ..server.connection import certificate_fingerprint

SCRATCH_PREFIX = ".drill"
PID_FILE = RUNNING_PID_FILE  # the scratch Stash's process group: the next drill ends it if a kill left it;
# while that process lives, no run's cleanup removes the folder (core/atomic.py)
DEFAULT_TIMEOUT = 900  # seconds for Stash to start, migrate and answer
SPACE_MARGIN = 64 * 1024 * 1024
STATS_QUERY = "{ " + STATS_SELECTION + " version { version } }"


@dataclass
class DrillResult:
    backup: str
    ok: bool = False
    at: str = field(default_factory=utc_now)
    seconds: float = 0.0
    stash_version: str = ""
    migrated: bool = False
    schema_version: int = 0
    counts: dict = field(default_factory=dict)  # what Stash reported
    images_checked: int = 0
    differences: list = field(default_factory=list)
    error: str = ""  # the drill could not finish (Stash did not start, timed out, ...)

    def line(self) -> str:
        took = f"{self.seconds:.1f} s"
        version = f"Stash {self.stash_version}" if self.stash_version else "Stash"
        if self.ok:
            counts = ", ".join(f"{n} {k}" for k, n in self.counts.items())
            return (
                f"drill of {self.backup} passed in {took} on {version}"
                f"{' after a migration' if self.migrated else ''}: {counts}; {self.images_checked} image(s) "
                "served from blobs with their bytes"
            )
        return f"drill of {self.backup} FAILED after {took} on {version}: {'; '.join(self.problems())}"

    def problems(self) -> list[str]:
        return ([self.error] if self.error else []) + list(self.differences)


# --- pure: what differs -------------------------------------------------------------------


def drill_due(entries: list[Entry], every: str, now: Optional[datetime] = None) -> bool:
    """Whether an automatic drill is due: `every` is a number of backups ("3": after
    every third backup since the last drill) or a duration ("7d": when the last drill
    is older). "" or "0": never."""
    every = (every or "").strip()
    if every in ("", "0"):
        return False
    drilled = [e for e in entries if e.drill.get("at")]  # entries: newest first
    if every.isdigit():
        since = next((i for i, e in enumerate(entries) if e.drill.get("at")), len(entries))
        return since >= int(every)
    interval = parse_duration(every)
    times = [t for t in (parse_time(e.drill["at"]) for e in drilled) if t]
    now = now or datetime.now(timezone.utc)
    return not times or max(times) <= interval.before(now)


def check_drill_every(every: str) -> str:
    """A --drill-every / setting value, refused early when it is neither a count nor a duration."""
    every = (every or "").strip()
    if every and not every.isdigit():
        parse_duration(every)
    return every


def needed_space(database_size: int, blob_bytes: int) -> int:
    """The database restored, plus the copy Stash makes before it migrates, plus the blobs."""
    return 2 * database_size + blob_bytes + SPACE_MARGIN


# --- the drill -------------------------------------------------------------------------------


def drill(
    archive: Archive, name: Optional[str], stash_binary: Path, report: Reporter, timeout: float = DEFAULT_TIMEOUT
) -> DrillResult:
    """Drill one backup (default: the newest verified) and record the outcome beside
    it. A failed drill is a result, not an exception; refusals (busy archive, no
    space, no such backup) raise before anything is written."""
    stash_binary = _usable_binary(stash_binary)
    stop_abandoned_stashes(archive.folder)  # before the lock's cleanup removes their folders
    with archive.locked():
        entry = _chosen(archive, name)
        _check_space(archive, entry)
        started = time.monotonic()
        result = DrillResult(entry.file, schema_version=entry.schema_version)
        try:
            with scratch_folder(archive.folder, SCRATCH_PREFIX) as scratch:
                _drill_in(archive, entry, scratch, stash_binary, timeout, result, report)
        except StashBackupError as error:
            result.error = report.redact(str(error))
        result.seconds = round(time.monotonic() - started, 1)
        result.ok = not result.problems()
        archive.record_drill(entry.file, asdict(result))
    (report.info if result.ok else report.error)(result.line())
    return result


def _usable_binary(path: Path) -> Path:
    if not path or not Path(path).is_file() or not os.access(path, os.X_OK):
        raise UsageError(f"no Stash binary at {path}: pass --stash-binary PATH (the Stash you run)")
    return Path(path)


def _chosen(archive: Archive, name: Optional[str]) -> Entry:
    if name:
        entry = archive.find(name)
        if not entry:
            raise UsageError(f"no backup named {name} in {archive.folder} (see list)")
        return entry
    entry = archive.newest_verified()
    if not entry:
        raise UsageError(f"no verified backup in {archive.folder} to drill")
    return entry


def _check_space(archive: Archive, entry: Entry) -> None:
    if entry.is_stored:
        header = archive.store.header(entry.file)
        database, blobs = header.snapshot.size, header.blob_bytes
    else:
        database, blobs = entry.size, entry.size  # a zip: at most its own size again, unpacked
    needed, free = needed_space(database, blobs), shutil.disk_usage(archive.folder).free
    if needed > free:
        raise RestoreRefused(
            f"not enough space for a restore drill in {archive.folder}: it needs "
            f"{human_size(needed)}, {human_size(free)} free. Nothing was changed"
        )


def _drill_in(
    archive: Archive, entry: Entry, scratch: Path, binary: Path, timeout: float, result: DrillResult, report: Reporter
) -> None:
    target = _scratch_target(scratch)
    restore(
        archive.path_of(entry),
        target,
        RestoreOptions(assume_yes=True, stash_stopped=True, archive_held=True),
        report.phase(0.0, 0.5),
    )
    recorded = archive.store.header(entry.file).counts if entry.is_stored else {}
    expected = recorded or library_counts(target.database)  # older records: the restored database's own
    samples = image_samples(target.database)
    deadline = time.monotonic() + timeout
    report.progress(0.5, "starting Stash on the restored backup")
    with scratch_stash(binary, target.config, scratch) as stash:
        result.migrated = stash.wait_ready(deadline)
        report.progress(0.8, "comparing")
        data = stash.graphql(STATS_QUERY)
        result.stash_version = str(_answered(data, "version").get("version") or "")
        result.counts = counts_from_stats(_answered(data, "stats"))
        result.differences += compare_counts(expected, result.counts)
        for route, key, checksum in samples:
            problem = stash.image_problem(route, key, checksum)
            result.images_checked += 1
            if problem:
                result.differences.append(problem)
    report.progress(1.0)


def _scratch_target(scratch: Path) -> Target:
    folders = {
        key: scratch / key for key in ("blobs", "generated", "cache", "backups", "plugins", "scrapers", "library")
    }
    for folder in folders.values():
        folder.mkdir()
    values = {
        "database": str(scratch / "stash-go.sqlite"),
        "blobs_path": str(folders["blobs"]),
        "blobs_storage": FILESYSTEM,
        "generated": str(folders["generated"]),
        "cache": str(folders["cache"]),
        "backup_directory_path": str(folders["backups"]),
        "plugins_path": str(folders["plugins"]),
        "scrapers_path": str(folders["scrapers"]),
        "stash": [{"path": str(folders["library"])}],
        "host": "127.0.0.1",
        "port": free_port(),
        "nobrowser": True,
        # lowercase: Stash matches its keys case-sensitively and ignores "logFile"
        "logfile": str(scratch / "stash.log"),
        "loglevel": "Info",
        **scratch_credentials(),
        **_tls_settings(),
    }
    config = StashConfig(scratch / "config.yml", values)
    # YAML is a superset of JSON: written without PyYAML, which the plugin's Python may lack.
    (scratch / "config.yml").write_text(json.dumps(values, indent=1) + "\n", encoding="utf-8")
    os.chmod(scratch / "config.yml", 0o600)
    return Target(
        database=scratch / "stash-go.sqlite", blobs_path=folders["blobs"], blobs_storage=FILESYSTEM, config=config
    )


def scratch_credentials() -> dict:
    """Credentials of the scratch Stash's own, new for every drill and never the live
    ones. With a username and a password set, Stash refuses every request that does
    not carry them (HasCredentials: both non-empty) or the API key, which it compares
    as a plain string (pkg/session Authenticate): the key is all the drill sends.
    The password is deliberately no bcrypt hash (the standard library has no bcrypt):
    bcrypt.CompareHashAndPassword fails on it, so no password opens the login page;
    the signing and cookie keys are Stash's own and fresh too."""
    return {
        "username": f"drill-{secrets.token_hex(8)}",
        "password": f"!no-login-{secrets.token_hex(16)}",
        "api_key": secrets.token_urlsafe(32),
        "jwt_secret_key": secrets.token_hex(32),
        "session_store_key": secrets.token_hex(32),
    }


def _tls_settings() -> dict:
    """Stash serves https when it finds stash.crt and stash.key in its config folder
    (the scratch folder: never) or in ~/.stash of the account it runs as, which Go
    takes from the password database, not from $HOME (InitTLS, user.Current). That
    cannot be switched off from the config, so the drill follows it: the files named
    in the scratch config, the decision written down rather than guessed twice, and
    its client speaking https pinned to that certificate."""
    folder = _account_home() / ".stash"
    certificate, key = folder / "stash.crt", folder / "stash.key"
    if _exists_as_file(certificate) and _exists_as_file(key):
        return {"ssl_cert_path": str(certificate), "ssl_key_path": str(key)}
    return {}


def _account_home() -> Path:
    with contextlib.suppress(ImportError, KeyError):
        import pwd

        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    return Path.home()


def _exists_as_file(path: Path) -> bool:
    """Stash's own test (fsutil.FileExists): it exists and is no folder."""
    return path.exists() and not path.is_dir()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the scratch Stash -----------------------------------------------------------------------


class _NotAnswering(StashBackupError):
    """Nothing answers on the port yet (refused, reset, silent): Stash is starting."""


class _AnsweredWithError(StashBackupError):
    """A GraphQL answer that carries errors."""


class _PinnedConnection(http.client.HTTPSConnection):
    """https to the drill's own Stash: the certificate it serves must be the one its
    config names (by SHA-256; names and CAs mean nothing on 127.0.0.1), checked
    before the API key is sent."""

    def __init__(self, port: int, pin: str, timeout: float):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        super().__init__("127.0.0.1", port, timeout=timeout, context=context)
        self._pin = pin

    def connect(self) -> None:
        super().connect()
        if hashlib.sha256(self.sock.getpeercert(binary_form=True)).hexdigest() != self._pin:
            self.close()
            raise StashBackupError(
                "the drill's Stash served another certificate than its config names: something else answers on its port"
            )


class ScratchStash:
    def __init__(self, process: subprocess.Popen, port: int, log: Path, api_key: str = "", pin: Optional[str] = None):
        """`pin`: the SHA-256 of the certificate it serves https with; None: http."""
        self.process, self.port, self.log, self.api_key, self.pin = process, port, log, api_key, pin
        self.console = log.with_name("stash.out")  # its stdout and stderr
        self.url = f"{'https' if pin else 'http'}://127.0.0.1:{port}"

    def graphql(self, query: str, variables: Optional[dict] = None, timeout: float = 60) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        with self._response("POST", "/graphql", body, timeout) as response:
            status, text = (
                response.status,
                read_bounded(response.read, "the drill's Stash", response.getheader("Content-Encoding", "")),
            )
        answer = self._graphql_answer(status, text)
        if answer.get("errors"):
            errors = answer["errors"]
            first = errors[0] if isinstance(errors, list) else errors
            message = first.get("message") if isinstance(first, dict) else first
            raise _AnsweredWithError(f"the drill's Stash answered with an error: {one_line(str(message))}")
        return answer["data"]

    @staticmethod
    def _graphql_answer(status: int, text: bytes) -> dict:
        """The answer when it is GraphQL; else, at once, what came instead."""
        if status in (401, 403):
            raise StashBackupError(f"the drill's Stash refused its own API key (HTTP {status})")
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and (isinstance(answer.get("data"), dict) or answer.get("errors")):
            return answer
        raise StashBackupError(
            f"the drill's Stash answered HTTP {status}, not GraphQL: "
            f"{one_line(text.decode('utf-8', 'replace'), 160) or '(nothing)'}"
        )

    @contextlib.contextmanager
    def _response(
        self, method: str, path: str, body: Optional[bytes] = None, timeout: float = 60
    ) -> Iterator[http.client.HTTPResponse]:
        connection = (
            _PinnedConnection(self.port, self.pin, timeout)
            if self.pin
            else http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        )
        try:
            connection.request(
                method, path, body=body, headers={"ApiKey": self.api_key, "Content-Type": "application/json"}
            )
            yield connection.getresponse()
        except ssl.SSLError as error:
            raise StashBackupError(
                f"TLS with the drill's Stash at {self.url} failed ({error.reason or error})"
            ) from None
        except (ConnectionError, socket.timeout) as error:
            raise _NotAnswering(f"the drill's Stash did not answer ({_described(error)})") from None
        except (OSError, http.client.HTTPException) as error:
            raise StashBackupError(f"the drill's Stash did not answer in HTTP ({_described(error)})") from None
        finally:
            connection.close()

    def status(self) -> str:
        self._alive()
        try:
            status = _answered(self.graphql("{ systemStatus { status } }", timeout=5), "systemStatus").get("status")
        except (_NotAnswering, _AnsweredWithError):
            return "starting"
        if not isinstance(status, str):
            raise StashBackupError(f"the drill's Stash answered a status of {one_line(json.dumps(status), 60)}")
        return status

    def wait_ready(self, deadline: float) -> bool:
        """Wait until Stash serves the library; migrate first when it asks to. Whether it migrated."""
        status = self._poll_until(deadline, lambda s: s != "starting")
        migrated = status == "NEEDS_MIGRATION"
        if migrated:
            self.graphql('mutation { migrate(input: {backupPath: ""}) }')
            status = self._poll_until(deadline, lambda s: s not in ("starting", "NEEDS_MIGRATION"), migrating=True)
        if status != "OK":
            raise StashBackupError(f"the drill's Stash reports {status}{self._last_error()}")
        return migrated

    def _poll_until(self, deadline: float, settled: Callable[[str], bool], migrating: bool = False) -> str:
        while time.monotonic() < deadline:
            status = self.status()
            if settled(status):
                return status
            if migrating and self._migration_failed():
                raise StashBackupError(f"the drill's Stash could not migrate the backup{self._last_error()}")
            time.sleep(0.3)
        raise StashBackupError(f"the drill's Stash was not ready in time (timeout){self._last_error()}")

    def _migration_failed(self) -> bool:
        return any("error performing migration" in _tail(path) for path in (self.log, self.console))

    def _alive(self) -> None:
        if self.process.poll() is not None:
            raise StashBackupError(f"the drill's Stash exited with {self.process.returncode}{self._last_error()}")

    def _last_error(self) -> str:
        """Stash's own reason: the last error its log file holds, else its console's
        (which alone has what came before the log file was open, and a Go panic)."""
        for text in (_tail(self.log), _tail(self.console)):
            found = stash_errors(text)
            if found:
                return f": {found[-1]}"
        return ""

    def image_problem(self, route: str, key: int, checksum: str) -> str:
        digest = hashlib.md5()  # a blob's name is its MD5
        try:
            with self._response("GET", f"/{route}/{key}/image") as response:
                if response.status != 200:
                    return f"{route} {key}'s image was not served (HTTP {response.status})"
                while chunk := response.read(1024 * 1024):
                    digest.update(chunk)
        except StashBackupError as error:
            return f"{route} {key}'s image was not served ({error})"
        served = digest.hexdigest()
        return "" if served == checksum else f"{route} {key}'s image is not blob {checksum} (missing or damaged)"

    def stop(self) -> None:
        stop_group(self.process.pid, reap=self.process.poll)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=15)


@contextlib.contextmanager
def scratch_stash(binary: Path, config: StashConfig, scratch: Path) -> Iterator[ScratchStash]:
    """The Stash binary on the scratch config, in a session of its own so that stopping
    it (or a timeout) ends it and its children and nothing else; on Linux it also dies
    with the drill (a kill -9 of the drill leaves no Stash behind)."""
    pin = certificate_fingerprint(Path(config.get("ssl_cert_path"))) if config.get("ssl_cert_path") else None
    with open(scratch / "stash.out", "ab") as out:
        process = subprocess.Popen(
            [str(binary), "--config", str(config.path), "--nobrowser"],
            cwd=scratch,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dies_with_us(),
            env=_scratch_environment(),
        )
    write_bytes_atomic(scratch / PID_FILE, f"{process.pid}\n".encode("ascii"))
    stash = ScratchStash(process, config.port, scratch / "stash.log", config.get("api_key"), pin)
    try:
        yield stash
    finally:
        stash.stop()


def _described(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _answered(data: dict, key: str) -> dict:
    value = data.get(key)
    if not isinstance(value, dict):
        raise StashBackupError(f"the drill's Stash answered without {key} ({one_line(json.dumps(value), 60)})")
    return value


# Console lines (ERRO[time] message, colour codes aside), log file lines (time=… level=error
# msg="…") and a Go panic.
_ERROR_LINE = re.compile(
    r"^(?:(?:ERRO|FATA|PANI)\[[^\]]*\]\s*(?P<console>.*)"
    r'|time="[^"]*" level=(?:error|fatal|panic) msg="(?P<log>.*)"|(?P<panic>panic: .*))$'
)
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_NOT_THE_REASON = ("Couldn't retrieve latest version",)  # its check for updates on GitHub, offline


def stash_errors(text: str) -> list[str]:
    """The error messages in Stash's console output or log file, oldest first, each on one line."""
    found = []
    for line in _COLOUR.sub("", text).splitlines():
        match = _ERROR_LINE.match(line.strip())
        if match:
            message = (
                match.group("console")
                or match.group("panic")
                or (match.group("log") or "").replace("\\n", " ").replace('\\"', '"')
            )
            if message and not message.startswith(_NOT_THE_REASON):
                found.append(one_line(message, 400))
    return found


def _tail(path: Path, size: int = 64 * 1024) -> str:
    """The end of a file Stash writes (its log may grow): what its last lines say."""
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
        return handle.read().decode("utf-8", "replace")
    return ""


def _scratch_environment() -> dict:
    """Ours without what would point Stash at the user's install."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STASH_")}


def stop_abandoned_stashes(folder: Path) -> list[int]:
    """The Stash a killed drill left running (where it outlived the drill: not Linux,
    or started in the instant before the kill), ended by the process group its pid
    file names, and only when that process is the Stash of that very folder: never
    the user's Stash, nor a process that reused the pid. Refuses when it cannot tell,
    or cannot stop it: the archive lock's cleanup would remove the folder under it."""
    stopped = []
    if not folder.is_dir():
        return stopped
    now = time.time()
    for scratch in sorted(folder.glob(f"{SCRATCH_PREFIX}{TEMP_MARKER}*")):
        if not _abandoned(scratch, now):
            continue
        pid = _pid_in(scratch)
        ours = scratch_stash_runs(pid, scratch) if pid else False
        if ours is None:
            raise RestoreRefused(
                f"process {pid} may be the Stash of a killed drill in {scratch}, and cannot be "
                "told apart from others here: stop it, then drill again. Nothing was changed"
            )
        if ours and not stop_group(pid):
            raise RestoreRefused(
                f"the Stash of a killed drill (process {pid}, from {scratch}) would not stop: "
                "stop it, then drill again. Nothing was changed"
            )
        if ours:
            stopped.append(pid)
            discard(scratch / PID_FILE)  # stopped (a zombie until its new parent reaps it): the folder may go
        elif pid and _unrelated(pid, scratch):
            discard(scratch / PID_FILE)  # the pid is gone, or now another process's: the folder may go
    return stopped


def _unrelated(pid: int, scratch: Path) -> bool:
    """The pid no longer runs, or runs something that does not name this folder (the
    pid was reused): the pid file no longer protects anything."""
    if alive(pid) is False:
        return True
    command = _command_line(pid)
    return command is not None and str(scratch) not in command


def _abandoned(scratch: Path, now: float) -> bool:
    try:
        return is_abandoned(scratch, now)
    except OSError:
        return False  # gone meanwhile, or unreadable: not ours to judge


def _pid_in(scratch: Path) -> Optional[int]:
    """The pid file's pid; none when the drill died before it wrote one (the child then
    dies on its own: see core/processes.py)."""
    try:
        return int((scratch / PID_FILE).read_text(encoding="ascii").strip()) or None
    except (OSError, ValueError):
        return None


def scratch_stash_runs(pid: int, scratch: Path) -> Optional[bool]:
    """Whether `pid` is the Stash a drill started in `scratch`: alive, leading its own
    process group, started with `--config <scratch>/config.yml`, and (where the system
    says) working in `scratch`. None: it lives but the system cannot say what it is."""
    if alive(pid) is False:
        return False
    command = _command_line(pid)
    if command is None:
        return False if alive(pid) is False else None  # it may have ended while we looked
    if f" --config {scratch / 'config.yml'} " not in f" {command} ":
        return False
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) != pid:
            return False
    working_in = _working_folder(pid)
    return working_in is None or working_in == scratch.resolve()


def _command_line(pid: int) -> Optional[str]:
    """A process's arguments joined by spaces: Linux's /proc, else POSIX ps. None when
    the system cannot say: an empty /proc cmdline belongs to a process between fork and
    exec (or a zombie), which names nothing yet."""
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").replace("\0", " ")
        return text or None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        shown = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
        if shown.returncode == 0 and shown.stdout.strip():
            return shown.stdout.strip()
    return None


def _working_folder(pid: int) -> Optional[Path]:
    with contextlib.suppress(OSError):
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    return None


def parent_stash_binary() -> Optional[Path]:
    """The plugin's parent process is the Stash that runs it: the same binary to drill with."""
    with contextlib.suppress(OSError):
        return Path(os.readlink(f"/proc/{os.getppid()}/exe"))
    return None


def stash_on_path() -> Optional[Path]:
    found = shutil.which("stash")
    return Path(found) if found else None
