"""Streaming download of a backup file into a unique temp file, hashed while it
streams, resumed with `Range` after a cut while the single-use link still lives.
The caller verifies the temp file and then commits it (atomic.commit) or discards it."""

from __future__ import annotations

import hashlib
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import requests

from ..core.atomic import staged_file, write_all
from .api import Downloaded
from ..core.errors import AuthError, DownloadError, LinkExpiredError

CHUNK = 1024 * 1024
# Stash forgets a download link 30 s after its first request, as soon as no request
# for it is open (internal/manager/downloads.go). A stalled transfer must be given up
# and resumed well inside that window: a silence of READ_TIMEOUT is called a cut.
STASH_LINK_WINDOW = 30
READ_TIMEOUT = 10  # seconds without a byte before we call it a cut and resume
CONNECT_TIMEOUT = 10
MAX_RESUMES = 5
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Cut(Exception):
    """The connection ended before the last byte; resume if the link still lives."""


class _BackgroundHasher:
    """SHA-256 in a second thread, fed in order through a short queue: hashing
    (which releases the GIL) overlaps the socket reads and file writes instead of
    adding to them. The queue bounds memory to a few chunks."""

    _RESET, _END = object(), object()

    def __init__(self):
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._digest: Optional[str] = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        hasher = hashlib.sha256()
        while True:
            item = self._queue.get()
            if item is self._END:
                self._digest = hasher.hexdigest()
                return
            if item is self._RESET:
                hasher = hashlib.sha256()
            else:
                hasher.update(item)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def reset(self) -> None:
        self._queue.put(self._RESET)

    def hexdigest(self) -> str:
        self._queue.put(self._END)
        self._thread.join()
        return self._digest

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()


@dataclass
class _State:
    handle: object
    hasher: _BackgroundHasher
    received: int = 0
    total: Optional[int] = None
    validator: Optional[str] = None

    def restart(self) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.received = 0
        self.hasher.reset()


def download(
    session: requests.Session,
    url: str,
    folder: Path,
    final_name: str,
    progress: Optional[Callable[[int, Optional[int]], None]] = None,
    max_resumes: int = MAX_RESUMES,
    read_timeout: float = READ_TIMEOUT,
    pause: Callable[[float], None] = time.sleep,
    durable: bool = True,
) -> Downloaded:
    """Fetch `url` into a temp file in `folder`. On any failure the temp file is gone.
    Not `durable`: the file is not fsynced (the archive keeps its pages, never this one)."""
    hasher = _BackgroundHasher()
    try:
        with staged_file(folder, final_name, buffering=0, durable=durable) as (handle, temp):
            state = _State(handle, hasher)
            resumes = _fetch_with_resumes(session, url, state, progress, max_resumes, read_timeout, pause)
        return Downloaded(temp, state.received, hasher.hexdigest(), resumes)
    finally:
        hasher.close()


def _fetch_with_resumes(session, url, state: _State, progress, max_resumes, read_timeout, pause) -> int:
    resumes = 0
    while True:
        try:
            _fetch_once(session, url, state, progress, read_timeout)
            return resumes
        except _Cut as cut:
            if resumes >= max_resumes:
                raise DownloadError(
                    f"download kept failing after {resumes} resumes ({cut}): check the network and try again"
                ) from None
            resumes += 1
            pause(min(2 ** (resumes - 1) * 0.5, 5))


def _fetch_once(session, url, state: _State, progress, read_timeout) -> None:
    headers = {"Accept-Encoding": "identity"}
    if state.received:
        headers["Range"] = f"bytes={state.received}-"
        if state.validator:
            headers["If-Range"] = state.validator
    try:
        response = session.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, read_timeout))
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
        raise _Cut(type(error).__name__) from None
    with response:
        _accept(response, state)
        _stream(response, state, progress)


def _accept(response: requests.Response, state: _State) -> None:
    """Check the status and decide whether the body appends or starts over."""
    status = response.status_code
    if status == 404:
        raise LinkExpiredError("the download link has expired (404): a new backup is needed")
    if status in (401, 403):
        raise AuthError(f"the server refused the download ({status}): check the API key")
    if 300 <= status < 400:
        raise DownloadError(
            f"the server redirected the download elsewhere ({status}); refusing to send credentials to another host"
        )
    if status == 206 and state.received:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != state.received:
            raise DownloadError("the server resumed at the wrong offset: retry the download")
        if match.group(3) != "*":
            state.total = int(match.group(3))
        return
    if status != 200:
        raise DownloadError(f"the server answered HTTP {status} to the download: retry later")
    if state.received:  # the server ignored Range or the file changed: start over
        state.restart()
    length = response.headers.get("Content-Length")
    state.total = int(length) if length and length.isdigit() else None
    state.validator = response.headers.get("ETag") or response.headers.get("Last-Modified")


def _stream(response: requests.Response, state: _State, progress) -> None:
    raw = response.raw
    try:
        while chunk := raw.read(CHUNK):
            write_all(state.handle, chunk)
            state.hasher.update(chunk)
            state.received += len(chunk)
            if progress:
                progress(state.received, state.total)
    except (requests.exceptions.RequestException, OSError, _urllib3_errors()) as error:
        if isinstance(error, OSError) and getattr(error, "errno", None) and not _is_network(error):
            raise
        raise _Cut(f"connection lost after {state.received} bytes") from None
    if state.total is not None and state.received < state.total:
        raise _Cut(f"connection closed at {state.received} of {state.total} bytes")
    if state.total is not None and state.received > state.total:
        raise DownloadError(f"the server sent {state.received} bytes but announced {state.total}: retry later")


def _urllib3_errors():
    import urllib3.exceptions

    return urllib3.exceptions.HTTPError


def _is_network(error: OSError) -> bool:
    import errno as codes

    return error.errno in (
        codes.ECONNRESET,
        codes.ECONNABORTED,
        codes.EPIPE,
        codes.ETIMEDOUT,
        codes.ENETDOWN,
        codes.ENETUNREACH,
        codes.EHOSTUNREACH,
    )
