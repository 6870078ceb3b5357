"""Stash's raw plugin protocol and the plugin's settings."""
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stash_backup_plugin.plugin import run as plugin
from stash_backup_plugin.core.errors import ConfigError
from stash_backup_plugin.plugin.protocol import PluginLogReporter, encode_log, encode_output, read_input
from stash_backup_plugin.core.retention import Duration, Policy
from stash_backup_plugin.core.sqlite_check import FULL, QUICK

REPO = Path(__file__).resolve().parent.parent


def test_log_lines_use_soh_level_stx():
    assert encode_log("info", "hello") == "\x01i\x02hello\n"
    assert encode_log("error", "two\nlines") == "\x01e\x02two\n\x01e\x02lines\n"
    assert encode_log("progress", "0.5") == "\x01p\x020.5\n"


def test_output_is_json_stash_understands():
    assert json.loads(encode_output(output="done")) == {"output": "done", "error": None}
    assert json.loads(encode_output(error="bad")) == {"output": None, "error": "bad"}


def test_read_input():
    assert read_input(io.StringIO('{"args": {"mode": "verify"}}')) == {"args": {"mode": "verify"}}
    assert read_input(io.StringIO("")) == {}


def test_progress_is_throttled_but_ends_at_one():
    stream = io.StringIO()
    reporter = PluginLogReporter(stream)
    for step in range(1000):
        reporter.progress(step / 1000)
    reporter.progress(1.0)
    lines = stream.getvalue().splitlines()
    assert 50 < len(lines) < 400 and lines[-1] == "\x01p\x021.0000"


def test_reporter_redacts_secrets():
    stream = io.StringIO()
    PluginLogReporter(stream, redact=lambda t: t.replace("k3y", "[redacted]")).error("bad key k3y")
    assert "k3y" not in stream.getvalue()


def test_settings_defaults_when_the_user_set_nothing(tmp_path):
    settings = plugin.settings_from({}, tmp_path)
    assert settings.archive_folder == tmp_path / "stash-backup-archive"
    assert settings.include_blobs is True and settings.check_level == QUICK
    assert settings.policy.is_empty() and settings.retention_dry_run is False


def test_settings_as_stash_stores_them(tmp_path):
    values = {"archiveFolder": str(tmp_path / "a"), "includeBlobs": False, "fullIntegrityCheck": True,
              "keepDaily": 7, "keepWeekly": 4.0, "keepLast": "2", "keepWithin": "3d", "retentionDryRun": "true"}
    settings = plugin.settings_from(values, tmp_path)
    assert settings.archive_folder == tmp_path / "a" and not settings.include_blobs and settings.check_level == FULL
    assert settings.policy == Policy(last=2, daily=7, weekly=4, within=Duration(days=3))
    assert settings.retention_dry_run


def test_bad_count_setting_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="keepDaily"):
        plugin.settings_from({"keepDaily": "seven"}, tmp_path)


def test_plugin_id_is_the_manifest_file_name(tmp_path):
    (tmp_path / "my-backups.yml").write_text("exec: [python, '{pluginDir}/stash_backup_plugin/plugin/task.py']")
    assert plugin.plugin_id(tmp_path) == "my-backups"


def run_main(stdin_text):
    stdout, stderr = io.StringIO(), io.StringIO()
    assert plugin.main(io.StringIO(stdin_text), stdout, stderr) == 0
    return json.loads(stdout.getvalue()), stderr.getvalue()


def test_unknown_mode_is_answered_once_as_the_error():
    """Stash logs a returned error at error level itself ("Plugin returned error: …"):
    logging it here as well would show it twice."""
    answer, log = run_main(json.dumps({"server_connection": {}, "args": {"mode": "explode"}}))
    assert "unknown task mode" in answer["error"] and answer["output"] is None
    assert log == ""


def test_input_that_is_not_json_says_so():
    answer, log = run_main("mode=verify")
    assert "expects Stash's task input as JSON on stdin" in answer["error"] and log == ""


@pytest.mark.parametrize("bug", [ValueError, RuntimeError, KeyError, AttributeError])
def test_an_unexpected_exception_is_one_redacted_line_never_a_traceback(monkeypatch, bug):
    def explode(payload, reporter):
        raise bug("went wrong near cookie-s3cret\nsecond line")

    monkeypatch.setattr(plugin, "run_task", explode)
    payload = {"server_connection": {"SessionCookie": {"Value": "cookie-s3cret"}}, "args": {"mode": "verify"}}
    answer, log = run_main(json.dumps(payload))
    error = answer["error"]
    assert error.startswith(f"stash-backup stopped on an unexpected error ({bug.__name__} at test_plugin_protocol.py:")
    assert "[redacted]" in error and "cookie-s3cret" not in error and "\n" not in error
    assert "JSON" not in error and "Traceback" not in error and log == ""


def test_missing_python_packages_name_the_pip_command():
    """Stash's Python may lack gql/requests: one error with the exact command, no traceback."""
    code = ("import importlib.util, sys\n"
            "orig = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda n, *a: None if n in ('gql', 'requests') else orig(n, *a)\n"
            "sys.argv = ['task.py']\n"
            f"exec(open({str(REPO / 'stash_backup_plugin' / 'plugin' / 'task.py')!r}).read(), {{'__name__': '__main__', "
            f"'__file__': {str(REPO / 'stash_backup_plugin' / 'plugin' / 'task.py')!r}}})\n")
    result = subprocess.run([sys.executable, "-c", code], input="{}", capture_output=True, text=True)
    error = json.loads(result.stdout)["error"]
    assert "gql[requests]" in error and "requests" in error and sys.executable in error and "pip install" in error
    assert result.stderr == ""  # answered once, as the error: Stash logs it


def test_verify_reads_a_rotating_part_of_the_images_each_day():
    from stash_backup_plugin.plugin.run import _read_data_today, settings_from
    assert _read_data_today(0) is None and str(_read_data_today(1)) == "all"
    settings = settings_from({"verifyReadDataParts": "7"}, Path("."))
    today = _read_data_today(settings.verify_read_data_parts)
    assert today.parts == 7 and 1 <= today.part <= 7
