"""The plugin: Stash runs it for a task from the Tasks page. It reads the task and
the server connection from stdin, finds its own ID and settings, runs the job and
answers on stdout. A failure is answered as the error, which Stash logs at error
level (the job still ends FINISHED: the log is where a user sees it)."""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Union

from ..jobs.backup import backup_on_server
from ..jobs.download import DownloadOptions, checked_download
from ..jobs.retention import apply_retention, retention_summary
from ..jobs.status import check_overdue, claim_auto_backup, overview, recording
from ..jobs.verify import verify_archive
from ..core.config_text import config_line_value
from ..core.memory import beside_stash
from ..core.archive import ARCHIVE_FOLDER_SETTING, DEFAULT_FOLDER_NAME, Archive
from ..server.connection import from_plugin_input, redact
from ..core.errors import ConfigError, StashBackupError, UsageError, VerificationError
from ..server.graphql_client import StashClient
from ..server.notify import parse_urls, send as send_notice
from .protocol import PluginLogReporter, encode_output, read_input
from ..core.keep_rules import COUNT_RULES, WITHIN_RULE
from ..core.retention import Duration, Policy, parse_duration
from ..core.sqlite_check import FULL, QUICK
from ..core.status import Notice, StatusFile

DEFAULT_INTERVAL = "24h"
# The page's badge shows "stale" past the interval; the overdue notice waits until a
# scheduled run has clearly been missed, so that a backup a little late is no alarm.
OVERDUE_NOTICE_FACTOR = 1.5
CONTROL_ARGS = ("mode", "auto", "autorun")  # task/operation arguments that are not settings
STATUS_FALLBACK_FOLDER = "stash-backup-status"  # in Stash's config folder
# Secrets an off-site remote brought (rclone's config, its environment): every line the
# plugin logs or answers passes through these as well.
_REDACTORS: list = []


@dataclass
class Settings:
    archive_folder: Path
    include_blobs: bool = True
    check_level: str = QUICK
    compress: bool = True
    policy: Policy = Policy()
    retention_dry_run: bool = False
    verify_read_data_parts: int = 0  # 0: sizes only; 1: every image's bytes; M: a rotating 1/M of them a day
    interval: Duration = parse_duration(DEFAULT_INTERVAL)
    auto_backup: bool = False
    notify_urls: tuple = ()
    backup_folder_keep_last: int = 0  # Stash's own backup folder: keep our N newest there
    backup_folder_include_others: bool = False
    drill_every: str = ""  # after a download: "N" backups or a duration since the last drill; "" never
    offsite_remote: str = ""  # an rclone remote and folder, e.g. s3:bucket/stash
    offsite_rclone_config: Optional[Path] = None
    offsite_after_download: bool = False
    offsite_retention: bool = False  # the Keep rules applied on the remote too
    ping_url: str = ""  # healthchecks.io style monitor: a secret, never logged


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
    policy = Policy.of(
        {rule.name: _as_count(rule.setting, values.get(rule.setting)) for rule in COUNT_RULES},
        (values.get(WITHIN_RULE.setting) or "").strip(),
    )
    return Settings(
        archive_folder=Path(folder).expanduser() if folder else config_dir / DEFAULT_FOLDER_NAME,
        include_blobs=_as_bool(values.get("includeBlobs"), True),
        check_level=FULL if _as_bool(values.get("fullIntegrityCheck"), False) else QUICK,
        compress=not _as_bool(values.get("storeUncompressed"), False),
        policy=policy,
        retention_dry_run=_as_bool(values.get("retentionDryRun"), False),
        verify_read_data_parts=max(_as_count("verifyReadDataParts", values.get("verifyReadDataParts")), 0),
        interval=_interval(values.get("backupInterval")),
        auto_backup=_as_bool(values.get("autoBackup"), False),
        notify_urls=tuple(parse_urls(str(values.get("notifyUrls") or ""))),
        backup_folder_keep_last=_as_count("backupFolderKeepLast", values.get("backupFolderKeepLast")),
        backup_folder_include_others=_as_bool(values.get("backupFolderIncludeOthers"), False),
        drill_every=_drill_every(values.get("drillEvery")),
        offsite_remote=str(values.get("offsiteRemote") or "").strip(),
        offsite_rclone_config=Path(str(values["offsiteRcloneConfig"])).expanduser()
        if values.get("offsiteRcloneConfig")
        else None,
        offsite_after_download=_as_bool(values.get("offsiteAfterDownload"), False),
        offsite_retention=_as_bool(values.get("offsiteRetention"), False),
        ping_url=str(values.get("pingUrl") or "").strip(),
    )


