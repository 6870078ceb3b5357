"""core/memory.py: large buffers in mappings of their own, in a real process (glibc)."""

import os
import subprocess
import sys


from stash_backup_plugin.core import memory, terminal

MAPPED_AFTER_A_FREE = """
import ctypes, sys
from stash_backup_plugin.core.memory import return_large_buffers

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
took = return_large_buffers() if sys.argv[1] == "set" else False
freed = bytearray(1 << 20)
del freed  # glibc raises its threshold past this size, unless it is held
before = libc.mallinfo2().hblks
held = bytearray(1 << 20)
print(took, libc.mallinfo2().hblks - before)
"""

FAULTS_OF_FREED_FRAMES = """
import resource, sys, zlib
from stash_backup_plugin.core.memory import keep_freed_memory

took = keep_freed_memory() if sys.argv[1] == "set" else False
frame = zlib.compress(bytes(range(256)) * 4096)  # 1 MiB, as a restore decompresses them
for _ in range(2):
    zlib.decompressobj().decompress(frame, 1 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    zlib.decompressobj().decompress(frame, 1 << 20)
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

WITHOUT_CHARSET_DETECTION = """
import sys, warnings
warnings.simplefilter("error")  # a warning on stderr would fail the script
from stash_backup_plugin.core.memory import leave_out_charset_detection

from stash_backup_plugin.core import memory

if sys.argv[1] == "old":  # requests before 2.32 does not import without a detector
    memory._requests_version = lambda: (2, 31)
took = leave_out_charset_detection() if sys.argv[1] != "leave" else False
import requests
from gql.transport.requests import RequestsHTTPTransport

