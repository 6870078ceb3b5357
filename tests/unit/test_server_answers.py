"""Answers from whatever listens at the server URL are not trusted: a gzip bomb, an
answer too large, an encoding we did not ask for, a damaged gzip stream and JSON of
the wrong shape each end as one line and a non-zero exit, with memory bounded.
Against a real local HTTP server (tests/support/fault_server.py)."""

import json
import os
import subprocess
import sys
import zlib

import pytest

from stash_backup_plugin.core.bounded import MAX_ANSWER_BYTES, read_bounded
from stash_backup_plugin.core.errors import ServerError
from stash_backup_plugin.server.connection import Connection
from stash_backup_plugin.server.graphql_client import StashClient

from tests.support.harness import REPO
from tests.support.fault_server import FaultServer

SERVER_INFO = {
    "version": {"version": "v0.31.1"},
    "systemStatus": {"databaseSchema": 85, "databasePath": "/s/stash-go.sqlite", "configPath": None, "status": "OK"},
    "configuration": {
        "general": {
            "backupDirectoryPath": "",
            "blobsPath": "/s/blobs",
            "blobsStorage": "FILESYSTEM",
            "databasePath": "/s/stash-go.sqlite",
        }
    },
    "backupInput": {"inputFields": [{"name": "download"}, {"name": "includeBlobs"}]},
}


def gzip_of(*parts: bytes, repeat: int = 1) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    head, middle, tail = parts
    return (
        packer.compress(head)
        + b"".join(packer.compress(middle) for _ in range(repeat))
        + packer.compress(tail)
        + packer.flush()
    )


# 512 MiB of JSON in 509 KiB of gzip: what drove the CLI to 1.6 GiB before answers were bounded
BOMB = gzip_of(b'{"data": {"version": {"version": "', b" " * (1024 * 1024), b'"}}}', repeat=512)


def cli_with_rusage(*args: str) -> tuple[int, str, float]:
    """The CLI as a user runs it: exit code, stderr, and its peak RSS in MiB (wait4)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "stash_backup_plugin", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, stderr, usage.ru_maxrss / 1024


def test_a_gzip_bomb_is_refused_in_bounded_memory():
    with FaultServer(b"") as server:
        server.raw_graphql = lambda body: (BOMB, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        code, stderr, peak = cli_with_rusage("backup", "--url", server.url)
        server.raw_graphql = None
        server.graphql = lambda body: {"data": SERVER_INFO}  # an honest small answer: the baseline
        _, _, baseline = cli_with_rusage("backup", "--url", server.url)
    print(f"peak RSS: {peak:.0f} MiB with the bomb, {baseline:.0f} MiB without")
    assert code == 1 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "larger than 4.0 MiB" in stderr
    assert peak < baseline + 40, (peak, baseline)  # the answer's bound (4 MiB) and its copies, not 512 MiB


WRONG_SHAPES = {
    "a list": b"[]",
    "a string": b'"data"',
    "data null": b'{"data": null}',
    "no configuration": b'{"data": {}}',
    "configuration a list": json.dumps({"data": {**SERVER_INFO, "configuration": []}}).encode(),
    "systemStatus a string": json.dumps({"data": {**SERVER_INFO, "systemStatus": "OK"}}).encode(),
    "schema a string": json.dumps({"data": {**SERVER_INFO, "systemStatus": {"databaseSchema": "85"}}}).encode(),
    "a path a number": json.dumps({"data": {**SERVER_INFO, "configuration": {"general": {"blobsPath": 7}}}}).encode(),
    "errors a number": b'{"errors": 5}',
    "errors of lines": b'{"errors": [{"message": "line one\\nline two"}]}',
    "a page": b"<html>\n<body>\n" + b"login\n" * 5000 + b"</body></html>",
}


@pytest.mark.parametrize("name", WRONG_SHAPES)
def test_an_answer_of_the_wrong_shape_is_one_typed_line(name):
    with FaultServer(b"") as server:
        server.raw_graphql = lambda body: (WRONG_SHAPES[name], {"Content-Type": "application/json"})
        with pytest.raises(ServerError) as raised, StashClient(Connection(server.url)) as client:
            client.server_info()
    message = str(raised.value)
    assert "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize(
    "answer,headers,expected",
    [
        (b'{"data": {}}', {"Content-Encoding": "br"}, "the 'br' encoding, which was not asked for"),
        (gzip_of(b'{"data": {', b"", b"}}")[:-12], {"Content-Encoding": "gzip"}, "ends in the middle"),
        (b"\x1f\x8b not gzip at all", {"Content-Encoding": "gzip"}, "damaged gzip answer"),
        (b'{"data": {"x": "' + b" " * MAX_ANSWER_BYTES + b'"}}', {}, "larger than 4.0 MiB"),
    ],
)
def test_answers_that_cannot_be_read_within_bounds_are_refused(answer, headers, expected):
    with FaultServer(b"") as server:
        server.raw_graphql = lambda body: (answer, {"Content-Type": "application/json", **headers})
        with pytest.raises(ServerError, match=expected), StashClient(Connection(server.url)) as client:
            client.server_info()


def test_a_wrong_shape_through_the_cli_is_one_line_and_a_non_zero_exit():
    with FaultServer(b"") as server:
        server.raw_graphql = lambda body: (b'{"data": {}}', {"Content-Type": "application/json"})
        code, stderr, _ = cli_with_rusage("backup", "--url", server.url)
    assert code == 1 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "'configuration'" in stderr


def test_a_small_gzip_answer_is_read_and_the_client_asks_for_gzip_only():
    with FaultServer(b"") as server:
        answer = gzip_of(json.dumps({"data": SERVER_INFO}).encode(), b"", b"")
        server.raw_graphql = lambda body: (answer, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        with StashClient(Connection(server.url)) as client:
            info = client.server_info()
            assert info.schema_version == 85 and info.supports_include_blobs
            assert client.server_info() == info  # the connection serves a second request
        assert server.requests[0]["headers"]["Accept-Encoding"] == "gzip"


def test_read_bounded_inflates_no_further_than_its_bound():
    def reader(data: bytes, size: int = 65536):
        parts = iter([data[i : i + size] for i in range(0, len(data), size)] + [b""])
        return lambda wanted: next(parts)

    with pytest.raises(ServerError, match="larger than 1.0 KiB"):
        read_bounded(reader(BOMB), "x", "gzip", limit=1024)
    assert read_bounded(reader(b"abc"), "x", limit=3) == b"abc"
    assert read_bounded(reader(gzip_of(b"ab", b"c", b"")), "x", "x-gzip", limit=3) == b"abc"
