"""`stash-backup schedule`: systemd units that `systemd-analyze verify` accepts, and a
crontab line that Debian's real `crontab` installs (in a private mount namespace whose
crontab spool is a fresh tmpfs, so the machine's own crontabs are never touched); the
API key only in a 0600 settings file; show and remove; bad input is one line."""
import os
import shutil
import subprocess
import sys

import pytest

from stash_backup_plugin.cli.schedule import calendar_for, replace_cron_block, CRON_BEGIN
from stash_backup_plugin.core.errors import UsageError
from stash_backup_plugin.core.retention import parse_duration

from .conftest import REPO, run_cli

SECRET = "api-k3y-for-schedule"


@pytest.mark.parametrize("every, systemd, cron", [
    ("1h", "*-*-* 00/1:30:00", "30 * * * *"),
    ("6h", "*-*-* 03/6:30:00", "30 3-23/6 * * *"),
    ("24h", "*-*-* 03:30:00", "30 3 * * *"),
    ("1d", "*-*-* 03:30:00", "30 3 * * *"),
    ("1w", "Mon *-*-* 03:30:00", "30 3 * * 1"),
    ("1m", "*-*-01 03:30:00", "30 3 1 * *"),
])
def test_every_maps_to_a_calendar(every, systemd, cron):
    calendar = calendar_for(parse_duration(every), 3, 30)
    assert (calendar.systemd, calendar.cron) == (systemd, cron)


@pytest.mark.parametrize("every", ["5h", "2d", "1m1d", "36h"])
def test_uneven_periods_are_refused(every):
    with pytest.raises(UsageError, match="cannot be scheduled evenly"):
        calendar_for(parse_duration(every), 3, 30)


def test_the_cron_block_replaces_only_itself():
    others = "MAILTO=me\n5 4 * * * /usr/bin/true\n"
    once = replace_cron_block(others, f"{CRON_BEGIN}\nA\n# <<< stash-backup schedule <<<\n")
    twice = replace_cron_block(once, f"{CRON_BEGIN}\nB\n# <<< stash-backup schedule <<<\n")
    assert twice.startswith(others) and "\nB\n" in twice and "\nA\n" not in twice
    assert replace_cron_block(twice, "") == others


def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd (./scripts/test does)"
    units, env_file = tmp_path / "units", tmp_path / "config" / "schedule.env"
    result = run_cli("schedule", "install", "--via", "systemd-user", "--unit-dir", str(units), "--env-file",
                     str(env_file), "--no-enable", "--every", "6h", "--keep-daily", "7", "--api-key", SECRET,
                     "--dest", str(tmp_path / "archive"), "--notify", f"ntfy://{SECRET}@127.0.0.1/t")
    assert result.returncode == 0, result.stderr
    service, timer = units / "stash-backup.service", units / "stash-backup.timer"
    verify = subprocess.run([analyze, "verify", str(timer), str(service)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert "OnCalendar=*-*-* 03/6:30:00" in timer.read_text()
    assert f"ExecStart={sys.executable} -m stash_backup_plugin download --quiet" in service.read_text()
    assert "prune --quiet --keep-daily=7" in service.read_text()
    assert SECRET not in service.read_text() + timer.read_text() + result.stderr
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert f"STASH_API_KEY='{SECRET}'" in env_file.read_text()
    shown = run_cli("schedule", "show", "--via", "systemd-user", "--unit-dir", str(units))
    assert "OnCalendar" in shown.stdout
    removed = run_cli("schedule", "remove", "--via", "systemd-user", "--unit-dir", str(units),
                      "--env-file", str(env_file))
    assert removed.returncode == 0 and not any(units.iterdir()) and not env_file.exists(), removed.stderr


def test_a_broken_unit_fails_systemd_analyze_verify(tmp_path):
    """The check above can fail: systemd-analyze rejects a bad calendar."""
    (tmp_path / "bad.timer").write_text("[Timer]\nOnCalendar=every tuesday-ish\n[Install]\nWantedBy=timers.target\n")
    (tmp_path / "bad.service").write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    assert subprocess.run(["systemd-analyze", "verify", str(tmp_path / "bad.timer")], capture_output=True).returncode != 0


CRON_SCRIPT = r"""
set -e
mount -t tmpfs -o mode=1730,gid=crontab tmpfs /var/spool/cron/crontabs
printf 'MAILTO=""\n5 4 * * * /usr/bin/true\n' | crontab -
"$PY" -m stash_backup_plugin schedule install --via cron --every 1d --at 02:15 --env-file "$ENV_FILE" --api-key "$SECRET" --dest "$ARCHIVE" --keep-last 3
"$PY" -m stash_backup_plugin schedule install --via cron --every 12h --env-file "$ENV_FILE" --api-key "$SECRET" --dest "$ARCHIVE"
echo '--- crontab'
crontab -l
echo '--- show'
"$PY" -m stash_backup_plugin schedule show --via cron
"$PY" -m stash_backup_plugin schedule remove --via cron --env-file "$ENV_FILE"
echo '--- after remove'
crontab -l
"""


def test_crontab_install_show_remove_with_the_real_crontab(tmp_path):
    assert shutil.which("crontab"), "crontab is missing: apt-get install cron (./scripts/test does)"
    assert shutil.which("unshare"), "unshare (util-linux) is missing"
    env = dict(os.environ, PY=sys.executable, ENV_FILE=str(tmp_path / "schedule.env"), SECRET=SECRET,
               ARCHIVE=str(tmp_path / "archive"), PYTHONPATH=str(REPO))
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", CRON_SCRIPT],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    crontab = result.stdout.split("--- crontab\n")[1].split("--- show")[0]
    assert crontab.startswith('MAILTO=""\n5 4 * * * /usr/bin/true\n')  # the user's own lines stay
    assert crontab.count("stash_backup_plugin download") == 1  # installed twice, present once
    assert "\n30 3-23/12 * * * set -a && . " in crontab  # the second install (12h) replaced the first
    assert SECRET not in crontab and SECRET not in result.stderr
    after = result.stdout.split("--- after remove\n")[1]
    assert after == 'MAILTO=""\n5 4 * * * /usr/bin/true\n'
    assert not (tmp_path / "schedule.env").exists()


def test_bad_schedule_input_is_one_line_and_writes_nothing(tmp_path):
    result = run_cli("schedule", "install", "--via", "systemd-user", "--unit-dir", str(tmp_path / "u"),
                     "--env-file", str(tmp_path / "e.env"), "--no-enable", "--every", "5h")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot be scheduled evenly" in result.stderr
    assert not (tmp_path / "u").exists() and not (tmp_path / "e.env").exists()
