"""`stash-backup schedule install|show|remove`: run `stash-backup download` (then
`offsite push` and `prune`) on a schedule with a systemd timer (user or system) or,
where there is no systemd, a crontab line. The settings (URL, API key, archive,
notification URLs, the off-site remote and where rclone and its config are) go into
an environment file only its owner can read, never into the unit or the crontab,
which other tools print. The remote's credentials stay in rclone's own config.

Each step runs only when the one before succeeded (ExecStart= lines of a oneshot
service, `&&` in cron), and any failure is the run's exit code."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..core.atomic import discard, storage_error, write_bytes_atomic
from ..core.errors import ConfigError, UsageError
from ..core.retention import Duration

UNIT = "stash-backup"
CRON_BEGIN = "# >>> stash-backup schedule (managed by 'stash-backup schedule'; edit with it) >>>"
CRON_END = "# <<< stash-backup schedule <<<"
VIAS = ("auto", "systemd-user", "systemd-system", "cron")
EVEN_HOURS = (1, 2, 3, 4, 6, 8, 12)
SUPPORTED = "1h, 2h, 3h, 4h, 6h, 8h, 12h, 1d (24h), 1w (7d), 1m or 1y"


# --- pure: when, what, and the files ---------------------------------------------------


@dataclass(frozen=True)
class Calendar:
    systemd: str  # OnCalendar=
    cron: str  # the five time fields


def calendar_for(every: Duration, hour: int, minute: int) -> Calendar:
    """A calendar that fires every `every`, at `hour:minute` where the period allows."""
    total_hours = every.days * 24 + every.hours
    if every.years and not (every.months or total_hours) and every.years == 1:
        return Calendar(f"*-01-01 {hour:02d}:{minute:02d}:00", f"{minute} {hour} 1 1 *")
    if every.months == 1 and not (every.years or total_hours):
        return Calendar(f"*-*-01 {hour:02d}:{minute:02d}:00", f"{minute} {hour} 1 * *")
    if every.years or every.months:
        raise UsageError(f"--every {every} cannot be scheduled evenly: use {SUPPORTED}")
    if total_hours == 24:
        return Calendar(f"*-*-* {hour:02d}:{minute:02d}:00", f"{minute} {hour} * * *")
    if total_hours == 24 * 7:
        return Calendar(f"Mon *-*-* {hour:02d}:{minute:02d}:00", f"{minute} {hour} * * 1")
    if total_hours in EVEN_HOURS:
        first = hour % total_hours
        return Calendar(
            f"*-*-* {first:02d}/{total_hours}:{minute:02d}:00",
            f"{minute} {first}-23/{total_hours} * * *" if total_hours > 1 else f"{minute} * * * *",
        )
    raise UsageError(f"--every {every} cannot be scheduled evenly: use {SUPPORTED}")


def parse_at(text: str) -> tuple[int, int]:
    try:
        hour, minute = (int(part) for part in text.split(":"))
    except ValueError:
        raise UsageError(f"--at {text!r}: use HH:MM, e.g. 03:30") from None
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise UsageError(f"--at {text!r}: use HH:MM, e.g. 03:30")
    return hour, minute


def env_file_text(values: dict) -> str:
    """KEY='value' lines that both systemd's EnvironmentFile and a POSIX shell read alike."""
    lines = ["# stash-backup schedule settings; readable by this user only"]
    for key, value in values.items():
        if value is None or value == "":
            continue
        if "'" in value or "\n" in value or "\\" in value:
            raise UsageError(
                f"the value for {key} contains a quote, backslash or newline, which the schedule cannot carry safely"
            )
        lines.append(f"{key}='{value}'")
    return "\n".join(lines) + "\n"


def _systemd_quote(arg: str) -> str:
    escaped = arg.replace("%", "%%")
    if any(c in escaped for c in " \t\"'\\;$"):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def service_text(commands: Sequence[Sequence[str]], env_file: Path) -> str:
    exec_lines = "\n".join("ExecStart=" + " ".join(_systemd_quote(a) for a in command) for command in commands)
    return f"""[Unit]
Description=stash-backup: a verified backup of Stash into the archive
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
EnvironmentFile={_systemd_quote(str(env_file))}
{exec_lines}
"""


def timer_text(calendar: Calendar, every: Duration) -> str:
    return f"""[Unit]
Description=Run stash-backup every {every}

[Timer]
OnCalendar={calendar.systemd}
Persistent=true
RandomizedDelaySec=5min

[Install]
WantedBy=timers.target
"""


def cron_block(calendar: Calendar, commands: Sequence[Sequence[str]], env_file: Path) -> str:
    # cron runs the line with /bin/sh; `%` means newline there and must be escaped.
    shell = (
        "set -a && . "
        + shlex.quote(str(env_file))
        + " && set +a && "
        + " && ".join(" ".join(shlex.quote(a) for a in command) for command in commands)
    )
    return f"{CRON_BEGIN}\n{calendar.cron} {shell.replace('%', chr(92) + '%')}\n{CRON_END}\n"


