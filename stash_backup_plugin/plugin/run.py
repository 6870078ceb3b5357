"""The plugin: Stash runs it for a task from the Tasks page. It reads the task and
the server connection from stdin, finds its own ID and settings, runs the job and
answers on stdout. A failure is answered as the error, which Stash logs at error
level (the job still ends FINISHED: the log is where a user sees it)."""
from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import jobs
from ..core.archive import DEFAULT_FOLDER_NAME, Archive
from ..server.connection import from_plugin_input, redact
from ..core.errors import ConfigError, StashBackupError, UsageError, VerificationError
from ..server.graphql_client import StashClient
from .protocol import PluginLogReporter, encode_output, read_input
from ..core.retention import Policy, parse_duration
from ..core.sqlite_check import FULL, QUICK
from ..offline.stash_config import ARCHIVE_FOLDER_SETTING, StashConfig, load_config

MODES = ("backup", "download", "verify", "retention", "offsite")
# Secrets an off-site remote brought (rclone's config, its environment): every line the
# plugin logs or answers passes through these as well.
_REDACTORS: list = []


@dataclass
class Settings:
    archive_folder: Path
    include_blobs: bool = True
    check_level: str = QUICK
    policy: Policy = Policy()
    retention_dry_run: bool = False
    backup_folder_keep_last: int = 0  # Stash's own backup folder: keep our N newest there
    backup_folder_include_others: bool = False
    offsite_remote: str = ""  # an rclone remote and folder, e.g. s3:bucket/stash
    offsite_rclone_config: Optional[Path] = None
    offsite_after_download: bool = False
    offsite_retention: bool = False  # the Keep rules applied on the remote too


def _as_bool(value, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _as_count(name: str, value) -> int:
    if value is None or value == "":
        return 0
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name} is {value!r}: use a whole number (or -1 for unlimited)") from None


def settings_from(values: dict, config_dir: Path) -> Settings:
    """Settings with defaults for what the user never set (Stash omits unset ones)."""
    folder = values.get(ARCHIVE_FOLDER_SETTING) or ""
    within = (values.get("keepWithin") or "").strip()
    policy = Policy(
        last=_as_count("keepLast", values.get("keepLast")),
        hourly=_as_count("keepHourly", values.get("keepHourly")),
        daily=_as_count("keepDaily", values.get("keepDaily")),
        weekly=_as_count("keepWeekly", values.get("keepWeekly")),
        monthly=_as_count("keepMonthly", values.get("keepMonthly")),
        yearly=_as_count("keepYearly", values.get("keepYearly")),
        within=parse_duration(within) if within else None,
    )
    return Settings(
        archive_folder=Path(folder).expanduser() if folder else config_dir / DEFAULT_FOLDER_NAME,
        include_blobs=_as_bool(values.get("includeBlobs"), True),
        check_level=FULL if _as_bool(values.get("fullIntegrityCheck"), False) else QUICK,
        policy=policy,
        retention_dry_run=_as_bool(values.get("retentionDryRun"), False),
        backup_folder_keep_last=_as_count("backupFolderKeepLast", values.get("backupFolderKeepLast")),
        backup_folder_include_others=_as_bool(values.get("backupFolderIncludeOthers"), False),
        offsite_remote=str(values.get("offsiteRemote") or "").strip(),
        offsite_rclone_config=Path(str(values["offsiteRcloneConfig"])).expanduser()
        if values.get("offsiteRcloneConfig") else None,
        offsite_after_download=_as_bool(values.get("offsiteAfterDownload"), False),
        offsite_retention=_as_bool(values.get("offsiteRetention"), False),
    )


def plugin_id(plugin_dir: Path) -> str:
    """Our ID is our manifest's file name, whatever the user installed it as."""
    manifests = sorted(plugin_dir.glob("*.yml"))
    ours = [m for m in manifests if "stash_backup_plugin" in m.read_text(errors="replace")]
    chosen = ours or manifests
    if not chosen:
        raise ConfigError(f"no plugin manifest (*.yml) found in {plugin_dir}: reinstall the plugin")
    return chosen[0].stem


def _stash_config(config_dir: Optional[str]) -> Optional[StashConfig]:
    if not config_dir:
        return None
    path = Path(config_dir) / "config.yml"
    try:
        return load_config(path) if path.is_file() else None
    except ConfigError:
        return None


def _api_key(config: Optional[StashConfig]) -> Optional[str]:
    """The API key, when Stash has one: it does not expire like the session cookie."""
    return config.get("api_key") if config else None


def _certificate(config: Optional[StashConfig], config_dir: Optional[str]) -> Optional[Path]:
    """Where Stash finds its TLS certificate: ssl_cert_path, else stash.crt in its
    config folder, else in ~/.stash (Config.InitTLS)."""
    if config and config.get("ssl_cert_path"):
        return Path(config.get("ssl_cert_path"))
    for folder in (Path(config_dir or "."), Path.home() / ".stash"):
        if (folder / "stash.crt").is_file():
            return folder / "stash.crt"
    return None