loaded = sys.modules.get("charset_normalizer") is not None or sys.modules.get("chardet") is not None
answer = requests.models.Response()  # as Stash answers, and with no charset to go by
answer._content = '{"title":"Café-été"}'.encode()
print(took, loaded, leave_out_charset_detection(), answer.json()["title"], answer.text)
"""


def run_script(script: str, how: str, **env) -> list[str]:
    return subprocess.run(
        [sys.executable, "-c", script, how],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
    ).stdout.split()


def test_a_large_buffer_after_a_freed_one_is_still_mapped_on_its_own():
    assert memory._glibc(), "this test needs glibc's malloc (Debian's, as CI runs)"
    assert run_script(MAPPED_AFTER_A_FREE, "leave", MALLOC_MMAP_THRESHOLD_=None) == ["False", "0"]  # arena's, kept
    assert run_script(MAPPED_AFTER_A_FREE, "set", MALLOC_MMAP_THRESHOLD_=None) == ["True", "1"]  # given back
    assert run_script(MAPPED_AFTER_A_FREE, "set", MALLOC_MMAP_THRESHOLD_="4194304")[0] == "False"  # the user's


def test_freed_frames_are_used_again_without_page_faults_when_kept():
    """Left to glibc, each freed 1 MiB frame at an arena's top is given back and the
    next faulted in again (about 500 faults a frame)."""
    assert memory._glibc(), "this test needs glibc's malloc (Debian's, as CI runs)"
    unset = {"MALLOC_MMAP_THRESHOLD_": None, "MALLOC_TRIM_THRESHOLD_": None}
    took, faults = run_script(FAULTS_OF_FREED_FRAMES, "leave", **unset)
    assert took == "False" and int(faults) > 50 * 100
    took, faults = run_script(FAULTS_OF_FREED_FRAMES, "set", **unset)
    assert took == "True" and int(faults) < 50
    took, faults = run_script(FAULTS_OF_FREED_FRAMES, "set", **{**unset, "MALLOC_TRIM_THRESHOLD_": "1000"})
    assert took == "False" and int(faults) > 50 * 100  # the user's own choice


def test_requests_reads_json_without_loading_a_charset_detector():
    """3.8 MiB of RSS beside Stash (a night at 2 GiB: 66 -> 63 MiB), and no warning."""
    took, loaded, again, title, text = run_script(WITHOUT_CHARSET_DETECTION, "set")
    assert (took, loaded, again) == ("True", "False", "True")
    assert title == "Café-été" and text == '{"title":"Café-été"}'  # UTF-8, not a guess
    took, loaded, again = run_script(WITHOUT_CHARSET_DETECTION, "leave")[:3]
    assert (took, loaded, again) == ("False", "True", "False")  # too late once requests has one
    took, loaded, again = run_script(WITHOUT_CHARSET_DETECTION, "old")[:3]
    assert (took, loaded, again) == ("False", "True", "False")


def test_the_installed_requests_version_is_read():
    import requests

    assert memory._requests_version() == tuple(int(part) for part in requests.__version__.split(".")[:2])
    assert memory._requests_version() >= memory.REQUESTS_WITHOUT_DETECTOR  # as CI installs it


def test_nothing_is_changed_without_glibc(monkeypatch):
    def not_glibc(name):
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(memory.os, "confstr", not_glibc)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert memory.return_large_buffers() is False
    assert memory.keep_freed_memory() is False


def test_stash_backup_holds_it_before_a_command_runs_and_stash_restore_keeps_freed_memory(monkeypatch):
    """stash-restore runs with Stash stopped: its time counts, not its peak."""
    from stash_backup_plugin.cli import commands
    from stash_backup_plugin.offline import cli as restore_cli

    calls = []
    monkeypatch.setattr(terminal, "beside_stash", lambda: calls.append("set"))
    assert terminal.run_command(terminal.TerminalReporter(quiet=True), lambda: calls.append("ran") or 0) == 0
    assert calls == ["set", "ran"]
    calls.clear()
    monkeypatch.setattr(
        commands, "COMMANDS", {**commands.COMMANDS, "list": lambda args, report: calls.append("ran") or 0}
    )
    assert commands.main(["list", "--dest", "/nonexistent-archive"]) == 0
    assert calls == ["set", "ran"]
    calls.clear()
    monkeypatch.setattr(restore_cli, "_run", lambda args, report: calls.append("ran") or 0)
    monkeypatch.setattr(restore_cli, "keep_freed_memory", lambda: calls.append("keep"))
    assert restore_cli.main(["--list"]) == 0
    assert calls == ["keep", "ran"]


def test_copies_read_into_one_buffer_per_thread_and_a_copy_within_a_copy_gets_its_own(tmp_path):
    """A fresh 1 MiB bytes object per read is a fresh mapping once large buffers are
    mapped on their own: copies read into the thread's one buffer instead."""
    import hashlib
    import io
    import threading

    from stash_backup_plugin.core import hashing

    data = os.urandom(3 * hashing.CHUNK + 12345)
    (tmp_path / "source").write_bytes(data)

    class Nested(io.BytesIO):  # a target that copies something else as it writes
        def write(self, chunk):
            inner = io.BytesIO()
            assert hashing.copy_and_hash(io.BytesIO(b"x" * 10), inner)[1] == 10
            return super().write(chunk)

    results = {}

    def copy(name):
        target = Nested()
        with open(tmp_path / "source", "rb") as source:
            results[name] = hashing.copy_and_hash(source, target, "md5"), target.getvalue()

    threads = [threading.Thread(target=copy, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: ((hashlib.md5(data).hexdigest(), len(data)), data) for n in range(3)}

    class ReadOnly:  # no readinto: read() as before
        def __init__(self):
            self.inner = io.BytesIO(data)

        def read(self, size):
            return self.inner.read(size)

    out = io.BytesIO()
    assert hashing.copy_and_hash(ReadOnly(), out, "sha256") == (hashlib.sha256(data).hexdigest(), len(data))
    assert out.getvalue() == data


def test_the_plugin_leaves_out_charset_detection_before_it_imports_requests():
    script = (
        "import io, sys\n"
        "sys.stdin = io.StringIO('not JSON: run by hand')\n"
        "from stash_backup_plugin.plugin import task\n"
        "task.main()\n"
        "print('requests' in sys.modules, sys.modules.get('charset_normalizer') is not None, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "expects Stash's task input" in done.stdout
    assert done.stderr.split() == ["True", "False"]
