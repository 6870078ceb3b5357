"""`stash-backup schedule`: systemd units that `systemd-analyze verify` accepts, and a
crontab line that Debian's real `crontab` installs (in a private mount namespace whose
crontab spool is a fresh tmpfs, so the machine's own crontabs are never touched); the
API key only in a 0600 settings file; show and remove; bad input is one line. With
--offsite, the crontab line cron would run, run as cron runs it (bare environment),
downloads from a real Stash and pushes to a real SeaweedFS; a push that fails fails the
run and notifies."""

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from stash_backup_plugin.cli.schedule import calendar_for, replace_cron_block, CRON_BEGIN
from stash_backup_plugin.core.errors import UsageError
from stash_backup_plugin.core.retention import FREQUENT_SCHEDULE_POLICY, default_schedule_policy, parse_duration
from stash_backup_plugin.offsite.rclone import Rclone
from stash_backup_plugin.offsite.remote import RemoteArchive

from tests.support.harness import REPO, run_cli
from tests.support.notify_receiver import Receiver
from tests.support.offsite_fixtures import seaweed, write_config  # noqa: F401
from tests.support.offsite_servers import SECRET_KEY, make_bucket
from tests.support.stash_server.build import NEW_VERSION
from tests.support.stash_server.server import seed_content

SECRET = "api-k3y-for-schedule"


@pytest.mark.parametrize(
    "every, systemd, cron",
    [
        ("1h", "*-*-* 00/1:30:00", "30 * * * *"),
        ("6h", "*-*-* 03/6:30:00", "30 3-23/6 * * *"),
        ("24h", "*-*-* 03:30:00", "30 3 * * *"),
        ("1d", "*-*-* 03:30:00", "30 3 * * *"),
        ("1w", "Mon *-*-* 03:30:00", "30 3 * * 1"),
        ("1m", "*-*-01 03:30:00", "30 3 1 * *"),
    ],
)
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
    result = run_cli(
        "schedule",
        "install",
        "--via",
        "systemd-user",
        "--unit-dir",
        str(units),
        "--env-file",
        str(env_file),
        "--no-enable",
        "--every",
        "6h",
        "--keep-daily",
        "7",
        "--api-key",
        SECRET,
        "--dest",
        str(tmp_path / "archive"),
        "--notify",
        f"ntfy://{SECRET}@127.0.0.1/t",
    )
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
    removed = run_cli(
        "schedule", "remove", "--via", "systemd-user", "--unit-dir", str(units), "--env-file", str(env_file)
    )
    assert removed.returncode == 0 and not any(units.iterdir()) and not env_file.exists(), removed.stderr


