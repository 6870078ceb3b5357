"""The restore drill's pure parts and its refusals, without a server: when an
automatic drill is due, what a difference says, what a backup records for it, that
it imports without PyYAML, and that a busy archive, a missing binary or too little
space refuse with one line and change nothing. End to end: test_e2e_drill.py."""

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from stash_backup_plugin.core.archive import Archive, Entry
from stash_backup_plugin.core.atomic import temp_owner_tag
from stash_backup_plugin.core.processes import dies_with_us
from stash_backup_plugin.core.errors import RestoreRefused, UsageError
from stash_backup_plugin.core.reporting import Reporter
from stash_backup_plugin.core.sqlite_check import QUICK, image_samples, library_counts
from stash_backup_plugin.core.stored import import_backup_file
from stash_backup_plugin.jobs.drill import (
    check_drill_every,
    compare_counts,
    drill,
    drill_due,
    needed_space,
    stop_abandoned_stashes,
)
from stash_backup_plugin.jobs import drill as drill_module

from tests.support.harness import REPO, run_cli
from tests.support.stashlike import make_database

NOW = datetime(2026, 1, 10, tzinfo=timezone.utc)


def entry(name: str, drilled_at: str = "") -> Entry:
    return Entry(
        name, 1, "", 75, "2026-01-01T00:00:00", "stored", drill={"at": drilled_at, "ok": True} if drilled_at else {}
    )


def test_drill_every_n_backups_counts_the_backups_since_the_last_drill():
    newest_first = [entry("c"), entry("b"), entry("a", "2026-01-01T00:00:00+00:00")]
    assert drill_due(newest_first, "2") and not drill_due(newest_first, "3")
    assert drill_due([entry("a")], "1")  # never drilled: due
    assert not drill_due(newest_first, "") and not drill_due(newest_first, "0")


def test_drill_every_duration_looks_at_the_last_drill():
    recent = [entry("b"), entry("a", (NOW - timedelta(days=2)).isoformat())]
    assert not drill_due(recent, "7d", NOW) and drill_due(recent, "1d", NOW)
    assert drill_due([entry("a")], "7d", NOW)


def test_a_bad_drill_every_is_refused():
    assert check_drill_every(" 5 ") == "5" and check_drill_every("7d") == "7d"
    with pytest.raises(UsageError):
        check_drill_every("weekly")


def test_differences_name_the_kind_and_both_counts():
    assert compare_counts({"tags": 2, "studios": 1}, {"tags": 2, "studios": 0}) == [
        "studios: the backup recorded 1, Stash reports 0"
    ]


def test_counts_and_samples_read_from_a_database_without_changing_it(tmp_path):
    database = tmp_path / "stash-go.sqlite"
    images = make_database(database, performers=4, wal=False)
    before = database.read_bytes()
    assert library_counts(database) == {"performers": 4}
    samples = image_samples(database, per_kind=3)
    assert [s[0] for s in samples] == ["performer"] * 3 and {s[2] for s in samples} <= set(images)
    assert database.read_bytes() == before


def test_a_stored_backup_records_the_librarys_counts(tmp_path):
    [record] = Archive(archived(tmp_path)).store.headers()
    assert record.counts == {"performers": 2}