def replace_cron_block(crontab: str, block: str) -> str:
    """The crontab with our block replaced (or appended, or removed when block is "")."""
    kept, inside = [], False
    for line in crontab.splitlines():
        if line == CRON_BEGIN:
            inside = True
        elif line == CRON_END:
            inside = False
        elif not inside:
            kept.append(line)
    text = "\n".join(kept).rstrip("\n")
    text = (text + "\n" if text else "") + block  # cron needs the last line ended
    return text if text.strip() else ""


def cron_block_of(crontab: str) -> str:
    lines, inside = [], False
    for line in crontab.splitlines():
        if line == CRON_BEGIN:
            inside = True
        if inside:
            lines.append(line)
        if line == CRON_END:
            inside = False
    return "\n".join(lines)


def job_commands(keep_args: Sequence[str], quiet: bool = True, offsite: bool = False) -> list[list[str]]:
    """What the schedule runs: this interpreter's stash-backup, so that the packages it
    was installed with are the ones found. The off-site copy comes before the local
    prune: a push that fails leaves the local backups it has not copied yet."""
    base = [sys.executable, "-m", "stash_backup_plugin"]
    commands = [base + ["download"] + (["--quiet"] if quiet else [])]
    if offsite:
        commands.append(base + ["offsite", "push"] + (["--quiet"] if quiet else []))
    if keep_args:
        commands.append(base + ["prune"] + (["--quiet"] if quiet else []) + list(keep_args))
    return commands


# --- where: systemd or cron ---------------------------------------------------------


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def choose_via(via: str) -> str:
    if via != "auto":
        return via
    if systemd_running():
        return "systemd-system" if os.geteuid() == 0 else "systemd-user"
    if shutil.which("crontab"):
        return "cron"
    raise ConfigError(
        "neither a running systemd nor crontab was found: see the README for Docker (a sidecar "
        "container) and Windows (schtasks)"
    )


def default_unit_dir(via: str) -> Path:
    if via == "systemd-system":
        return Path("/etc/systemd/system")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "systemd" / "user"


def default_env_file(via: str) -> Path:
    if via == "systemd-system":
        return Path("/etc/stash-backup/schedule.env")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "stash-backup" / "schedule.env"


