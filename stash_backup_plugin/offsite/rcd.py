"""One long-lived `rclone rcd` for the length of a job, so that the job's many small
operations (read the manifest, mark the remote, upload a record, move the manifest into
place, read it back...) cost a request each instead of a new rclone process each
(~0.2-0.4 s of start-up apiece: most of a nightly push's fixed cost).

The daemon listens on a unix socket in a folder only this user can enter (mkdtemp:
0700), so `--rc-no-auth` opens it to nobody else, and no password exists to leak. It is
Linux only: there the kernel kills it when our process dies (PR_SET_PDEATHSIG), even by
kill -9; elsewhere (or when this rclone cannot serve a socket) `start` returns None and
every operation runs as its own rclone process, as before. Standard library only."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from ..core.processes import dies_with_us, stop_group

DISABLE_ENV = "STASH_BACKUP_RCLONE_RCD"  # "0": one rclone process per operation
START_SECONDS = 15.0
# A request that gets no answer for this long: rclone's own timeouts (RCLONE_TIMEOUT,
# retries) end a stalled operation well before; this only catches a hung daemon.
CALL_SECONDS = 900.0
NOT_FOUND = 3  # rclone's exit code for "not found", which the callers already read


def possible(environ: dict) -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "AF_UNIX") and environ.get(DISABLE_ENV, "1") != "0"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        handle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        handle.settimeout(self.timeout)
        handle.connect(self.socket_path)
        self.sock = handle


class Daemon:
    """A running `rclone rcd`; `call` sends one operation and waits for its answer. Its
    JSON log is read all along: the error lines of a failed call explain it."""

    def __init__(self, process: subprocess.Popen, folder: Path, log: list, log_lock: threading.Lock):
        self.process, self.folder = process, folder
        self.socket_path = str(folder / "rc.sock")
        self._log, self._log_lock = log, log_lock

    @classmethod
    def start(cls, base: list[str], env: dict) -> Optional["Daemon"]:
        folder = Path(tempfile.mkdtemp(prefix="stash-backup-rclone-"))
        log: list = []
        lock = threading.Lock()
        command = base + ["--log-level", "INFO", "rcd", "--rc-addr", f"unix://{folder / 'rc.sock'}", "--rc-no-auth"]
        try:
            process = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=env,
                text=True,
                encoding="utf-8",
                errors="replace",
                preexec_fn=dies_with_us(),
                start_new_session=True,
            )  # its own group: stop() ends a wrapper's child too
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            return None
        threading.Thread(target=_collect, args=(process.stderr, log, lock), daemon=True).start()
        daemon = cls(process, folder, log, lock)
        if daemon._wait_ready():
            return daemon
        daemon.stop()  # an rclone too old to serve a socket, or one that failed: processes then
        return None

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and self.process.poll() is None:
            if os.path.exists(self.socket_path):
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                        probe.connect(self.socket_path)
                    return True
                except OSError:
                    pass
            time.sleep(0.01)
        return False

    def call(self, method: str, params: dict) -> tuple[dict, int, list[str]]:
        """(answer, exit-code-like status, error messages): 0 and no errors when it
        worked; NOT_FOUND for rclone's 404; 1 for anything else."""
        with self._log_lock:
            first = len(self._log)
        connection = _UnixHTTPConnection(self.socket_path, CALL_SECONDS)
        try:
            connection.request(
                "POST", "/" + method, body=json.dumps(params), headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            status, text = response.status, response.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as error:
            return {}, 1, [f"rclone rcd did not answer: {error}"]
        finally:
            connection.close()
        try:
            answer = json.loads(text) if text.strip() else {}
        except ValueError:
            answer = {"error": text.strip()[:500]}
        if status == 200:
            return answer, 0, []
        time.sleep(0.02)  # the daemon logs the details just before it answers
        with self._log_lock:
            logged = self._log[first:]
        error = " ".join(str(answer.get("error") or f"HTTP {status}").split())
        return answer, NOT_FOUND if status == 404 else 1, logged + [error]

    def stop(self) -> None:
        if self.process.poll() is None:
            # its own process group: an rclone wrapper script's child ends too
            stop_group(self.process.pid, reap=self.process.poll, grace=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)


def _collect(stream, log: list, lock: threading.Lock) -> None:
    """Keep the messages of the daemon's error lines (its log is JSON, one a line)."""
    for line in stream:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical", "fatal"):
            with lock:
                log.append(" ".join(str(entry.get("msg", "")).split()))
