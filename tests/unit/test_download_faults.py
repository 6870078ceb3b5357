"""HTTP failure modes of the backup download, against a local misbehaving server.
Whatever happens, no partial file ever carries a final name."""

import hashlib
import os
import time

import pytest

from stash_backup_plugin.server.connection import Connection
from stash_backup_plugin.server import download as download_module
from stash_backup_plugin.server.download import download
from stash_backup_plugin.core.errors import AuthError, DownloadError, LinkExpiredError
from stash_backup_plugin.server.http_session import new_session

from tests.support.fault_server import FaultServer

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
NAME = "stash-go.sqlite.85.20261126_180102"


def fetch(server, folder, **kwargs):
    session = new_session(Connection(server.url, api_key="secret-key"))
    kwargs.setdefault("pause", lambda seconds: None)
    return download(session, f"{server.url}/downloads/abc/{NAME}", folder, NAME, **kwargs)


def folder_is_clean(folder):
    return sorted(p.name for p in folder.iterdir()) == []


@pytest.mark.parametrize("percent", [0, 10, 50, 99])
def test_cut_at_percent_resumes_with_range_and_gets_every_byte(tmp_path, percent):
    cut = len(PAYLOAD) * percent // 100
    with FaultServer(PAYLOAD) as server:
        server.script = lambda n, h: server.serve(h, cut_at=cut) if n == 1 else None
        result = fetch(server, tmp_path)
        assert server.requests[1]["headers"].get("Range") == (f"bytes={cut}-" if cut else None)
        if cut:
            assert server.requests[1]["headers"].get("If-Range") == '"v1"'
    assert result.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert result.temp_path.read_bytes() == PAYLOAD
    assert result.temp_path.name != NAME and result.temp_path.parent == tmp_path
    assert result.resumes == 1


def test_cut_every_time_gives_up_with_a_clear_error_and_leaves_nothing(tmp_path):
    with FaultServer(PAYLOAD) as server:
        server.script = lambda n, h: server.serve(h, cut_at=len(PAYLOAD) // 2)
        with pytest.raises(DownloadError, match="kept failing after 2 resumes"):
            fetch(server, tmp_path, max_resumes=2)
    assert folder_is_clean(tmp_path)


def test_link_gone_after_the_window_is_a_link_expired_error(tmp_path):
    with FaultServer(PAYLOAD) as server:
        server.script = lambda n, h: server.serve(h, cut_at=1000) if n == 1 else server.status(h, 404)
        with pytest.raises(LinkExpiredError, match="expired"):
            fetch(server, tmp_path)
    assert folder_is_clean(tmp_path)


def test_unauthorised_is_an_auth_error_without_the_key_in_it(tmp_path):
    with FaultServer(PAYLOAD) as server:
        server.script = lambda n, h: server.status(h, 401)
        with pytest.raises(AuthError) as raised:
            fetch(server, tmp_path)
    assert "secret-key" not in str(raised.value)
    assert folder_is_clean(tmp_path)


def test_slow_server_that_stalls_is_resumed(tmp_path):
    with FaultServer(PAYLOAD) as server:
        server.script = lambda n, h: server.serve(h, stall=1.5) if n == 1 else None
        result = fetch(server, tmp_path, read_timeout=0.5)
    assert result.temp_path.read_bytes() == PAYLOAD
    assert result.resumes >= 1


def test_a_silent_connection_is_resumed_while_stashs_link_still_lives(tmp_path):
    """Stash forgets a link 30 s after its first request once no request is open: a
    connection that went silent (the server's side already gone) must be given up and
    resumed inside that window. Scaled down tenfold, times and our default alike."""
    scale = 0.1
    window = 30 * scale  # Stash's own 30 s, not our constant
    with FaultServer(PAYLOAD) as server:
        first_request = []

        def stash_like(number, handler):
            now = time.monotonic()
            if number == 1:
                first_request.append(now)
                return server.serve(handler, stall=3 * window)  # half the bytes, then silence
            if now - first_request[0] > window:
                return server.status(handler, 404)
            return None

        server.script = stash_like
        result = fetch(server, tmp_path, read_timeout=download_module.READ_TIMEOUT * scale)
    assert result.temp_path.read_bytes() == PAYLOAD and result.resumes == 1
    resumed_at = int(server.requests[1]["headers"]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(PAYLOAD) // 2  # resumed, not started over


def test_server_that_ignores_range_starts_over(tmp_path):
    with FaultServer(PAYLOAD) as server:
        server.script = lambda n, h: server.serve(h, cut_at=5000) if n == 1 else server.serve(h, ignore_range=True)
        result = fetch(server, tmp_path)
    assert result.temp_path.read_bytes() == PAYLOAD


def test_resume_at_the_wrong_offset_is_refused(tmp_path):
    with FaultServer(PAYLOAD) as server:
        server.script = lambda n, h: server.serve(h, cut_at=5000) if n == 1 else server.serve(h, wrong_offset=True)
        with pytest.raises(DownloadError, match="wrong offset"):
            fetch(server, tmp_path)
    assert folder_is_clean(tmp_path)


def test_wrong_length_short_body_then_close_is_resumed_not_accepted(tmp_path):
    with FaultServer(PAYLOAD) as server:
        server.script = lambda n, h: server.serve(h, cut_at=len(PAYLOAD) - 1) if n == 1 else None
        result = fetch(server, tmp_path)
    assert result.size == len(PAYLOAD)


def test_redirect_to_another_host_is_refused_and_the_key_never_leaves(tmp_path):
    with FaultServer(PAYLOAD) as other, FaultServer(PAYLOAD) as server:
        server.script = lambda n, h: server.status(h, 302, {"Location": f"{other.url}/steal"})
        with pytest.raises(DownloadError, match="redirected"):
            fetch(server, tmp_path)
        assert other.requests == []
    assert folder_is_clean(tmp_path)


def test_full_disk_is_a_one_line_storage_error(tmp_path, monkeypatch):
    import errno
    from stash_backup_plugin.core import atomic as module
    from stash_backup_plugin.core.errors import StorageError

    class FullDisk:
        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.real.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open
    monkeypatch.setattr(module, "open", lambda *a, **k: FullDisk(real_open(*a, **k)), raising=False)
    with FaultServer(PAYLOAD) as server:
        with pytest.raises(StorageError, match="disk is full"):
            fetch(server, tmp_path)
    assert folder_is_clean(tmp_path)