def test_a_broken_unit_fails_systemd_analyze_verify(tmp_path):
    """The check above can fail: systemd-analyze rejects a bad calendar."""
    (tmp_path / "bad.timer").write_text("[Timer]\nOnCalendar=every tuesday-ish\n[Install]\nWantedBy=timers.target\n")
    (tmp_path / "bad.service").write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    assert (
        subprocess.run(["systemd-analyze", "verify", str(tmp_path / "bad.timer")], capture_output=True).returncode != 0
    )


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
    env = dict(
        os.environ,
        PY=sys.executable,
        ENV_FILE=str(tmp_path / "schedule.env"),
        SECRET=SECRET,
        ARCHIVE=str(tmp_path / "archive"),
        PYTHONPATH=str(REPO),
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", CRON_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    crontab = result.stdout.split("--- crontab\n")[1].split("--- show")[0]
    assert crontab.startswith('MAILTO=""\n5 4 * * * /usr/bin/true\n')  # the user's own lines stay
    assert crontab.count("stash_backup_plugin download") == 1  # installed twice, present once
    assert "\n30 3-23/12 * * * set -a && . " in crontab  # the second install (12h) replaced the first
    # more often than daily and no --keep-* given: the frequent schedule's policy
    assert "prune --quiet --keep-hourly=24 --keep-daily=7 --keep-weekly=4 --keep-monthly=12" in crontab
    assert "--keep-last" not in crontab
    assert SECRET not in crontab and SECRET not in result.stderr
    after = result.stdout.split("--- after remove\n")[1]
    assert after == 'MAILTO=""\n5 4 * * * /usr/bin/true\n'
    assert not (tmp_path / "schedule.env").exists()


def test_bad_schedule_input_is_one_line_and_writes_nothing(tmp_path):
    result = run_cli(
        "schedule",
        "install",
        "--via",
        "systemd-user",
        "--unit-dir",
        str(tmp_path / "u"),
        "--env-file",
        str(tmp_path / "e.env"),
        "--no-enable",
        "--every",
        "5h",
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot be scheduled evenly" in result.stderr
    assert not (tmp_path / "u").exists() and not (tmp_path / "e.env").exists()


def test_offsite_units_push_after_the_download_and_keep_the_remote_out_of_them(tmp_path):
    units, env_file, config = tmp_path / "units", tmp_path / "schedule.env", tmp_path / "rclone.conf"
    config.write_text(f"[sw]\ntype = s3\nsecret_access_key = {SECRET_KEY}\n")
    remote = f"sw:bucket-{SECRET}/stash"
    result = run_cli(
        "schedule",
        "install",
        "--via",
        "systemd-user",
        "--unit-dir",
        str(units),
        "--env-file",
        str(env_file),
        "--no-enable",
        "--keep-last",
        "3",
        "--dest",
        str(tmp_path / "archive"),
        "--offsite",
        "--remote",
        remote,
        "--rclone-config",
        str(config),
    )
    assert result.returncode == 0, result.stderr
    service = (units / "stash-backup.service").read_text()
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(units / "stash-backup.timer"), str(units / "stash-backup.service")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    steps = [
        line.split(" -m stash_backup_plugin ")[1] for line in service.splitlines() if line.startswith("ExecStart=")
    ]
    assert steps == ["download --quiet", "offsite push --quiet", "prune --quiet --keep-last=3"]
    assert SECRET not in service and SECRET_KEY not in env_file.read_text() + service  # the config is referenced
    settings = env_file.read_text()
    assert f"STASH_BACKUP_REMOTE='{remote}'" in settings and f"RCLONE_CONFIG='{config}'" in settings
    assert "STASH_BACKUP_RCLONE='/" in settings  # pinned: cron's PATH would not find a user's rclone
    shown = run_cli("schedule", "show", "--via", "systemd-user", "--unit-dir", str(units))
    assert "offsite push --quiet" in shown.stdout
    removed = run_cli(
        "schedule", "remove", "--via", "systemd-user", "--unit-dir", str(units), "--env-file", str(env_file)
    )
    assert removed.returncode == 0 and not any(units.iterdir()) and not env_file.exists(), removed.stderr


def test_offsite_without_a_remote_is_one_line_and_writes_nothing(tmp_path):
    env = {"STASH_BACKUP_REMOTE": ""}
    result = run_cli(
        "schedule", "install", "--via", "cron", "--env-file", str(tmp_path / "e.env"), "--offsite", env=env
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--offsite needs --remote" in result.stderr
    missing = run_cli(
        "schedule",
        "install",
        "--via",
        "cron",
        "--env-file",
        str(tmp_path / "e.env"),
        "--offsite",
        "--remote",
        "sw:b",
        "--rclone-config",
        str(tmp_path / "nope.conf"),
        env=env,
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert not (tmp_path / "e.env").exists()


CRON_INSTALL = r"""
set -e
mount -t tmpfs -o mode=1730,gid=crontab tmpfs /var/spool/cron/crontabs
"$PY" -m stash_backup_plugin schedule install --via cron --every 1d --env-file "$ENV_FILE" --url "$STASH" --dest "$ARCHIVE" --notify "$HOOK" --offsite --remote "$REMOTE" --rclone-config "$RCLONE_CONF"
crontab -l
"""


def _as_cron_runs_it(line: str, home) -> subprocess.CompletedProcess:
    """The command of a crontab line through /bin/sh, with cron's bare environment
    (only PYTHONPATH added: this checkout is not installed)."""
    command = line.split(" ", 5)[5].replace("\\%", "%")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "SHELL": "/bin/sh", "LOGNAME": "root", "PYTHONPATH": str(REPO)}
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.e2e
def test_the_scheduled_offsite_run_pushes_the_new_backup_and_a_failed_push_fails_it(
    stash_server_factory, seaweed, tmp_path
):
    bucket = "t-" + uuid.uuid4().hex[:10]
    config = write_config(tmp_path / "rclone.conf", seaweed=seaweed)
    make_bucket(config, f"sw:{bucket}")
    server = stash_server_factory(NEW_VERSION, install_plugin=False)
    seed_content(server)
    archive, home = tmp_path / "archive", tmp_path / "home"
    home.mkdir()
    with Receiver() as receiver:
        env = dict(
            os.environ,
            PY=sys.executable,
            ENV_FILE=str(tmp_path / "schedule.env"),
            STASH=server.url,
            ARCHIVE=str(archive),
            HOOK=f"http://127.0.0.1:{receiver.port}/hook?key={SECRET}",
            REMOTE=f"sw:{bucket}/stash",
            RCLONE_CONF=str(config),
            PYTHONPATH=str(REPO),
        )
        installed = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", CRON_INSTALL],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
        line = next(row for row in installed.stdout.splitlines() if "stash_backup_plugin download" in row)
        assert "offsite push --quiet" in line and SECRET not in line and SECRET_KEY not in line and bucket not in line

        first = _as_cron_runs_it(line, home)
        assert first.returncode == 0, first.stdout + first.stderr
        remote = RemoteArchive(Rclone(config), f"sw:{bucket}/stash")
        pushed = [backup.name for backup in remote.read_manifest().backups]
        local = json.loads(run_cli("list", "--json", "--dest", str(archive)).stdout)
        assert len(local) == 1 and pushed == [local[0]["file"]]  # the backup just made is the one off-site

        good = write_config(tmp_path / "good.conf", seaweed=seaweed)  # the checks' own view of the remote
        remote = RemoteArchive(Rclone(good), f"sw:{bucket}/stash")
        config.write_text(config.read_text().replace(SECRET_KEY, "wrong-" + SECRET_KEY[::-1]))
        second = _as_cron_runs_it(line, home)
        assert second.returncode != 0  # cron's mail, systemd's failed unit and the notification see it
        errors = [row for row in second.stderr.splitlines() if row.startswith("error")]
        assert len(errors) == 1 and "refused the credentials" in errors[0], second.stderr
        requests = receiver.wait_for(1)
    assert len(requests) == 1, requests
    notice = json.dumps(requests[0]["json"])
    assert "Copy off-site" in notice and "refused the credentials" in notice
    everything = first.stdout + first.stderr + second.stdout + second.stderr + notice
    assert SECRET_KEY not in everything and SECRET_KEY[::-1] not in everything and SECRET not in everything
    assert len(json.loads(run_cli("list", "--json", "--dest", str(archive)).stdout)) == 2  # the download stood
    assert len(remote.read_manifest().backups) == 1


def test_before_start_drop_in_passes_systemd_analyze_verify_and_holds_no_secret(tmp_path):
    """`schedule install --before-start stash`: Stash's unit gets ExecStartPre= snapshot
    --offline in a drop-in that systemd accepts; the settings (an API key) are not in it."""
    units = tmp_path / "units"
    units.mkdir()
    stash_unit = units / "stash.service"
    stash_unit.write_text(
        "[Unit]\nDescription=Stash\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
    )
    config = tmp_path / "stash" / "config.yml"
    config.parent.mkdir()
    config.write_text("database: /var/lib/stash/stash-go.sqlite\n")
    result = run_cli(
        "schedule",
        "install",
        "--via",
        "systemd-system",
        "--unit-dir",
        str(units),
        "--no-enable",
        "--before-start",
        "stash",
        "--config",
        str(config),
        "--dest",
        str(tmp_path / "archive"),
        "--api-key",
        SECRET,
    )
    assert result.returncode == 0, result.stderr
    drop_in = units / "stash.service.d" / "stash-backup.conf"
    text = drop_in.read_text()
    assert f"ExecStartPre={sys.executable} -m stash_backup_plugin snapshot --offline --quiet --config {config}" in text
    assert SECRET not in text + result.stderr
    verify = subprocess.run(["systemd-analyze", "verify", str(stash_unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and "stash-backup.conf" not in verify.stderr, verify.stderr
    # The check can fail: systemd-analyze reads the drop-in and names what is wrong in it (a warning).
    drop_in.write_text(text.replace("ExecStartPre=", "ExecStartPre=relative/not-allowed "))
    broken = subprocess.run(["systemd-analyze", "verify", str(stash_unit)], capture_output=True, text=True)
    assert "stash-backup.conf:4: Neither a valid executable" in broken.stderr, broken.stderr
    removed = run_cli(
        "schedule", "remove", "--via", "systemd-system", "--unit-dir", str(units), "--before-start", "stash"
    )
    assert removed.returncode == 0 and not drop_in.exists(), removed.stderr


@pytest.mark.parametrize("unit", ["../etc/passwd", ".service", "a/b"])
def test_before_start_refuses_a_name_outside_the_unit_folder(tmp_path, unit):
    config = tmp_path / "config.yml"
    config.write_text("database: x\n")
    result = run_cli(
        "schedule",
        "install",
        "--via",
        "systemd-system",
        "--unit-dir",
        str(tmp_path / "units"),
        "--no-enable",
        "--before-start",
        unit,
        "--config",
        str(config),
    )
    assert result.returncode != 0 and "not a systemd service name" in result.stderr, result.stderr
    assert not (tmp_path / "units").exists()


@pytest.mark.parametrize(
    "every, expected",
    [("1h", FREQUENT_SCHEDULE_POLICY), ("6h", FREQUENT_SCHEDULE_POLICY), ("1d", None), ("1w", None), ("1m", None)],
)
def test_a_schedule_more_often_than_daily_prunes_by_default(every, expected):
    assert default_schedule_policy(parse_duration(every)) == expected