def _run(command: list[str], input: Optional[str] = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, input=input, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        raise ConfigError(f"{command[0]} could not run: {error}") from None


def _systemctl(via: str, *args: str) -> subprocess.CompletedProcess:
    return _run(["systemctl", *(["--user"] if via == "systemd-user" else []), *args])


def read_crontab() -> str:
    result = _run(["crontab", "-l"])
    if result.returncode != 0:
        if "no crontab" in result.stderr.lower():
            return ""
        raise ConfigError(f"crontab -l failed: {result.stderr.strip() or result.returncode}")
    return result.stdout


def write_crontab(text: str) -> None:
    result = _run(["crontab", "-r"]) if not text else _run(["crontab", "-"], input=text)
    if result.returncode != 0 and text:
        raise ConfigError(f"crontab could not be written: {result.stderr.strip() or result.returncode}")


# --- the commands ----------------------------------------------------------------------


@dataclass
class Plan:
    via: str
    calendar: Calendar
    commands: list
    env_file: Path
    env: dict
    unit_dir: Path
    every: Duration


def install(plan: Plan, enable: bool = True) -> list[str]:
    """Write the settings file, then the units or the crontab line; on any failure put
    back what was there before. Returns what was done, one line each."""
    done = [f"settings: {plan.env_file} (mode 0600)"]
    backups: dict[Path, Optional[bytes]] = {}
    try:
        _write(plan.env_file, env_file_text(plan.env).encode(), 0o600, backups)
        if plan.via == "cron":
            block = cron_block(plan.calendar, plan.commands, plan.env_file)
            write_crontab(replace_cron_block(read_crontab(), block))
            done.append(f"crontab: {plan.calendar.cron} (see 'crontab -l')")
            return done
        service, timer = plan.unit_dir / f"{UNIT}.service", plan.unit_dir / f"{UNIT}.timer"
        # 0600 as well: systemd reads them as their owner (root, or the user's manager); they
        # name the archive and the settings file, which no other user needs to know.
        _write(service, service_text(plan.commands, plan.env_file).encode(), 0o600, backups)
        _write(timer, timer_text(plan.calendar, plan.every).encode(), 0o600, backups)
        done.append(f"units: {service} and {timer} (OnCalendar={plan.calendar.systemd})")
        if enable:
            for args in (("daemon-reload",), ("enable", "--now", f"{UNIT}.timer")):
                result = _systemctl(plan.via, *args)
                if result.returncode != 0:
                    raise ConfigError(f"systemctl {' '.join(args)} failed: {result.stderr.strip()}")
            done.append(f"enabled and started {UNIT}.timer")
        else:
            done.append(
                "not enabled (--no-enable): run 'systemctl "
                f"{'--user ' if plan.via == 'systemd-user' else ''}enable --now {UNIT}.timer'"
            )
        return done
    except BaseException:
        _restore(backups)
        raise


def _write(path: Path, data: bytes, mode: int, backups: dict) -> None:
    backups.setdefault(path, path.read_bytes() if path.is_file() else None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise storage_error("create", path.parent, error) from error
    write_bytes_atomic(path, data, mode=mode)


def _restore(backups: dict) -> None:
    for path, content in backups.items():
        if content is None:
            discard(path)
        else:
            write_bytes_atomic(path, content, mode=0o600)


def show(via: str, unit_dir: Path) -> list[str]:
    if via == "cron":
        block = cron_block_of(read_crontab())
        return [f"crontab:\n{block}"] if block else []
    lines = [
        f"{path}:\n{path.read_text().rstrip()}"
        for path in (unit_dir / f"{UNIT}.timer", unit_dir / f"{UNIT}.service")
        if path.is_file()
    ]
    if lines and systemd_running():
        lines.append(_systemctl(via, "list-timers", f"{UNIT}.timer", "--all", "--no-pager").stdout.rstrip())
    return lines


def remove(via: str, unit_dir: Path, env_file: Path) -> list[str]:
    done = []
    if via == "cron":
        crontab = read_crontab()
        if cron_block_of(crontab):
            write_crontab(replace_cron_block(crontab, ""))
            done.append("removed the crontab line")
    else:
        timer = unit_dir / f"{UNIT}.timer"
        if timer.is_file() and systemd_running():
            _systemctl(via, "disable", "--now", f"{UNIT}.timer")
        for path in (timer, unit_dir / f"{UNIT}.service"):
            if path.is_file():
                discard(path)
                done.append(f"removed {path}")
        if done and systemd_running():
            _systemctl(via, "daemon-reload")
    if env_file.is_file():
        discard(env_file)
        done.append(f"removed {env_file}")
    return done


# --- before Stash starts: a snapshot of the stopped Stash (systemd drop-in) ----------------

DROP_IN = "stash-backup.conf"
_UNIT_NAME = __import__("re").compile(r"^[A-Za-z0-9:_.@-]+$")


def service_unit_name(unit: str) -> str:
    """Stash's unit as systemd names it (`stash` becomes `stash.service`); a name that
    could leave the unit folder, or is not a service, is refused."""
    name = unit if unit.endswith(".service") else f"{unit}.service"
    if not _UNIT_NAME.match(name) or name.startswith(".") or ".." in name or name == ".service":
        raise UsageError(f"--before-start {unit!r} is not a systemd service name (e.g. stash or stash.service)")
    return name


def drop_in_path(unit_dir: Path, unit: str) -> Path:
    return unit_dir / f"{service_unit_name(unit)}.d" / DROP_IN


def snapshot_command(config: Path, archive: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stash_backup_plugin",
        "snapshot",
        "--offline",
        "--quiet",
        "--config",
        str(config),
        "--dest",
        str(archive),
    ]


def drop_in_text(command: Sequence[str]) -> str:
    """Runs as Stash's own User= before every start (an upgraded binary migrates the
    database on its first start): a snapshot that fails keeps Stash stopped, so no
    migration runs without a verified backup before it. It names only paths: no secret."""
    return (
        "# Written by 'stash-backup schedule install --before-start': a verified backup of the stopped\n"
        "# Stash before every start. Remove with 'stash-backup schedule remove --before-start UNIT'.\n"
        "[Service]\n"
        "ExecStartPre=" + " ".join(_systemd_quote(a) for a in command) + "\n"
    )


def install_before_start(via: str, unit_dir: Path, unit: str, command: Sequence[str], reload: bool) -> list[str]:
    if via == "cron":
        raise UsageError(
            "--before-start writes a systemd drop-in: use --via systemd-system or systemd-user (without "
            "systemd: run 'stash-backup snapshot --offline' in Stash's start script, docs/scheduling.md)"
        )
    path = drop_in_path(unit_dir, unit)
    _write(path, drop_in_text(command).encode(), 0o644, {})  # systemd reads drop-ins of system units as root
    done = [f"drop-in: {path} (ExecStartPre= stash-backup snapshot --offline)"]
    if reload and systemd_running():
        result = _systemctl(via, "daemon-reload")
        if result.returncode != 0:
            raise ConfigError(f"systemctl daemon-reload failed: {result.stderr.strip()}")
        done.append("systemd reloaded: the snapshot runs before each start of " + service_unit_name(unit))
    return done


def remove_before_start(via: str, unit_dir: Path, unit: str) -> list[str]:
    path = drop_in_path(unit_dir, unit)
    if not path.is_file():
        return []
    discard(path)
    if systemd_running():
        _systemctl(via, "daemon-reload")
    return [f"removed {path}"]