def run_task(payload: dict, reporter: PluginLogReporter) -> str:
    server = payload.get("server_connection") or {}
    args = payload.get("args") or {}
    mode = str(args.get("mode", "")).strip()
    if mode not in MODES:
        raise UsageError(f"unknown task mode {mode!r}: the plugin manifest must set mode to one of {', '.join(MODES)}")
    config = _stash_config(server.get("Dir"))
    connection = from_plugin_input(server, _api_key(config), _certificate(config, server.get("Dir")))
    with StashClient(connection) as client:
        values = client.plugin_settings(plugin_id(Path(server.get("PluginDir") or ".")))
        values.update({k: v for k, v in args.items() if k != "mode"})
        settings = settings_from(values, Path(server.get("Dir") or "."))
        return _run_mode(mode, client, settings, reporter)


def _run_mode(mode: str, client: StashClient, settings: Settings, reporter: PluginLogReporter) -> str:
    archive = Archive(settings.archive_folder)
    if mode == "backup":
        made = jobs.backup_on_server(client, settings.include_blobs, reporter,
                                     keep_last=max(settings.backup_folder_keep_last, 0),
                                     include_others=settings.backup_folder_include_others)
        return f"Backup written to {made.path or 'the backup folder'}"
    if mode == "download":
        options = jobs.DownloadOptions(include_blobs=settings.include_blobs, check_level=settings.check_level)
        outcome = jobs.download_to_archive(client, archive, options, reporter)
        done = f"Archived {outcome.entry.file} in {archive.folder}" if outcome.entry else outcome.skipped_reason
        if settings.offsite_after_download and outcome.entry:
            try:
                return f"{done}; {_offsite_push(archive, settings, reporter)}"
            except StashBackupError as error:  # the local backup stands; the error says so
                raise type(error)(f"{done}, but the off-site copy failed: {error}") from None
        return done
    if mode == "offsite":
        return _offsite_push(archive, settings, reporter)
    if mode == "verify":
        summary = jobs.verify_archive(archive, settings.check_level, reporter)
        if not summary.ok:
            raise VerificationError(summary.line())  # logged once, by Stash, at error level
        reporter.info(summary.line())
        return summary.line()
    if settings.policy.is_empty():
        reporter.info("No retention rule is set (Keep last/hourly/daily/weekly/monthly/yearly/within): nothing removed")
    result = jobs.apply_retention(archive, settings.policy, settings.retention_dry_run, reporter)
    return jobs.retention_summary(settings.policy, result, settings.retention_dry_run)


def _offsite_push(archive: Archive, settings: Settings, reporter: PluginLogReporter) -> str:
    from ..offsite import jobs as offsite
    from ..offsite.rclone import Rclone
    from ..offsite.remote import RemoteArchive
    if not settings.offsite_remote:
        raise ConfigError("set the plugin's Off-site remote (an rclone remote and folder, e.g. s3:bucket/stash) "
                          "to copy the archive off-site")
    rclone = Rclone(config=settings.offsite_rclone_config)
    _REDACTORS.append(rclone.redact)
    remote = RemoteArchive(rclone, settings.offsite_remote)
    policy = settings.policy if settings.offsite_retention else None
    result = offsite.push(archive, remote, reporter, policy)
    line = result.line(remote.display)
    if result.retention:
        line += "; " + result.retention.line(settings.policy, False)
    return line


def _hide(text: str, secrets: list[str]) -> str:
    text = redact(text, secrets)
    for more in _REDACTORS:
        text = more(text)
    return text


def main(stdin=None, stdout=None, stderr=None) -> int:
    """Run one task. A failure is answered as the error on stdout, once: Stash logs
    it at error level ("Plugin returned error: …"), so logging it here too would show
    it twice. Never a traceback: it could carry a secret and says nothing to a user."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    secrets: list[str] = []
    reporter = PluginLogReporter(stderr, redact=lambda text: _hide(text, secrets))
    try:
        payload = read_input(stdin)
    except json.JSONDecodeError as error:  # run by hand, not by Stash
        return _answer_error(stdout, f"the plugin expects Stash's task input as JSON on stdin ({error}); "
                                     "run it from Stash's Tasks page")
    try:
        secrets.extend(_secrets(payload))
        output = run_task(payload, reporter)
    except StashBackupError as error:
        return _answer_error(stdout, _hide(str(error), secrets))
    except Exception as error:  # a bug: still one line, redacted
        return _answer_error(stdout, _hide(_unexpected(error), secrets))
    stdout.write(encode_output(output=output))
    return 0


def _secrets(payload: dict) -> list[str]:
    server = payload.get("server_connection") or {}
    cookie = (server.get("SessionCookie") or {}).get("Value")
    return [s for s in (cookie, _api_key(_stash_config(server.get("Dir")))) if s]


def _unexpected(error: Exception) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    detail = " ".join(str(error).split())
    return (f"stash-backup stopped on an unexpected error ({type(error).__name__}{where}: {detail}); "
            "please report this line")


def _answer_error(stdout, message: str) -> int:
    stdout.write(encode_output(error=message))
    return 0