def _drill_every(value) -> str:
    from ..jobs.drill import check_drill_every

    text = str(value or "").strip()
    try:
        return check_drill_every(text)
    except UsageError:
        raise ConfigError(
            f"setting Restore drill every is {text!r}: use a number of backups (e.g. 5) or a duration (e.g. 7d)"
        ) from None


def _interval(value) -> Duration:
    text = str(value or "").strip() or DEFAULT_INTERVAL
    try:
        interval = parse_duration(text)
    except UsageError:
        raise ConfigError(f"setting Backup interval is {text!r}: use a number and a unit, e.g. 24h, 2d or 1w") from None
    if interval == Duration():
        raise ConfigError("setting Backup interval is 0: use at least 1h")
    return interval


def plugin_id(plugin_dir: Path) -> str:
    """Our ID is our manifest's file name, whatever the user installed it as."""
    manifests = sorted(plugin_dir.glob("*.yml"))
    ours = [m for m in manifests if "stash_backup_plugin" in m.read_text(errors="replace")]
    chosen = ours or manifests
    if not chosen:
        raise ConfigError(f"no plugin manifest (*.yml) found in {plugin_dir}: reinstall the plugin")
    return chosen[0].stem


def _certificate(config_dir: Optional[str]) -> Optional[Path]:
    """Where Stash finds its TLS certificate (Config.InitTLS): ssl_cert_path in
    config.yml, else stash.crt in its config folder, else in ~/.stash. Stash does not
    tell it over GraphQL, and GraphQL over https needs it first."""
    folder = Path(config_dir or ".")
    try:
        configured = config_line_value((folder / "config.yml").read_text(errors="replace"), "ssl_cert_path")
    except OSError:
        configured = None
    if configured:
        return Path(configured)
    for candidate in (folder, Path.home() / ".stash"):
        if (candidate / "stash.crt").is_file():
            return candidate / "stash.crt"
    return None


@dataclass
class Task:
    """What a mode's handler works with: one task or operation, as Stash asked for it."""

    mode: str
    args: dict
    client: StashClient
    own_id: str
    settings: Settings
    status_file: StatusFile
    reporter: PluginLogReporter
    notify: Optional[Callable[[Notice], None]]

    @property
    def archive(self) -> Archive:
        return Archive(self.settings.archive_folder)


def run_task(payload: dict, reporter: PluginLogReporter, secrets: Optional[list] = None) -> Union[str, dict]:
    """`secrets` receives what must never be logged (the API key read from Stash)."""
    secrets = [] if secrets is None else secrets
    server = payload.get("server_connection") or {}
    args = payload.get("args") or {}
    mode = str(args.get("mode", "")).strip()
    handler = MODES.get(mode) or OPERATIONS.get(mode)
    if handler is None:  # before anything is read or done: a misspelt mode runs nothing
        raise UsageError(f"unknown task mode {mode!r}: the plugin manifest must set mode to one of {', '.join(MODES)}")
    https = server.get("Scheme") == "https"
    connection = from_plugin_input(server, None, _certificate(server.get("Dir")) if https else None)
    with StashClient(connection) as client:
        values, api_key = client.plugin_settings_and_api_key(plugin_id(Path(server.get("PluginDir") or ".")))
    if api_key:  # it does not expire like the session cookie, which a long backup can outlive
        secrets.append(api_key)
        connection = replace(connection, api_key=api_key)
    values.update({k: v for k, v in args.items() if k not in CONTROL_ARGS})
    settings = settings_from(values, Path(server.get("Dir") or "."))
    with StashClient(connection) as client:
        reporter.hide(*settings.notify_urls)  # they carry tokens
        reporter.hide(settings.ping_url)  # its UUID is the key
        return handler(
            Task(
                mode,
                args,
                client,
                plugin_id(Path(server.get("PluginDir") or ".")),
                settings,
                _status_file(settings, server),
                reporter,
                _notifier(settings.notify_urls, reporter),
            )
        )