def test_the_drill_and_the_restore_engine_import_without_pyyaml():
    """The plugin runs the drill on a Python with only `requests`."""
    code = (
        "import sys; sys.modules['yaml'] = None; import stash_backup_plugin.jobs.drill, "
        "stash_backup_plugin.plugin.run; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.stdout.strip() == "ok", result.stderr


def fake_binary(tmp_path):
    binary = tmp_path / "stash"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    return binary


def archived(tmp_path):
    """An archive holding one stored backup of a small Stash-shaped database."""
    folder = tmp_path / "archive"
    database = tmp_path / "stash-go.sqlite.75.20260101_000000"
    make_database(database, performers=2, wal=False)
    with Archive(folder).locked() as archive:
        import_backup_file(archive.store, database, database.name, QUICK, Reporter(), source="test")
    return folder


def listing(folder):
    """The archive's files, but the status file (which records the refused attempt, as for every job)."""
    return sorted(p.name for p in folder.rglob("*") if "status" not in p.name)


def test_refusals_are_one_line_and_change_nothing(tmp_path, monkeypatch):
    folder = archived(tmp_path)
    before = listing(folder)
    result = run_cli("drill", "--dest", str(folder), "--stash-binary", str(tmp_path / "nope"))
    assert result.returncode != 0 and "no Stash binary at" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("drill", "no-such-backup", "--dest", str(folder), "--stash-binary", str(fake_binary(tmp_path)))
    assert result.returncode != 0 and "no backup named no-such-backup" in result.stderr
    monkeypatch.setattr(drill_module, "needed_space", lambda database, blobs: 1 << 60)
    with pytest.raises(RestoreRefused, match="not enough space for a restore drill"):
        drill(Archive(folder), None, fake_binary(tmp_path), Reporter())
    assert listing(folder) == before
    assert needed_space(100, 50) > 250


def test_a_drill_waits_for_no_other_job(tmp_path):
    folder = archived(tmp_path)
    with Archive(folder).locked():
        with pytest.raises(UsageError, match="another stash-backup run is using"):
            drill(Archive(folder), None, fake_binary(tmp_path), Reporter())


def test_a_stash_that_does_not_start_fails_the_drill_and_leaves_nothing(tmp_path):
    folder = archived(tmp_path)
    result = drill(Archive(folder), None, fake_binary(tmp_path), Reporter(), timeout=30)
    assert not result.ok and "exited with 1" in result.error
    assert not [p for p in folder.iterdir() if p.name.startswith(".drill")]
    [listed] = Archive(folder).entries()
    assert listed.drill["ok"] is False and "exited with 1" in listed.drill["error"]


def test_a_leftover_scratch_folder_of_a_live_drill_is_left_alone(tmp_path):
    folder = tmp_path / "archive"
    live = folder / f".drill.stash-backup-tmp-{os.getpid()}.x-abc"
    live.mkdir(parents=True)
    (live / "stash.pid").write_text(f"{os.getpid()}\n")
    assert stop_abandoned_stashes(folder) == []


# --- a killed drill's Stash: told apart from every other process, stopped, and quickly ------

DEAD_PID = 2**22 - 3  # above any pid_max in use here: a drill that no longer runs


def abandoned_scratch(folder):
    """A scratch folder named as the drill names them, by a drill of this machine that is gone."""
    folder.mkdir(exist_ok=True)
    return Path(
        tempfile.mkdtemp(prefix=f".drill.stash-backup-tmp-{DEAD_PID}.{temp_owner_tag().split('.')[1]}-", dir=folder)
    )


def stand_in(config, cwd, own_group=True) -> subprocess.Popen:
    """A process that looks like a scratch Stash to the system: `--config <path>` among
    its arguments, working in `cwd`, leading its own process group (or not). Returned
    once the system shows its arguments (right after exec, /proc shows none yet)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "--config", str(config)],
        cwd=cwd,
        start_new_session=own_group,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while str(config) not in Path(f"/proc/{process.pid}/cmdline").read_bytes().decode() and time.monotonic() < deadline:
        time.sleep(0.01)
    return process


def with_pid_file(scratch, process):
    (scratch / "stash.pid").write_text(f"{process.pid}\n")
    return process


def test_only_the_stash_of_that_very_folder_is_stopped(tmp_path):
    """The user's Stash, a reused pid with our path elsewhere, a process outside its own
    group: all left running; the scratch Stash itself ended, the whole group."""
    folder = tmp_path / "archive"
    started = []
    try:
        users_stash = abandoned_scratch(folder)
        started.append(with_pid_file(users_stash, stand_in(tmp_path / "config.yml", tmp_path)))
        elsewhere = folder / f".drill.stash-backup-tmp-{DEAD_PID}.x-def"  # another machine's, run long ago
        elsewhere.mkdir()
        started.append(with_pid_file(elsewhere, stand_in(elsewhere / "config.yml", tmp_path)))  # not in that folder
        for path in (elsewhere / "stash.pid", elsewhere):
            os.utime(path, (0, 0))
        not_leader = abandoned_scratch(folder)
        started.append(with_pid_file(not_leader, stand_in(not_leader / "config.yml", not_leader, own_group=False)))
        survivor = abandoned_scratch(folder)
        ours = with_pid_file(survivor, stand_in(survivor / "config.yml", survivor))
        assert stop_abandoned_stashes(folder) == [ours.pid]
        assert ours.wait(timeout=10) is not None
        assert all(process.poll() is None for process in started)
    finally:
        for process in started:
            process.kill()
            process.wait()


def test_a_survivor_that_cannot_be_told_apart_refuses_the_drill(tmp_path, monkeypatch):
    """Where the system will not say what a live pid runs, the drill refuses and kills nothing."""
    folder = tmp_path / "archive"
    scratch = abandoned_scratch(folder)
    process = with_pid_file(scratch, stand_in(scratch / "config.yml", scratch))
    try:
        monkeypatch.setattr(drill_module, "_command_line", lambda pid: None)
        with pytest.raises(RestoreRefused, match=f"process {process.pid} may be the Stash of a killed drill"):
            stop_abandoned_stashes(folder)
        assert process.poll() is None and scratch.is_dir()
    finally:
        process.kill()
        process.wait()


def test_stopping_the_scratch_stash_does_not_wait_out_its_own_zombie(tmp_path):
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    started = time.monotonic()
    drill_module.ScratchStash(process, 1, tmp_path / "stash.log").stop()
    assert process.returncode == -15 and time.monotonic() - started < 2


def test_a_child_whose_drill_died_before_it_started_ends_itself():
    """The instant between fork and PR_SET_PDEATHSIG: the orphan does not start Stash."""
    orphan = subprocess.Popen(["sleep", "60"], preexec_fn=dies_with_us(DEAD_PID))
    assert orphan.wait(timeout=10) == 1
    child = subprocess.Popen(["sleep", "60"], preexec_fn=dies_with_us())
    try:
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_no_runs_cleanup_removes_a_folder_whose_stash_still_runs(tmp_path):
    """A download or prune takes the archive lock and cleans up killed runs' temps: a
    drill's scratch folder whose Stash outlived the drill stays until the next drill
    has told whether that Stash is ours; one whose pid now runs something else goes."""
    from stash_backup_plugin.core.archive import Archive

    folder = tmp_path / "archive"
    survivor = abandoned_scratch(folder)
    reused = abandoned_scratch(folder)
    running = with_pid_file(survivor, stand_in(survivor / "config.yml", tmp_path, own_group=False))
    other = with_pid_file(reused, stand_in(tmp_path / "config.yml", tmp_path))
    try:
        with Archive(folder).locked():
            pass
        assert survivor.is_dir() and reused.is_dir()  # both name a live process
        assert stop_abandoned_stashes(folder) == []  # neither is a Stash the drill started there
        assert (survivor / "stash.pid").exists() and not (reused / "stash.pid").exists()
        with Archive(folder).locked():
            pass
        assert survivor.is_dir() and not reused.exists()
        running.kill()
        running.wait()
        with Archive(folder).locked():
            pass
        assert not survivor.exists()
    finally:
        for process in (running, other):
            process.kill()
            process.wait()


# --- the scratch Stash: its own credentials, its own reasons, no waiting on what is not GraphQL ---


def test_the_scratch_config_has_credentials_of_its_own_and_stashs_own_key_names(tmp_path):
    """Fresh for every drill (never the live ones); the password no bcrypt hash, so no
    password logs in; the log settings spelled as Stash reads them."""
    targets = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        targets.append(drill_module._scratch_target(tmp_path / name))
    first, second = targets
    for target in targets:
        values = json.loads(target.config.path.read_text())
        assert all(
            values.get(key) for key in ("username", "password", "api_key", "jwt_secret_key", "session_store_key")
        )
        assert not values["password"].startswith("$2")  # not bcrypt: CompareHashAndPassword always fails
        assert values["logfile"] == str(target.config.path.parent / "stash.log") and values["loglevel"] == "Info"
        assert "logFile" not in values and "logLevel" not in values
        assert oct(target.config.path.stat().st_mode & 0o777) == "0o600"
    assert all(
        first.config.values[key] != second.config.values[key]
        for key in ("username", "password", "api_key", "jwt_secret_key", "session_store_key")
    )


FAKE_STASH = """#!{python}
# Stands in for the Stash binary: {behaviour}
import json, sys, http.server
config = json.load(open(sys.argv[sys.argv.index("--config") + 1]))
{body}
"""

SERVES_A_PAGE = """
class Page(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>\\n<body>a login page</body>\\n</html>")
    do_GET = do_POST
http.server.HTTPServer(("127.0.0.1", config["port"]), Page).serve_forever()
"""

FAILS_ON_ITS_CONSOLE = """
print("\\x1b[36mINFO\\x1b[0m[2026-12-02 21:48:26] using config file: " + sys.argv[2], flush=True)
print("\\x1b[31mERRO\\x1b[0m[2026-12-02 21:48:26] Couldn't retrieve latest version: offline", flush=True)
print("\\x1b[31mERRO\\x1b[0m[2026-12-02 21:48:26] manager initialization error: schema version 85 is "
      "incompatible with required schema version 72 ", flush=True)
sys.exit(1)
"""


def fake_stash(tmp_path, behaviour: str, body: str) -> Path:
    binary = tmp_path / "fake-stash"
    binary.write_text(FAKE_STASH.format(python=sys.executable, behaviour=behaviour, body=body))
    binary.chmod(0o755)
    return binary


def test_an_answer_that_is_not_graphql_fails_the_drill_at_once(tmp_path):
    folder = archived(tmp_path)
    binary = fake_stash(tmp_path, "a web page on its port", SERVES_A_PAGE)
    started = time.monotonic()
    result = drill(Archive(folder), None, binary, Reporter(), timeout=60)
    assert not result.ok and time.monotonic() - started < 20, result.error
    assert "answered HTTP 200, not GraphQL: <html> <body>a login page</body> </html>" in result.error


def test_stashs_own_reason_comes_from_its_console_output(tmp_path):
    """Written before any log file is open: only the console has it (the update check's
    error, which says nothing about the drill, is passed over)."""
    folder = archived(tmp_path)
    result = drill(
        Archive(folder), None, fake_stash(tmp_path, "fails as Stash does", FAILS_ON_ITS_CONSOLE), Reporter(), timeout=60
    )
    assert result.error == (
        "the drill's Stash exited with 1: manager initialization error: schema version 85 is "
        "incompatible with required schema version 72"
    ), result.error


def test_stash_errors_are_read_from_its_console_and_its_log_file():
    console = (
        "\x1b[36mINFO\x1b[0m[2026-12-02 21:48:26] using config file: /x/config.yml\n"
        "\x1b[31mERRO\x1b[0m[2026-12-02 21:48:27] task failed due to error: An error occurred.\n"
        "error performing migration: table `studio_urls` already exists\n"
        "panic: runtime error: invalid memory address\n"
    )
    log = (
        'time="2026-12-02 21:48:26" level=info msg="using config file"\n'
        'time="2026-12-02 21:48:27" level=error msg="Couldn\'t retrieve latest version: offline"\n'
        'time="2026-12-02 21:48:27" level=error msg="task failed: An error occurred.\\nerror performing '
        'migration: table \\"studio_urls\\" already exists"\n'
    )
    assert drill_module.stash_errors(console) == [
        "task failed due to error: An error occurred.",
        "panic: runtime error: invalid memory address",
    ]
    assert drill_module.stash_errors(log) == [
        'task failed: An error occurred. error performing migration: table "studio_urls" already exists'
    ]
