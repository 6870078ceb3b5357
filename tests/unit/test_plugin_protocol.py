"""Stash's raw plugin protocol and the plugin's settings."""

import io
import json

import pytest

from stash_backup_plugin.plugin import run as plugin
from stash_backup_plugin.core.errors import ConfigError
from stash_backup_plugin.plugin.protocol import PluginLogReporter, encode_log, encode_output, read_input
from stash_backup_plugin.core.retention import Duration, Policy
from stash_backup_plugin.core.sqlite_check import FULL, QUICK


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
    assert settings.include_blobs is True and settings.check_level == QUICK and settings.compress is True
    assert settings.policy.is_empty() and settings.retention_dry_run is False


def test_settings_as_stash_stores_them(tmp_path):
    values = {
        "archiveFolder": str(tmp_path / "a"),
        "includeBlobs": False,
        "fullIntegrityCheck": True,
        "keepDaily": 7,
        "keepWeekly": 4.0,
        "keepLast": "2",
        "keepWithin": "3d",
        "retentionDryRun": "true",
        "storeUncompressed": True,
    }
    settings = plugin.settings_from(values, tmp_path)
    assert settings.compress is False
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
    def explode(payload, reporter, secrets=None):
        raise bug("went wrong near cookie-s3cret\nsecond line")

    monkeypatch.setattr(plugin, "run_task", explode)
    payload = {"server_connection": {"SessionCookie": {"Value": "cookie-s3cret"}}, "args": {"mode": "verify"}}
    answer, log = run_main(json.dumps(payload))
    error = answer["error"]
    assert error.startswith(f"stash-backup stopped on an unexpected error ({bug.__name__} at test_plugin_protocol.py:")
    assert "[redacted]" in error and "cookie-s3cret" not in error and "\n" not in error
    assert "JSON" not in error and "Traceback" not in error and log == ""


@pytest.mark.parametrize(
    "text,expected",
    [
        ("ssl_cert_path: /certs/stash.crt\n", "/certs/stash.crt"),
        ("a: 1\nssl_cert_path: '/my certs/it''s.crt'  # comment\n", "/my certs/it's.crt"),
        ('ssl_cert_path: "C:\\\\stash\\\\stash.crt"\n', "C:\\stash\\stash.crt"),
        ("ssl_cert_path: /plain/path # a comment\n", "/plain/path"),
        ("ssl_cert_path:\n", None),
        ("ssl_cert_path: ''\n", ""),
        ("nested:\n  ssl_cert_path: /not/top/level\n", None),
        ("ssl_cert_path: |\n  /block\n", None),
        ("ssl_cert_path: *alias\n", None),
        ("ssl_cert_path_other: /x\n", None),
    ],
)
def test_one_config_yml_value_is_read_without_a_yaml_parser(text, expected):
    assert plugin.config_line_value(text, "ssl_cert_path") == expected


def test_verify_reads_a_rotating_part_of_the_images_each_day():
    from stash_backup_plugin.plugin.run import _read_data_today, settings_from

    assert _read_data_today(0) is None and str(_read_data_today(1)) == "all"
    from pathlib import Path

    settings = settings_from({"verifyReadDataParts": "7"}, Path("."))
    today = _read_data_today(settings.verify_read_data_parts)
    assert today.parts == 7 and 1 <= today.part <= 7


def archive_of_two_backups(folder):
    """Two verified backups, a day apart: Keep last 1 would remove the older."""
    entries = []
    for day in (1, 2):
        name = f"stash-go.sqlite.85.2026010{day}_030000.zip"
        (folder / name).write_bytes(b"a backup")
        entries.append(
            {
                "file": name,
                "size": 8,
                "sha256": "0" * 64,
                "schema_version": 85,
                "created": f"2026-01-0{day}T03:00:00",
                "kind": "zip",
                "added_at": f"2026-01-0{day}T03:00:00",
                "verified_at": f"2026-01-0{day}T03:00:00",
                "verified_level": "quick",
                "verified_ok": True,
            }
        )
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "entries": entries}))


def files_in(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_misspelt_mode_runs_nothing_and_says_so(tmp_path):
    """A mode is looked up in the table of modes; nothing else runs (the if-chain's last
    branch ran retention for any mode it had not matched)."""
    archive_of_two_backups(tmp_path)
    before = files_in(tmp_path)
    answer, log = run_main(
        json.dumps(
            {
                "server_connection": {"Dir": str(tmp_path)},
                "args": {"mode": "pruen", "archiveFolder": str(tmp_path), "keepLast": 1},
            }
        )
    )
    assert answer["error"] == (
        "unknown task mode 'pruen': the plugin manifest must set mode to one of "
        "backup, download, verify, retention, drill, offsite, check-live"
    )
    assert answer["output"] is None and log == ""
    assert files_in(tmp_path) == before  # nothing removed, no status.json


def test_every_mode_is_a_handler_in_the_table_and_the_manifest_names_only_those():
    import yaml
    from stash_backup_plugin.cli.install import manifest_text

    assert all(callable(handler) for handler in [*plugin.MODES.values(), *plugin.OPERATIONS.values()])
    assert not set(plugin.MODES) & set(plugin.OPERATIONS)
    tasks = yaml.safe_load(manifest_text())["tasks"]
    assert tasks and all(task["defaultArgs"]["mode"] in plugin.MODES for task in tasks), tasks