def _recorded(job: Callable[[Task], str]) -> Callable[[Task], str]:
    """A task whose outcome status.json records (and a failure notifies)."""

    def run(task: Task) -> str:
        with recording(task.status_file, task.mode, task.reporter, task.notify, ping=task.settings.ping_url) as run:
            run.done(job(task))
        return run.message

    return run


def _drill_due(settings: Settings) -> bool:
    from ..jobs.drill import drill_due

    return drill_due(Archive(settings.archive_folder).entries(), settings.drill_every)


def _drill(task: Task) -> str:
    """With the Stash that runs this plugin (our parent process): the binary the user runs."""
    from ..jobs.drill import drill, parent_stash_binary

    binary = parent_stash_binary()
    if not binary:
        raise ConfigError("the restore drill cannot tell which Stash binary runs this plugin (/proc is not readable)")
    with recording(task.status_file, "drill", task.reporter, task.notify, ping=task.settings.ping_url) as run:
        result = drill(task.archive, None, binary, task.reporter)
        if not result.ok:
            raise VerificationError(result.line())  # logged once, by Stash, at error level
        run.done(result.line())
    return run.message


def _status_file(settings: Settings, server: dict) -> StatusFile:
    """status.json in the archive; in Stash's config folder when the archive cannot be
    written, so that the page still shows why."""
    return StatusFile(settings.archive_folder, fallback=Path(server.get("Dir") or ".") / STATUS_FALLBACK_FOLDER)


def _notifier(urls: tuple, reporter: PluginLogReporter):
    if not urls:
        return None
    return lambda notice: send_notice(urls, notice, reporter)


def _backup(task: Task) -> str:
    settings = task.settings
    made = backup_on_server(
        task.client,
        settings.include_blobs,
        task.reporter,
        keep_last=max(settings.backup_folder_keep_last, 0),
        include_others=settings.backup_folder_include_others,
    )
    return f"Backup written to {made.path or 'the backup folder'}"


def _download(task: Task) -> str:
    settings, archive, reporter = task.settings, task.archive, task.reporter
    auto = _as_bool(task.args.get("auto"), False)
    # An automatic run queued twice (two pages, a slow queue) skips the second time.
    options = DownloadOptions(
        include_blobs=settings.include_blobs,
        check_level=settings.check_level,
        compress=settings.compress,
        if_older_than=settings.interval if auto else None,
    )
    outcome = checked_download(task.client, task.archive, options, task.status_file, task.reporter, task.notify)
    done = f"Archived {outcome.entry.file} in {archive.folder}" if outcome.entry else outcome.skipped_reason
    if settings.offsite_after_download and outcome.entry:
        try:
            return f"{done}; {_offsite_push(archive, settings, reporter)}"
        except StashBackupError as error:  # the local backup stands; the error says so
            raise type(error)(f"{done}, but the off-site copy failed: {error}") from None
    return done


def _check_live(task: Task) -> str:
    """The *Check live database* task; damage is answered as the error (Stash logs it)."""
    from ..jobs.check_live import check_live, live_database

    database = live_database(task.client.server_info().database_path, None, task.reporter)
    if database is None:
        raise ConfigError("Stash's database file is not readable by the plugin: its health cannot be checked")
    result = check_live(database, task.status_file, task.reporter, task.notify, task.settings.ping_url)
    if not result.ok:
        raise VerificationError(result.line())
    return result.line()


def _download_then_due_drill(task: Task) -> str:
    message = _recorded(_download)(task)
    if _drill_due(task.settings):
        task.reporter.info(f"a restore drill is due (Restore drill every {task.settings.drill_every})")
        _drill(task)
    return message


def _offsite(task: Task) -> str:
    return _offsite_push(task.archive, task.settings, task.reporter)


def _verify(task: Task) -> str:
    summary = verify_archive(
        task.archive,
        task.settings.check_level,
        task.reporter,
        _read_data_today(task.settings.verify_read_data_parts),
        stash=task.client.server_info(),
    )  # to adopt Stash's pre-migration backups
    if not summary.ok:
        raise VerificationError(summary.line())  # logged once, by Stash, at error level
    task.reporter.info(summary.line())
    return summary.line()


def _retention(task: Task) -> str:
    settings, archive, reporter = task.settings, task.archive, task.reporter
    if settings.policy.is_empty():
        reporter.info("No retention rule is set (Keep last/hourly/daily/weekly/monthly/yearly/within): nothing removed")
    result = apply_retention(archive, settings.policy, settings.retention_dry_run, reporter)
    return retention_summary(settings.policy, result, settings.retention_dry_run)


def _offsite_push(archive: Archive, settings: Settings, reporter: PluginLogReporter) -> str:
    from ..jobs import offsite
    from ..offsite.rclone import Rclone
    from ..offsite.remote import RemoteArchive

    if not settings.offsite_remote:
        raise ConfigError(
            "set the plugin's Off-site remote (an rclone remote and folder, e.g. s3:bucket/stash) "
            "to copy the archive off-site"
        )
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


def _read_data_today(parts: int):
    """Which images' bytes a Verify re-hashes: part (day number mod M) + 1 of M, so a
    daily Verify reads every image once in M days (restic's --read-data-subset)."""
    if parts <= 0:
        return None
    from datetime import date
    from ..core.stored import ReadData

    return ReadData(date.today().toordinal() % parts + 1, parts)


def _status(task: Task) -> dict:
    """The Backups page's data. Asked with `autorun` by every page view: when automatic
    backups are on and the backup is stale, the one caller that wins the claim in
    status.json queues the backup task (ten open tabs queue one)."""
    settings, archive, reporter = task.settings, task.archive, task.reporter
    queued = None
    if (
        _as_bool(task.args.get("autorun"), False)
        and settings.auto_backup
        and claim_auto_backup(archive, task.status_file, settings.interval)
    ):
        queued = task.client.queue_plugin_task(
            task.own_id,
            {"mode": "download", "auto": "true"},
            f"Stash Backup: automatic backup (none within {settings.interval})",
        )
        reporter.info(f"no verified backup within {settings.interval}: queued an automatic backup (job {queued})")
    if task.notify:
        check_overdue(archive, task.status_file, settings.interval, reporter, task.notify, factor=OVERDUE_NOTICE_FACTOR)
    view = overview(archive, task.status_file, settings.interval)
    view.update(
        plugin_id=task.own_id,
        modes=list(MODES),
        auto_backup=settings.auto_backup,
        auto_queued_job=queued,
        notifications=len(settings.notify_urls),
    )
    return view


# Each mode Stash may ask for, and what runs it: a mode not here runs nothing.
MODES: dict[str, Callable[[Task], str]] = {  # tasks, run in Stash's job queue
    "backup": _recorded(_backup),
    "download": _download_then_due_drill,
    "verify": _recorded(_verify),
    "retention": _recorded(_retention),
    "drill": _drill,
    "offsite": _recorded(_offsite),
    "check-live": _check_live,
}
OPERATIONS: dict[str, Callable[[Task], dict]] = {  # runPluginOperation: answers at once, for the Backups page
    "status": _status,
}


def main(stdin=None, stdout=None, stderr=None) -> int:
    """Run one task. A failure is answered as the error on stdout, once: Stash logs
    it at error level ("Plugin returned error: …"), so logging it here too would show
    it twice. Never a traceback: it could carry a secret and says nothing to a user."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    beside_stash()
    secrets: list[str] = []
    reporter = PluginLogReporter(stderr, redact=lambda text: _hide(text, secrets))
    try:
        payload = read_input(stdin)
    except json.JSONDecodeError as error:  # run by hand, not by Stash
        return _answer_error(
            stdout, f"the plugin expects Stash's task input as JSON on stdin ({error}); run it from Stash's Tasks page"
        )
    try:
        cookie = ((payload.get("server_connection") or {}).get("SessionCookie") or {}).get("Value")
        secrets.extend([cookie] if cookie else [])
        output = run_task(payload, reporter, secrets)
    except StashBackupError as error:
        return _answer_error(stdout, reporter.redact(str(error)))
    except Exception as error:  # a bug: still one line, redacted
        return _answer_error(stdout, reporter.redact(_unexpected(error)))
    stdout.write(encode_output(output=output))
    return 0


def _unexpected(error: Exception) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    detail = " ".join(str(error).split())
    return (
        f"stash-backup stopped on an unexpected error ({type(error).__name__}{where}: {detail}); "
        "please report this line"
    )


def _answer_error(stdout, message: str) -> int:
    stdout.write(encode_output(error=message))
    return 0
